"""The servicer and server over a real grpc.aio server on port 0; only Triton is faked.

Every rpc through the generated stubs, status mapping in one place, INVALID_ARGUMENT quoting the
value, health flipping with readiness, reflection, metrics, graceful stop, config from env.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from router_fakes import FakeEngines, make_router

from t2i_router import errors
from t2i_router.router.metrics import RouterMetrics
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.servicer import status_of
from t2i_router.router.types import Limits
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

PROMPTS = ["a red circle", "two blue squares above a green triangle", "a huge white square"]


@pytest.fixture
async def served():
    engines = FakeEngines()
    metrics = RouterMetrics()
    router = make_router(engines=engines)
    router.metrics = metrics
    config = RouterConfig(
        port=0, metrics_port=0, health_interval_s=0.05, warm_start_prompts=32, grace_s=5
    )
    service = RouterService(config, router, metrics)
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield service, engines, channel
    await channel.close()
    await service.stop()


async def wait_health(channel, want: int, timeout_s: float = 5.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = (await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))).status
        if got == want or loop.time() > deadline:
            assert got == want
            return
        await asyncio.sleep(0.02)


async def test_every_rpc_through_the_generated_stubs(served) -> None:
    service, _, channel = served
    stub = router_pb2_grpc.RouterStub(channel)
    await wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    assert service.router.budget_snapshot().warm_started

    reply = await stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[0], seed=5), timeout=10)
    assert Image.open(io.BytesIO(reply.png)).size == (32, 32)
    assert reply.decision.engine in ("edge_small", "cloud_large") and reply.decision.counted
    assert len(reply.decision.evaluations) == 4 and reply.decision.timings.total_ms > 0

    requests = [router_pb2.GenerateRequest(prompt=p, seed=i) for i, p in enumerate(PROMPTS)]
    requests.insert(1, router_pb2.GenerateRequest(prompt="", seed=9))
    results = [
        r async for r in stub.GenerateBatch(router_pb2.GenerateBatchRequest(requests=requests))
    ]
    by_index = {r.index: r for r in results}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[1].error.code == "INVALID_ARGUMENT" and "''" in by_index[1].error.message
    assert all(by_index[i].result.png and by_index[i].result.decision.index == i for i in (0, 2, 3))

    before = (await stub.GetBudget(router_pb2.GetBudgetRequest())).decisions
    dry = await stub.Route(router_pb2.RouteRequest(prompts=PROMPTS, dry_run=True))
    assert [d.counted for d in dry.decisions] == [False] * 3
    assert (await stub.GetBudget(router_pb2.GetBudgetRequest())).decisions == before
    routed = await stub.Route(router_pb2.RouteRequest(prompts=PROMPTS))
    assert [d.index for d in routed.decisions] == [0, 1, 2]
    budget = await stub.GetBudget(router_pb2.GetBudgetRequest())
    assert budget.decisions == before + 3 and budget.mode == router_pb2.BUDGET_MODE_RATE

    changed = await stub.SetBudget(router_pb2.SetBudgetRequest(target_rate=0.6, multiplier=0.02))
    assert changed.budget.target_rate == pytest.approx(0.6)
    assert changed.budget.multiplier == pytest.approx(0.02) and changed.budget.decisions == 0
    again = await stub.GetBudget(router_pb2.GetBudgetRequest())
    assert again.target_rate == pytest.approx(0.6) and again.since.seconds > 0

    scraped = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics").read()
    text = scraped.decode()
    assert (
        't2i_router_requests_total{choice="",rpc="GenerateBatch",status="INVALID_ARGUMENT"}' in text
    )
    assert "t2i_router_target_rate 0.6" in text and "t2i_router_batch_size_count" in text
    assert "t2i_router_lambda_correction " in text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.Generate(router_pb2.GenerateRequest(prompt="")), "prompt '' is empty"),
        (lambda s: s.Generate(router_pb2.GenerateRequest(prompt="a red circle", target=7)),
         "target is 7"),
        (lambda s: s.Generate(router_pb2.GenerateRequest(prompt="a red circle", steps=0)),
         "steps is 0"),
        (lambda s: s.Generate(router_pb2.GenerateRequest(prompt="a red circle", guidance=99)),
         "guidance is 99.0"),
        (lambda s: s.Route(router_pb2.RouteRequest(prompts=["x"] * 300)), "300 prompts"),
        (lambda s: s.Route(router_pb2.RouteRequest(prompts=["a red circle", " "])),
         "prompt ' ' is empty"),
        (lambda s: s.SetBudget(router_pb2.SetBudgetRequest(target_rate=1.5)),
         "target_rate is 1.5"),
        (lambda s: s.SetBudget(router_pb2.SetBudgetRequest(eta=float("inf"))), "eta is inf"),
    ],
)  # fmt: skip
async def test_invalid_arguments_name_the_value(served, call, message) -> None:
    _, engines, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(router_pb2_grpc.RouterStub(channel))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert engines.calls == []


async def test_an_engine_error_fails_that_request_alone(served) -> None:
    _, engines, channel = served
    stub = router_pb2_grpc.RouterStub(channel)
    engines.fail_prompts[PROMPTS[1]] = errors.ModelError("edge_small: INTERNAL: boom")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[1], target=2))
    assert raised.value.code() == grpc.StatusCode.INTERNAL and "boom" in raised.value.details()
    ok = await stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[0], target=2))
    assert ok.decision.forced and not ok.decision.counted


async def test_health_follows_readiness_and_reflection_lists_the_service(served) -> None:
    _, engines, channel = served
    await wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
    engines.ready["edge_small"] = False
    await wait_health(channel, health_pb2.HealthCheckResponse.NOT_SERVING)
    engines.ready["edge_small"] = True
    await wait_health(channel, health_pb2.HealthCheckResponse.SERVING)

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_stop_drains_a_call_in_flight() -> None:
    engines = FakeEngines()
    engines.delay_s = 0.4
    router = make_router(engines=engines)
    service = RouterService(RouterConfig(port=0, warm_start_prompts=0, grace_s=5), router)
    port = await service.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        call = asyncio.ensure_future(
            stub.Generate(router_pb2.GenerateRequest(prompt=PROMPTS[0], target=2))
        )
        while not engines.calls:
            await asyncio.sleep(0.01)
        await service.stop()
        reply = await call
    assert reply.png


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.ModelError("x"), grpc.StatusCode.INTERNAL),
        (ValueError("a bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_of_maps_each_error_once(error, code) -> None:
    assert status_of(error)[0] == code


def test_config_reads_the_environment_then_overrides() -> None:
    env = {
        "T2I_ROUTER_PORT": "0",
        "T2I_ROUTER_STATE_DIR": "/tmp/state",
        "T2I_ROUTER_TARGET_RATE": "0.25",
        "T2I_ROUTER_MAX_PROMPTS": "8",
        "T2I_ROUTER_TRITON_URL": "127.0.0.1:8001",
    }
    config = RouterConfig.from_env(env, target_rate=0.4, host=None)
    assert config.port == 0 and config.state_dir == Path("/tmp/state")
    assert config.target_rate == 0.4 and config.host == "127.0.0.1"
    assert config.limits == Limits(max_prompts=8) and config.triton_url == "127.0.0.1:8001"
    with pytest.raises(errors.InvalidRequest, match="T2I_ROUTER_MAX_DELAY_S is 'soon'"):
        RouterConfig.from_env({"T2I_ROUTER_MAX_DELAY_S": "soon"})
