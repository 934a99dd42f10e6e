"""A burst ten times the queue bound on the real grpc.aio server (loopback, port 0; the tiny
seeded estimator, no Triton): the excess is refused with RESOURCE_EXHAUSTED quoting the bound,
every accepted request is answered, the server's own counts agree with what the client got, and
it serves afterwards with nothing left behind. At ``max_queue=400`` the burst (4,000 calls) is
larger than grpc's default limit of calls it holds for the server (3,000), which would drop the
rest as CANCELLED without `overload.server_options`. The timed version, with capacity and a
soak, is `benchmarks/router_soak.py`."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc
import pytest
from router_fakes import TinyQualityModel, make_router

from t2i_router.router.metrics import RouterMetrics
from t2i_router.router.overload import (
    GRPC_PENDING_DEFAULTS,
    PENDING_CALLS_PER_QUEUE_SLOT,
    server_options,
)
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.types import Limits
from t2i_router_client import router_pb2, router_pb2_grpc

BATCH = 4


class GatedModel(TinyQualityModel):
    """Holds the estimator batches until `release` is set; records each batch's size."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[int] = []
        self.release = threading.Event()

    def predict(self, prompts):
        self.held.append(len(prompts))
        self.release.wait(timeout=120)
        return super().predict(prompts)


def route_count(metrics: RouterMetrics, status: str) -> float:
    """Route calls the server counted with ``status``, over every chosen choice."""
    return sum(
        s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "t2i_router_requests_total"
        and s.labels["rpc"] == "Route"
        and s.labels["status"] == status
    )


async def until(condition, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_grpcs_pending_call_limits_grow_with_the_queue_bound() -> None:
    soft_default, hard_default = GRPC_PENDING_DEFAULTS
    for max_queue in (1, 8, 100, 400, 1024, 4096):
        options = dict(server_options(max_queue, 4 << 20))
        pending = PENDING_CALLS_PER_QUEUE_SLOT * max_queue
        assert options["grpc.server.max_pending_requests"] == max(pending, soft_default)
        assert options["grpc.server.max_pending_requests_hard_limit"] == max(pending, hard_default)
        # a burst of 10 x the bound is held whole, and the limits are never below grpc's own
        assert options["grpc.server.max_pending_requests"] >= 10 * max_queue
        assert options["grpc.server.max_pending_requests"] >= soft_default
        assert options["grpc.server.max_pending_requests_hard_limit"] >= hard_default
        assert options["grpc.max_receive_message_length"] == 4 << 20
        assert options["grpc.max_send_message_length"] == 4 << 20
    assert dict(server_options(1024, 1 << 20))["grpc.server.max_pending_requests"] == 16384


@pytest.mark.parametrize("max_queue", [8, 400], ids=["queue8", "queue400-beyond-grpc-default"])
async def test_a_burst_ten_times_the_queue_bound_refuses_the_excess_and_loses_nothing(
    max_queue: int,
) -> None:
    burst = 10 * max_queue
    model = GatedModel()
    # per-client concurrency above the burst: the queue bound alone refuses
    limits = Limits(max_concurrent_per_client=2 * burst)
    metrics = RouterMetrics()
    router = make_router(model=model, max_queue=max_queue, max_batch_size=BATCH)
    router.limits, router.metrics = limits, metrics
    config = RouterConfig(port=0, warm_start_prompts=0, grace_s=1, limits=limits)
    service = RouterService(config, router, metrics)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = router_pb2_grpc.RouterStub(channel)
    prompts = [f"{n} red circles" for n in ("one", "two", "three", "four")]
    gauge = metrics.registry.get_sample_value
    try:
        before = router.budget_snapshot()
        calls = [
            asyncio.ensure_future(
                stub.Route(router_pb2.RouteRequest(prompts=[prompts[i % 4]]), timeout=30)
            )
            for i in range(burst)
        ]

        def refused() -> list[grpc.aio.AioRpcError]:
            return [c.exception() for c in calls if c.done() and c.exception() is not None]

        # every call has arrived: held in the estimator, queued, or already refused
        await until(
            lambda: (
                model.held and len(refused()) + router.batcher.queue_depth + model.held[0] == burst
            ),
            timeout_s=60.0,
        )
        held = model.held[0]
        assert 1 <= held <= BATCH and router.batcher.queue_depth == max_queue
        assert gauge("t2i_router_calls_in_flight") == held + max_queue
        assert gauge("t2i_router_queue_depth") == max_queue
        model.release.set()
        replies = await asyncio.gather(*calls, return_exceptions=True)

        ok = [r for r in replies if isinstance(r, router_pb2.RouteResponse)]
        errors = [r for r in replies if not isinstance(r, router_pb2.RouteResponse)]
        codes = Counter(e.code().name if isinstance(e, grpc.aio.AioRpcError) else e for e in errors)
        assert set(codes) <= {"RESOURCE_EXHAUSTED"}, codes  # none CANCELLED by grpc
        assert len(ok) == held + max_queue and len(errors) == burst - len(ok)
        for e in errors:
            assert isinstance(e, grpc.aio.AioRpcError), e
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"holds {max_queue} items, limit is max_queue={max_queue}" in e.details()
        for r in ok:  # each accepted request got its own decision
            assert len(r.decisions) == 1 and r.decisions[0].choice and r.decisions[0].counted
        # the server's own records: accepted = decided = answered OK
        after = router.budget_snapshot()
        decided = (after.decisions + after.uncounted_decisions) - (
            before.decisions + before.uncounted_decisions
        )
        assert decided == len(ok) == route_count(metrics, "OK")
        assert route_count(metrics, "RESOURCE_EXHAUSTED") == len(errors)

        # and it serves afterwards, with nothing left in flight or queued
        await until(lambda: service.limiter.in_flight() == 0)
        assert router.batcher.queue_depth == 0 and gauge("t2i_router_calls_in_flight") == 0
        again = await stub.Route(router_pb2.RouteRequest(prompts=prompts), timeout=10)
        assert len(again.decisions) == len(prompts)
        assert gauge("t2i_router_asyncio_tasks") >= 1 and gauge("process_open_fds") > 0
    finally:
        model.release.set()
        await channel.close()
        await service.stop()


async def test_a_full_queue_refuses_route_and_generate_before_parsing_them() -> None:
    """`QueueGate`: with the queue full, Route and Generate are refused before their bytes are
    parsed (garbage gets RESOURCE_EXHAUSTED, not INVALID_ARGUMENT) and counted as the servicer
    counts them; tokens are still checked first, and other rpcs still answer."""
    model = GatedModel()
    metrics = RouterMetrics()
    router = make_router(model=model, max_queue=2, max_batch_size=1)
    router.metrics = metrics
    config = RouterConfig(port=0, warm_start_prompts=0, grace_s=1, token="gen-token")
    service = RouterService(config, router, metrics)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = router_pb2_grpc.RouterStub(channel)
    token = (("authorization", "Bearer gen-token"),)
    bound = "micro-batch queue holds 2 items, limit is max_queue=2"

    async def code_of(call) -> tuple[grpc.StatusCode, str]:
        try:
            await call
        except grpc.aio.AioRpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    try:
        request = router_pb2.RouteRequest(prompts=["one red circle"])
        held = [asyncio.ensure_future(stub.Route(request, metadata=token))]
        await until(lambda: bool(model.held))  # one in the estimator, then two queued: full
        held += [asyncio.ensure_future(stub.Route(request, metadata=token)) for _ in range(2)]
        await until(lambda: router.batcher.queue_depth == 2)
        raw = channel.unary_unary(
            "/t2i_router.v1.Router/Route", request_serializer=None, response_deserializer=None
        )
        assert await code_of(raw(b"\xff\xfe not a message", metadata=token, timeout=10)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            bound,
        )
        generate = stub.Generate(
            router_pb2.GenerateRequest(prompt="two blue squares"), metadata=token, timeout=10
        )
        assert await code_of(generate) == (grpc.StatusCode.RESOURCE_EXHAUSTED, bound)
        code, _ = await code_of(raw(b"\xff", timeout=10))  # no token: refused for that first
        assert code == grpc.StatusCode.UNAUTHENTICATED
        budget = await stub.GetBudget(router_pb2.GetBudgetRequest(), metadata=token, timeout=10)
        assert budget.target_rate > 0
        assert route_count(metrics, "RESOURCE_EXHAUSTED") == 1
        assert (
            metrics.registry.get_sample_value(
                "t2i_router_requests_total",
                {"rpc": "Generate", "choice": "", "status": "RESOURCE_EXHAUSTED"},
            )
            == 1
        )
        model.release.set()
        replies = await asyncio.gather(*held)
        assert [len(r.decisions) for r in replies] == [1, 1, 1]
        # with room again, garbage reaches the guard and is refused for what it is
        code, _ = await code_of(raw(b"\xff\xfe not a message", metadata=token, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        model.release.set()
        await channel.close()
        await service.stop()
