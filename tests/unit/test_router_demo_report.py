"""The demo's numbers without servers: the running rate's error, the baselines' arithmetic,
the stage percentiles and the two figures from hand-made records."""

from __future__ import annotations

import numpy as np
import pytest

from t2i_router.router.demo import DemoConfig, calibration_prompts, demo_prompts, mix_label
from t2i_router.router.demo_report import (
    DemoRecord,
    baseline_sample,
    latency_summary,
    plot_grid,
    plot_rate_lambda,
    quality_summary,
    rate_summary,
    rolling_rate,
)
from t2i_router.world import parse_prompt


def record(i: int, cloud: bool, phase: str = "before", lam: float = 0.1) -> DemoRecord:
    timings = {s: float(i + 1) for s in ("queue_ms", "estimate_ms", "decide_ms", "encode_ms")}
    timings |= {"generate_ms": 100.0 + i, "total_ms": 110.0 + i, "client_ms": 120.0 + i}
    return DemoRecord(
        index=i,
        prompt="a red circle",
        seed=i,
        phase=phase,
        choice="cloud_large@20" if cloud else "edge_small@8",
        engine="cloud_large" if cloud else "edge_small",
        cloud=cloud,
        counted=True,
        multiplier=lam,
        utility_gap=0.01 * i,
        timings_ms=timings,
        image=np.full((32, 32, 3), 10 * i, dtype=np.uint8),
    )


def test_rate_summary_reports_final_and_worst_error_after_warmup():
    records = [record(i, cloud=i % 3 == 0, phase="before" if i < 6 else "after") for i in range(12)]
    out = rate_summary(records, 0.3, warmup_decisions=3, window=4)
    cloud = np.array([i % 3 == 0 for i in range(12)], dtype=float)
    running = np.cumsum(cloud) / np.arange(1, 13)
    assert out["final_rate"] == pytest.approx(running[-1], abs=1e-4)
    assert out["max_rate_error_after_warmup"] == pytest.approx(
        np.abs(running[3:] - 0.3).max(), abs=1e-4
    )
    assert out["counted_decisions"] == 12
    assert out["final_rolling_rate"] == pytest.approx(cloud[-4:].mean(), abs=1e-4)
    assert out["lambda_90pct_after_shift_decisions"] is None  # lambda never moved
    assert rolling_rate(records, 4)[:2] == pytest.approx([1.0, 0.5])  # fewer at the start


def test_lambda_recovery_counts_decisions_from_the_shift_to_90_percent_of_the_move():
    lams = [0.1] * 5 + [0.1, 0.12, 0.15, 0.18, 0.19, 0.2, 0.2]
    records = [
        record(i, cloud=False, phase="before" if i < 5 else "after", lam=lam)
        for i, lam in enumerate(lams)
    ]
    out = rate_summary(records[::-1], 0.3, warmup_decisions=0, window=3)  # any completion order
    assert out["lambda_90pct_after_shift_decisions"] == 4  # 0.19 is the first >= 0.19


def test_random_routing_is_the_mix_of_edge_and_cloud_at_the_routers_share():
    edge, cloud = np.array([0.5, 0.5, 0.7, 0.7]), np.array([0.9, 0.9, 0.9, 0.9])
    routed = np.array([0.9, 0.5, 0.7, 0.7])
    out = quality_summary(routed, edge, cloud, np.array([True, False, False, False]), ["before",
                          "before", "after", "after"])  # fmt: skip
    assert out["all"]["random_same_rate"] == pytest.approx(0.75 * 0.6 + 0.25 * 0.9, abs=1e-4)
    assert out["all"]["gain_recovered"] == pytest.approx((0.7 - 0.6) / 0.3, abs=1e-3)
    assert out["before"]["cloud_share"] == 0.5 and out["after"]["cloud_share"] == 0.0


def test_latency_percentiles_per_stage_and_engine_and_figures_are_written(tmp_path):
    records = [record(i, cloud=i % 2 == 0, phase="after" if i >= 4 else "before") for i in range(8)]
    lat = latency_summary(records)
    assert lat["client_ms"]["p50"] == pytest.approx(123.5)
    assert set(lat) >= {"generate_ms[edge_small]", "generate_ms[cloud_large]", "total_ms"}
    for path in (
        plot_rate_lambda(records, 0.3, "t", tmp_path / "rate.png", window=3),
        plot_grid(records, np.linspace(0, 1, 8), "t", tmp_path / "grid.png", cols=4),
    ):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_prompts_shift_halfway_and_the_baseline_sample_spans_both_phases():
    config = DemoConfig(prompts=20, before=("single", "group"), after=("pair", "relation"))
    prompts = demo_prompts(config)
    assert [phase for _, phase in prompts] == ["before"] * 10 + ["after"] * 10
    levels = [parse_prompt(p).complexity for p, _ in prompts]
    assert set(levels[:10]) == {"single", "group"} and set(levels[10:]) == {"pair", "relation"}
    records = [record(i, cloud=False, phase=ph) for i, (_, ph) in enumerate(prompts)]
    sample = baseline_sample(records[::-1], 6)
    assert [r.index for r in sample] == [0, 4, 8, 11, 15, 19]
    assert baseline_sample(records, 0) == records


def test_calibration_prompts_are_the_starting_mix_but_not_the_streams_prompts():
    config = DemoConfig(prompts=40, calibration_prompts=30, before=("single", "group"))
    prompts = calibration_prompts(config)
    assert len(prompts) == 30
    assert {parse_prompt(p).complexity for p in prompts} == {"single", "group"}
    stream = {p for p, _ in demo_prompts(config)}
    assert len(stream & set(prompts)) < 5  # other seeds: at most chance repeats of short prompts
    with pytest.raises(Exception, match="calibration_prompts is 0"):
        DemoConfig(calibration_prompts=0)


def test_the_default_mix_goes_from_a_third_to_two_thirds_compositional():
    config = DemoConfig(prompts=60)
    levels = [parse_prompt(p).complexity for p, _ in demo_prompts(config)]
    complex_share = [np.mean([lv in ("pair", "relation") for lv in half]) for half in
                     (levels[:30], levels[30:])]  # fmt: skip
    assert complex_share == pytest.approx([1 / 3, 2 / 3])
    assert mix_label(config.before) == "single:group:pair:relation 2:2:1:1"
    with pytest.raises(Exception, match=r"after is \['pairs'\]: levels must be some of"):
        DemoConfig(after=("pairs",))
