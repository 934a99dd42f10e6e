"""K = 2 real routers (grpc.aio servers on free ports) behind gRPC's client-side round_robin.

With one Redis they hold the target on the sum of their traffic and answer GetBudget alike;
with local stores each counts its own share. A router restarted on the same Redis restores the
budget, and a client with gRPC health checking stops sending to a replica that is NOT_SERVING.
Only the engines are faked (Route makes decisions only).
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from router_fakes import FakeEngines, TinyQualityModel, make_router

from t2i_router.router.budget_redis import RedisBudgetStore
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.world import sample_prompts
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

PROMPTS = [text for text, _ in sample_prompts(400, seed=7)]
TARGET = 0.3


def balanced_channel(ports: list[int], health_checked: bool = False) -> grpc.aio.Channel:
    """One channel over every replica, round_robin (and gRPC health checking) by service config."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_checked:
        config["healthCheckConfig"] = {"serviceName": SERVICE_NAME}
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    return grpc.aio.insecure_channel(target, options=[("grpc.service_config", json.dumps(config))])


async def start_replicas(k: int, store=None, **config) -> tuple[list[RouterService], list]:
    services, models = [], []
    for _ in range(k):
        model = TinyQualityModel()  # the same seed: the replicas run one estimator
        router = make_router(model, FakeEngines(), target_rate=TARGET, store=store and store())
        service = RouterService(
            RouterConfig(
                port=0, warm_start_prompts=32, grace_s=2, health_interval_s=0.05, **config
            ),
            router,
        )
        await service.start()
        assert await service.wait_serving(10.0)
        services.append(service)
        models.append(model)
    return services, models


async def route_all(channel: grpc.aio.Channel, prompts: list[str], concurrency: int = 8) -> list:
    stub = router_pb2_grpc.RouterStub(channel)
    slots = asyncio.Semaphore(concurrency)

    async def one(prompt: str):
        async with slots:
            reply = await stub.Route(router_pb2.RouteRequest(prompts=[prompt]), timeout=10)
            return reply.decisions[0]

    return await asyncio.gather(*(one(p) for p in prompts))


async def budget_of(service: RouterService) -> router_pb2.GetBudgetResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        return await router_pb2_grpc.RouterStub(channel).GetBudget(router_pb2.GetBudgetRequest())


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "local"])
async def test_two_replicas_behind_round_robin_hold_the_target(redis_server, shared) -> None:
    store = (lambda: RedisBudgetStore(redis_server.url, "fleet")) if shared else None
    services, models = await start_replicas(2, store)
    try:
        async with balanced_channel([s.port for s in services]) as channel:
            decisions = await route_all(channel, PROMPTS)
        served = [sum(len(c) for c in m.calls) for m in models]
        # 32 prompts warm-start each local replica; with Redis the second finds the state there
        warm = 32 if shared else 64
        assert all(n > 32 + 100 for n in served) and sum(served) == warm + len(PROMPTS), served
        budgets = [await budget_of(s) for s in services]
        cloud = sum(d.engine == "cloud_large" for d in decisions)
        if shared:  # one state: every decision counted once, seen alike by both
            assert [b.decisions for b in budgets] == [len(PROMPTS)] * 2
            assert budgets[0].cloud_decisions == budgets[1].cloud_decisions == cloud
            assert budgets[0].multiplier == budgets[1].multiplier
            snap = services[0].router.budget.snapshot()
            assert snap.clipped_updates == 0 and snap.updates == len(PROMPTS)
            # no lost step: the rate identity holds for the fleet, and with it the bound
            assert snap.multiplier == pytest.approx(
                snap.multiplier_at_since + snap.eta * snap.excess_sum
            )
            assert abs(snap.running_rate - TARGET) <= snap.error_bound
            changed = await services_set_budget(services[0], 0.5)
            assert changed.target_rate == 0.5 and (await budget_of(services[1])).target_rate == 0.5
        else:  # each replica counts its own share only: the prompts its estimator saw
            assert [b.decisions for b in budgets] == [n - 32 for n in served]
        assert abs(cloud / len(PROMPTS) - TARGET) < 0.1
    finally:
        for s in services:
            await s.stop()


async def services_set_budget(service: RouterService, rate: float):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        reply = await router_pb2_grpc.RouterStub(channel).SetBudget(
            router_pb2.SetBudgetRequest(target_rate=rate)
        )
    return reply.budget


async def test_a_restarted_router_restores_the_budget_from_redis(redis_server) -> None:
    store = lambda: RedisBudgetStore(redis_server.url, "restart")  # noqa: E731
    (first,), _ = await start_replicas(1, store)
    async with balanced_channel([first.port]) as channel:
        await route_all(channel, PROMPTS[:50])
    before = await budget_of(first)
    await first.stop()
    (second,), _ = await start_replicas(1, store)
    try:
        assert second.router.budget.restored
        after = await budget_of(second)
        assert after.decisions == before.decisions == 50
        assert after.multiplier == before.multiplier and after.since == before.since
    finally:
        await second.stop()


async def test_round_robin_with_health_checking_skips_a_replica_not_serving() -> None:
    services, models = await start_replicas(2)
    try:
        services[1].router.engines.ready["edge_small"] = False  # its health turns NOT_SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{services[1].port}") as direct:
            health = health_pb2_grpc.HealthStub(direct)
            for _ in range(100):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.02)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        before = [sum(len(c) for c in m.calls) for m in models]
        async with balanced_channel([s.port for s in services], health_checked=True) as channel:
            await route_all(channel, PROMPTS[:60])
        after = [sum(len(c) for c in m.calls) for m in models]
        assert after[0] - before[0] == 60 and after[1] == before[1]
    finally:
        for s in services:
            await s.stop()
