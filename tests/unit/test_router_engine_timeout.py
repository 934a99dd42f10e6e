"""The router's own limit on an engine call (`engine_timeout_s`): its setting, the arithmetic
with the caller's deadline (fake engine client), and a real grpc.aio router whose Triton takes
the inference call and never answers (`hung_triton.HungTriton`): a Generate sent without a
deadline ends UNAVAILABLE at the limit, uncounted, its slot freed and the call cancelled at
Triton."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import grpc
import pytest
from hung_triton import HungTriton
from router_fakes import FakeEngines, make_router

from t2i_router.cli import build_parser
from t2i_router.errors import ConfigError, DeadlineExceeded, Unavailable
from t2i_router.router.config import RouterConfig
from t2i_router.router.core import DEFAULT_ENGINE_TIMEOUT_S, engine_call_s
from t2i_router.router.server import RouterService
from t2i_router.router.types import GenerateItem
from t2i_router.triton import TritonClient
from t2i_router.world import sample_prompts
from t2i_router_client import router_pb2, router_pb2_grpc

PROMPT = "a red circle"
PROMPTS = [text for text, _ in sample_prompts(24, seed=11)]
# Slack for a busy 2-core host between a limit passing and the caller hearing of it.
SLACK_S = 2.0


# ----- the setting


def test_engine_timeout_defaults_to_60_s_and_reads_env_and_flag() -> None:
    assert RouterConfig().engine_timeout_s == DEFAULT_ENGINE_TIMEOUT_S == 60.0
    env = {"T2I_ROUTER_ENGINE_TIMEOUT_S": "12.5"}
    assert RouterConfig.from_env(env).engine_timeout_s == 12.5
    assert RouterConfig.from_env(env, engine_timeout_s=3.0).engine_timeout_s == 3.0  # flag wins
    args = build_parser().parse_args(["serve", "--engine-timeout-s", "7"])
    assert args.engine_timeout_s == 7.0
    with pytest.raises(SystemExit):  # argparse refuses it with one line
        build_parser().parse_args(["serve", "--engine-timeout-s", "0"])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_engine_timeout_refuses_what_is_not_a_finite_positive_time_quoting_it(value) -> None:
    with pytest.raises(ConfigError, match=rf"engine_timeout_s is {value}.*ENGINE_TIMEOUT_S"):
        RouterConfig.from_env({"T2I_ROUTER_ENGINE_TIMEOUT_S": value})
    with pytest.raises(ConfigError, match="engine_timeout_s is"):
        make_router(engine_timeout_s=float(value))


# ----- the arithmetic


@pytest.mark.parametrize(
    ("remaining_s", "limit_s", "expected"),
    [
        (None, 60.0, (60.0, True)),  # no deadline: the router's limit
        (300.0, 60.0, (60.0, True)),  # a later deadline: the router's limit
        (5.0, 60.0, (5.0, False)),  # an earlier deadline: the caller's
        (60.0, 60.0, (60.0, False)),  # a tie is the caller's deadline
    ],
)
def test_an_engine_call_gets_the_shorter_of_the_deadline_and_the_limit(
    remaining_s, limit_s, expected
) -> None:
    assert engine_call_s(remaining_s, limit_s) == expected


async def test_without_a_deadline_the_limit_ends_the_call_unavailable_and_uncounted() -> None:
    engines = FakeEngines()
    engines.delay_s = 30.0
    router = make_router(engines=engines, engine_timeout_s=0.2)
    try:
        started_s = time.monotonic()
        with pytest.raises(
            Unavailable, match=r"edge_small did not answer within engine_timeout_s=0\.2 s"
        ):
            await router.generate(GenerateItem(PROMPT, target="edge"))
        assert 0.2 <= time.monotonic() - started_s < 0.2 + SLACK_S
        assert engines.calls[-1]["timeout_s"] == 0.2  # the client is told the limit too
        assert engines.cancelled == 1  # the engine call was cancelled, not left running
        snapshot = router.budget_snapshot()
        assert snapshot.decisions == 0 and snapshot.uncounted_decisions == 0
        assert router.batcher.queue_depth == 0
    finally:
        await router.close()


async def test_a_later_deadline_is_cut_to_the_limit_an_earlier_one_is_the_callers() -> None:
    engines = FakeEngines()
    engines.delay_s = 30.0
    router = make_router(engines=engines, engine_timeout_s=0.3)
    try:
        with pytest.raises(Unavailable, match="the caller's deadline is later"):
            await router.generate(GenerateItem(PROMPT, target="edge"), timeout_s=20.0)
        assert engines.calls[-1]["timeout_s"] == 0.3
        with pytest.raises(DeadlineExceeded, match="deadline passed while edge_small"):
            await router.generate(GenerateItem(PROMPT, target="edge"), timeout_s=0.1)
        assert 0 < engines.calls[-1]["timeout_s"] <= 0.1
        engines.delay_s = 0.0  # an engine that answers in time is served as before
        result = await router.generate(GenerateItem(PROMPT, target="edge"))
        assert result.png and engines.calls[-1]["timeout_s"] == 0.3
    finally:
        await router.close()


async def test_an_engine_deadline_error_under_the_routers_limit_is_unavailable() -> None:
    """The engine client may report the limit itself (its gRPC deadline firing first): the
    caller, whose own deadline did not pass, still sees UNAVAILABLE, never DEADLINE_EXCEEDED."""
    engines = FakeEngines()
    engines.errors["edge_small"] = DeadlineExceeded("edge_small at x: DEADLINE_EXCEEDED: ...")
    router = make_router(engines=engines, engine_timeout_s=5.0)
    try:
        with pytest.raises(Unavailable, match="engine_timeout_s=5 s"):
            await router.generate(GenerateItem(PROMPT, target="edge"))
    finally:
        await router.close()


async def test_an_auto_call_whose_cloud_does_not_answer_falls_back_to_the_edge() -> None:
    engines = FakeEngines()
    engines.delays_s["cloud_large"] = 30.0
    router = make_router(engines=engines, engine_timeout_s=0.2)
    router.budget.set_target(multiplier=0.0)  # lambda 0: prompts the cloud serves better go there
    try:
        routed = await router.route(PROMPTS, dry_run=True)
        prompt = next(p for p, d in zip(PROMPTS, routed) if d.choice.engine == "cloud_large")
        result = await router.generate(GenerateItem(prompt))
    finally:
        await router.close()
    assert [c["model"] for c in engines.calls] == ["cloud_large", "edge_small"]
    assert engines.cancelled == 1
    assert result.decision.fallback and not result.decision.counted
    assert result.decision.choice.engine == "edge_small"
    snapshot = router.budget_snapshot()
    assert snapshot.decisions == 0 and snapshot.uncounted_decisions == 1


# ----- a real router in front of a Triton that never answers


async def test_generate_without_a_deadline_against_a_hung_triton_ends_at_the_limit() -> None:
    limit_s = 0.5
    with HungTriton(models_ready=True) as hung:
        async with TritonClient(hung.url) as client:
            router = make_router(engines=client, engine_timeout_s=limit_s)
            service = RouterService(RouterConfig(port=0, warm_start_prompts=0, grace_s=1), router)
            await service.start()
            try:
                assert await service.wait_serving(10)  # Triton answers readiness, not inference
                async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                    stub = router_pb2_grpc.RouterStub(channel)
                    request = router_pb2.GenerateRequest(
                        prompt=PROMPT, target=router_pb2.TARGET_EDGE
                    )
                    started_s = time.monotonic()
                    with pytest.raises(grpc.aio.AioRpcError) as raised:
                        await stub.Generate(request)  # no deadline
                    waited_s = time.monotonic() - started_s
                    # the router still serves: Route needs no engine (dry run: not counted)
                    routed = await stub.Route(
                        router_pb2.RouteRequest(prompts=[PROMPT], dry_run=True), timeout=10
                    )
                    assert len(routed.decisions) == 1
                error = raised.value
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert f"edge_small did not answer within engine_timeout_s={limit_s:g} s" in (
                    error.details()
                )
                assert limit_s <= waited_s < limit_s + SLACK_S
                assert hung.calls["ModelInfer"] == 1  # Triton had it, and it was cancelled there
                await until(lambda: hung.cancelled == 1)
                assert service.limiter.in_flight() == 0  # the client's slot is free
                assert router.budget_snapshot().decisions == 0  # a failed call is not counted
            finally:
                await service.stop()


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline_s = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline_s, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_the_default_is_far_above_a_cloud_image_under_load() -> None:
    """60 s against the slowest p99 of benchmarks/results/triton_load.json (cloud_large, 32
    concurrent calls, 18-26 s on this host): the limit cuts hung calls, not slow ones."""
    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "triton_load.json"
    runs = json.loads(results.read_text())["triton"]
    worst_p99_s = max(
        r["p99_latency_s"] for model in runs.values() for rs in model.values() for r in rs
    )
    assert math.isfinite(worst_p99_s) and 2 * worst_p99_s < DEFAULT_ENGINE_TIMEOUT_S
