"""The router core: decisions from the estimator through the policy, counting, fallback,
per-request errors, validation and deadlines (tiny seeded estimator, fake engine client)."""

from __future__ import annotations

import asyncio
import io
import math

import numpy as np
import pytest
from PIL import Image
from router_fakes import FakeEngines, TinyQualityModel, make_policy, make_router

from t2i_router.errors import DeadlineExceeded, InvalidRequest, ModelError, Unavailable
from t2i_router.router.types import GenerateItem
from t2i_router.world import sample_prompts

PROMPTS = [text for text, _ in sample_prompts(24, seed=11)]


async def test_route_decides_by_the_policy_on_the_estimators_predictions() -> None:
    model = TinyQualityModel()
    router = make_router(model, eta=1e-9)  # lambda practically still
    router.budget.set_target(multiplier=0.0)
    expected_q = TinyQualityModel().predict(PROMPTS)
    scores = make_policy().scores(expected_q)
    lam = float(np.median(scores))
    router.budget.set_target(multiplier=lam)
    try:
        decisions = await router.route(PROMPTS, dry_run=True)
    finally:
        await router.close()
    expected = make_policy().decide(expected_q, lam)
    assert [d.choice.name for d in decisions] == [
        expected.choice(i).name for i in range(len(PROMPTS))
    ]
    np.testing.assert_allclose([d.score for d in decisions], scores, rtol=1e-6)
    assert [d.index for d in decisions] == list(range(len(PROMPTS)))
    assert len({d.choice.name for d in decisions}) > 1  # the tiny model does discriminate
    first = decisions[0]
    names = [c.name for c in make_policy().config.choices]
    assert [e.choice.name for e in first.evaluations] == names
    assert set(first.evaluations[0].quality) == set(router.estimator.metric_names)
    assert first.timings.estimate_ms > 0 and first.multiplier == pytest.approx(lam)


async def test_route_counts_unless_dry_run_and_batches_the_estimator() -> None:
    model = TinyQualityModel()
    router = make_router(model, max_batch_size=8, max_delay_s=0.05)
    try:
        await router.route(PROMPTS, dry_run=True)
        assert router.budget_snapshot().decisions == 0
        lam_before = router.budget.multiplier
        decisions = await router.route(PROMPTS)
    finally:
        await router.close()
    snap = router.budget_snapshot()
    assert snap.decisions == len(PROMPTS) and all(d.counted for d in decisions)
    cloud = sum(d.choice.engine == "cloud_large" for d in decisions)
    assert snap.cloud_decisions == cloud
    assert snap.multiplier != lam_before
    assert max(len(c) for c in model.calls) == 8  # 24 prompts in batches of at most 8


async def test_forced_targets_skip_the_estimator_and_are_not_counted() -> None:
    model = TinyQualityModel()
    router = make_router(model)
    try:
        edge = await router.route(PROMPTS[:3], target="edge")
        cloud = await router.generate(GenerateItem(PROMPTS[0], seed=3, target="cloud"))
    finally:
        await router.close()
    assert model.calls == []
    assert {d.choice.name for d in edge} == {"edge_small@8"}
    assert all(d.forced and not d.counted and math.isnan(d.score) for d in edge)
    assert cloud.decision.choice.name == "cloud_large@20" and not cloud.decision.counted
    snap = router.budget_snapshot()
    assert snap.decisions == 0 and snap.uncounted_decisions == 4


async def test_generate_returns_a_png_and_counts_the_delivered_decision() -> None:
    engines = FakeEngines()
    router = make_router(engines=engines)
    try:
        result = await router.generate(GenerateItem(PROMPTS[1], seed=7, guidance=2.0))
    finally:
        await router.close()
    image = np.asarray(Image.open(io.BytesIO(result.png)))
    assert image.shape == (32, 32, 3) and (result.width, result.height) == (32, 32)
    call = engines.calls[0]
    assert call["model"] == result.decision.choice.engine
    assert call["steps"] == result.decision.choice.steps and call["guidance"] == 2.0
    assert result.decision.counted and router.budget_snapshot().decisions == 1
    t = result.decision.timings
    assert t.total_ms >= t.generate_ms > 0 and t.encode_ms > 0


async def test_cloud_unavailable_falls_back_to_the_edge_uncounted() -> None:
    engines = FakeEngines()
    engines.errors["cloud_large"] = Unavailable("cloud_large at 127.0.0.1:1: UNAVAILABLE")
    router = make_router(engines=engines, target_rate=1.0)
    router.budget.set_target(multiplier=0.0)  # every prompt prefers the cloud
    try:
        results = [await router.generate(GenerateItem(p, seed=1)) for p in PROMPTS]
        # now known down: the decision itself falls back, without calling the cloud again
        calls_before = len(engines.calls)
        routed = await router.route(PROMPTS, dry_run=True)
        with pytest.raises(Unavailable, match="cloud_large"):
            await router.generate(GenerateItem(PROMPTS[0], target="cloud"))
    finally:
        await router.close()
    preferred_cloud = [
        r for r in results if r.decision.fallback or r.decision.choice.engine == "cloud_large"
    ]
    assert preferred_cloud, "the tiny model should prefer the cloud for some prompt at lambda 0"
    for r in preferred_cloud:
        assert r.decision.fallback and r.decision.choice.name == "edge_small@8"
        assert not r.decision.counted
    assert all(d.choice.engine == "edge_small" for d in routed)
    assert any(d.fallback for d in routed)
    assert len(engines.calls) == calls_before + 1  # only the forced cloud call
    snap = router.budget_snapshot()
    assert snap.uncounted_decisions >= len(preferred_cloud)


async def test_one_failing_request_fails_alone_in_a_batch() -> None:
    engines = FakeEngines()
    engines.fail_prompts[PROMPTS[2]] = ModelError("edge_small: INTERNAL: boom")
    router = make_router(engines=engines)
    items = [GenerateItem(p, seed=i, target="edge") for i, p in enumerate(PROMPTS[:5])]
    items[4] = GenerateItem("", target="edge")
    try:
        outcomes = dict([x async for x in router.generate_many(items)])
    finally:
        await router.close()
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert isinstance(outcomes[2], ModelError) and "boom" in str(outcomes[2])
    assert isinstance(outcomes[4], InvalidRequest) and "''" in str(outcomes[4])
    for i in (0, 1, 3):
        assert outcomes[i].decision.index == i and outcomes[i].png.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (GenerateItem("   "), "prompt '   ' is empty"),
        (GenerateItem("red " * 300), "1200 bytes, the limit is 1024"),
        (GenerateItem("a red circle", steps=0), "steps is 0, must be in 1..100"),
        (GenerateItem("a red circle", steps=101), "steps is 101"),
        (GenerateItem("a red circle", guidance=-1.0), "guidance is -1.0"),
        (GenerateItem("a red circle", guidance=float("nan")), "guidance is nan"),
        (GenerateItem("a red circle", target="moon"), "target is 'moon'"),  # type: ignore[arg-type]
    ],
)
async def test_invalid_requests_quote_the_bad_value(item: GenerateItem, message: str) -> None:
    engines = FakeEngines()
    router = make_router(engines=engines)
    try:
        with pytest.raises(InvalidRequest) as raised:
            await router.generate(item)
    finally:
        await router.close()
    assert message in str(raised.value)
    assert engines.calls == []


async def test_too_many_prompts_quote_the_limit() -> None:
    router = make_router()
    try:
        with pytest.raises(InvalidRequest, match="257 prompts in one call, the limit is 256"):
            await router.route(["a red circle"] * 257)
        with pytest.raises(InvalidRequest, match="no prompts"):
            await router.route([])
    finally:
        await router.close()


async def test_the_callers_deadline_reaches_the_engine_and_is_enforced() -> None:
    engines = FakeEngines()
    router = make_router(engines=engines)
    try:
        await router.generate(GenerateItem(PROMPTS[0], target="edge"), timeout_s=5.0)
        assert 0 < engines.calls[-1]["timeout_s"] <= 5.0
        engines.delay_s = 0.3
        # the fake ignores timeout_s; the router still refuses to start past the deadline
        with pytest.raises(DeadlineExceeded):
            await router.generate(GenerateItem(PROMPTS[0], target="edge"), timeout_s=-0.1)
    finally:
        await router.close()


async def test_a_deadline_passing_in_the_queue_frees_the_slot() -> None:
    router = make_router(max_batch_size=64, max_delay_s=0.5)
    try:
        with pytest.raises(DeadlineExceeded, match="routed"):
            await router.route(PROMPTS[:2], timeout_s=0.05)
        await asyncio.sleep(0)
        assert router.batcher.queue_depth == 0
    finally:
        await router.close()


async def test_readiness_needs_the_estimator_and_the_edge_engine() -> None:
    engines = FakeEngines()
    router = make_router(engines=engines)
    try:
        assert (await router.readiness()).serving
        engines.ready["cloud_large"] = False
        ready = await router.readiness()
        assert ready.serving and not ready.engines["cloud_large"]
        engines.ready["edge_small"] = False
        assert not (await router.readiness()).serving
    finally:
        await router.close()


async def test_warm_start_meets_the_target_share_on_its_prompts_through_the_policy() -> None:
    router = make_router(target_rate=0.25)
    try:
        lam = await router.warm_start(PROMPTS)
    finally:
        await router.close()
    q = TinyQualityModel().predict(PROMPTS)
    policy = make_policy()
    share = float(policy.decide(q, lam).cloud.mean())
    # the smallest lambda whose share is <= the target: one prompt less would overshoot it
    assert 0.25 - 1 / len(PROMPTS) - 1e-9 <= share <= 0.25
    assert float(policy.decide(q, max(lam - 1e-6, 0.0)).cloud.mean()) > 0.25 or lam == 0.0
    assert router.budget_snapshot().warm_started and len(router.window) == len(PROMPTS)


async def test_calibrate_gives_lambda_star_and_eta_on_the_routers_window() -> None:
    router = make_router(target_rate=0.25)
    try:
        with pytest.raises(InvalidRequest, match="window is empty"):
            router.calibrate(0.25, tau_decisions=10, max_eta=1.0)
        lam = await router.warm_start(PROMPTS)
        c = router.calibrate(0.25, tau_decisions=10, max_eta=1.0)
    finally:
        await router.close()
    assert c.multiplier == pytest.approx(lam)
    assert c.slope > 0 and c.eta == pytest.approx(min(1 / (10 * c.slope), 1.0))


async def test_calibrate_on_a_sample_window_leaves_the_routers_own_alone() -> None:
    router = make_router(target_rate=0.25)
    try:
        lam = await router.warm_start(PROMPTS)
        window = await router.sample_window(PROMPTS[:3])
        on_sample = router.calibrate(0.25, tau_decisions=10, max_eta=1.0, window=window)
        alone = make_router(target_rate=0.25)
        try:
            lam_alone = await alone.warm_start(PROMPTS[:3])
        finally:
            await alone.close()
    finally:
        await router.close()
    assert len(window) == 3 and len(router.window) == len(PROMPTS)
    assert router.budget_snapshot().multiplier == pytest.approx(lam)
    # the same lambda* a router warm-started on those prompts alone finds
    assert on_sample.multiplier == pytest.approx(lam_alone)


async def test_an_estimator_failure_fails_auto_prompts_but_not_forced_ones() -> None:
    model = TinyQualityModel()

    def fail(prompts):
        raise RuntimeError("estimator crashed")

    model.predict = fail  # type: ignore[method-assign]
    router = make_router(model, max_batch_size=8, max_delay_s=0.05)
    try:
        auto, edge = await asyncio.gather(
            router.route(PROMPTS[:2], dry_run=True),
            router.route(PROMPTS[2:4], target="edge", dry_run=True),
            return_exceptions=True,
        )
    finally:
        await router.close()
    assert isinstance(auto, ModelError) and "estimator crashed" in str(auto)
    assert [d.choice.name for d in edge] == ["edge_small@8", "edge_small@8"]


def test_the_core_and_the_estimator_seam_import_neither_grpc_nor_tritonclient() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import t2i_router.router.core, t2i_router.router.types, "
        "t2i_router.router.estimator, t2i_router.router.metrics; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'tritonclient')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
