"""The evaluation core on seeded synthetic data whose answers are known in closed form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from t2i_router.errors import InvalidRequest
from t2i_router.estimator import evaluation as ev


def _noisy_pair(
    n: int, s: int, gap_std: float, noise_std: float, seed: int = 0, mean_gap: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, S) edge and cloud qualities whose expected per-prompt gap is planted, and that gap."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.9, n)  # (N,)
    gap = rng.normal(mean_gap, gap_std, n)  # (N,)
    edge = base[:, None] + rng.normal(0.0, noise_std, (n, s))
    cloud = (base + gap)[:, None] + rng.normal(0.0, noise_std, (n, s))
    return edge, cloud, gap


def test_the_core_imports_neither_torch_grpc_tritonclient_nor_matplotlib() -> None:
    probe = (
        "import sys, t2i_router.estimator.evaluation; "
        "print(sorted(m for m in ('torch', 'grpc', 'tritonclient', 'matplotlib') "
        "if m in sys.modules))"
    )
    # The same package as this process imported (service/, above t2i_router/estimator/evaluation/).
    env = {**os.environ, "PYTHONPATH": str(Path(ev.__file__).parents[3])}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "[]"


def test_choice_quality_is_the_mean_over_seeds() -> None:
    quality = np.arange(24, dtype=float).reshape(2, 3, 4)
    np.testing.assert_allclose(ev.choice_quality(quality), quality.mean(axis=2))
    edge, cloud = ev.edge_cloud_quality(quality, edge=0, cloud=2, costs=[1.0, 2.0, 3.0])
    np.testing.assert_array_equal(edge, quality[:, 0, :])
    np.testing.assert_array_equal(cloud, quality[:, 2, :])


def test_oracle_recovers_more_of_the_gain_than_random() -> None:
    edge, cloud, gap = _noisy_pair(n=600, s=8, gap_std=0.08, noise_std=0.1)
    curve = ev.deferral_curve(edge.mean(1), cloud.mean(1), gap)
    random = ev.random_deferral_curve(edge.mean(1), cloud.mean(1))
    assert curve.metrics["pgr@50"] > random.metrics["pgr@50"] + 0.2
    assert curve.metrics["apgr"] > random.metrics["apgr"] + 0.15
    assert curve.metrics["calls_saved@50"] > 0.3
    # Both ends are the fixed choices whatever the score.
    assert curve.quality[0] == pytest.approx(edge.mean())
    assert curve.quality[-1] == pytest.approx(cloud.mean())
    assert curve.pgr[0] == 0.0 and curve.pgr[-1] == pytest.approx(1.0)


def test_random_scores_average_to_pgr_equal_to_the_rate() -> None:
    edge, cloud, _ = _noisy_pair(n=200, s=2, gap_std=0.08, noise_std=0.1, seed=1)
    qe, qc = edge.mean(1), cloud.mean(1)
    rng = np.random.default_rng(2)
    pgr = np.mean([ev.deferral_curve(qe, qc, rng.random(200)).pgr for _ in range(300)], axis=0)
    rates = ev.default_rates()
    assert np.max(np.abs(pgr - rates)) < 0.03
    # The analytic curve is exact, and one block of tied scores fills evenly: the same line.
    np.testing.assert_allclose(ev.random_deferral_curve(qe, qc).pgr, rates)
    np.testing.assert_allclose(ev.deferral_curve(qe, qc, np.zeros(200)).pgr, rates, atol=1e-12)


def test_perfect_scores_on_noise_free_data_hit_the_analytic_optimum() -> None:
    n = 50
    gap = np.arange(1, n + 1, dtype=float)  # prompt gaps 1..N, best first after sorting
    perm = np.random.default_rng(3).permutation(n)  # ranking must not rely on prompt order
    edge, cloud = np.zeros(n), gap[perm]
    rates = np.linspace(0.0, 1.0, 2 * n + 1)  # whole counts and halves between them
    curve = ev.deferral_curve(edge, cloud, cloud, rates)
    k = np.arange(n + 1)
    whole = k * (2 * n - k + 1) / (n * (n + 1))  # top-k sum of 1..N over the total
    np.testing.assert_allclose(curve.pgr[::2], whole, atol=1e-12)
    np.testing.assert_allclose(curve.pgr[1::2], (whole[:-1] + whole[1:]) / 2, atol=1e-12)
    assert curve.metrics["pgr@50"] == pytest.approx(whole[25])
    # APGR is the trapezoid over the grid; each half-step segment is linear, so this is exact.
    exact_area = np.sum((whole[:-1] + whole[1:]) / 2) / n
    assert curve.metrics["apgr"] == pytest.approx(exact_area, abs=1e-12)


def test_calls_saved_counts_the_rate_that_reaches_half_the_gain() -> None:
    # Two prompts of ten hold all the gain: a perfect score reaches half of it at r = 0.1.
    edge, cloud = np.zeros(10), np.array([0, 0, 1, 0, 0, 0, 0, 1, 0, 0], dtype=float)
    curve = ev.deferral_curve(edge, cloud, cloud)
    assert curve.metrics["calls_saved@50"] == pytest.approx(1.0 - 0.1 / 0.5)
    assert curve.metrics["pgr@20"] == pytest.approx(1.0)
    # Scores that rank the gainers last need r = 0.9: more calls than random.
    assert ev.deferral_curve(edge, cloud, -cloud).metrics["calls_saved@50"] == pytest.approx(-0.8)


def test_random_apgr_is_one_half_and_saves_no_calls() -> None:
    edge, cloud, _ = _noisy_pair(n=100, s=2, gap_std=0.05, noise_std=0.1)
    metrics = ev.random_deferral_curve(edge.mean(1), cloud.mean(1)).metrics
    assert metrics["apgr"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["calls_saved@50"] == 0.0
    assert (metrics["pgr@20"], metrics["pgr@50"], metrics["pgr@80"]) == (0.2, 0.5, 0.8)


def test_tied_scores_give_a_curve_independent_of_prompt_order() -> None:
    rng = np.random.default_rng(4)
    edge, cloud = rng.random(40), rng.random(40) + 0.2
    scores = rng.integers(0, 4, 40).astype(float)  # four tie blocks
    perm = rng.permutation(40)
    a = ev.deferral_curve(edge, cloud, scores)
    b = ev.deferral_curve(edge[perm], cloud[perm], scores[perm])
    np.testing.assert_allclose(a.pgr, b.pgr, atol=1e-12)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_prompts() -> None:
    widths = []
    for n in (200, 3200):
        edge, cloud, gap = _noisy_pair(n=n, s=4, gap_std=0.08, noise_std=0.1, seed=5)
        noisy = gap + np.random.default_rng(6).normal(0.0, 0.08, n)
        result = ev.bootstrap_metrics(
            edge.mean(1), cloud.mean(1), {"oracle": gap, "noisy": noisy}, n_boot=300, seed=7
        )
        for method in ("oracle", "noisy"):
            for metric in ev.METRIC_NAMES:
                iv = result.interval(method, metric)
                assert iv.low <= iv.estimate <= iv.high, (n, method, metric, iv)
        widths.append(result.interval("noisy", "apgr").high - result.interval("noisy", "apgr").low)
    assert widths[1] < widths[0] / 2  # sqrt(16) = 4 in theory


def test_paired_difference_of_a_method_with_itself_is_exactly_zero() -> None:
    edge, cloud, gap = _noisy_pair(n=300, s=2, gap_std=0.08, noise_std=0.1)
    result = ev.bootstrap_metrics(
        edge.mean(1), cloud.mean(1), {"a": gap, "b": gap.copy()}, n_boot=200, seed=8
    )
    for metric in ev.METRIC_NAMES:
        assert result.difference("a", "b", metric) == ev.Interval(0.0, 0.0, 0.0)
    # The same seed draws the same resamples; another draws others.
    again = ev.bootstrap_metrics(edge.mean(1), cloud.mean(1), {"a": gap}, n_boot=200, seed=8)
    other = ev.bootstrap_metrics(edge.mean(1), cloud.mean(1), {"a": gap}, n_boot=200, seed=9)
    np.testing.assert_array_equal(again.samples["a"], result.samples["a"])
    assert not np.array_equal(other.samples["a"], result.samples["a"])
    # Random is analytic on every resample, so the oracle's lead over it has an interval above 0.
    assert result.difference("a", "random", "apgr").low > 0


def test_split_half_reliability_is_one_without_seed_noise_and_zero_with_pure_noise() -> None:
    edge, cloud, _ = _noisy_pair(n=500, s=8, gap_std=0.08, noise_std=0.0)
    clean = ev.split_half_reliability(edge, cloud)
    assert clean.correlation == pytest.approx(1.0) and clean.spearman_brown == pytest.approx(1.0)
    edge, cloud, _ = _noisy_pair(n=2000, s=8, gap_std=0.0, noise_std=0.17, seed=10)
    noise = ev.split_half_reliability(edge, cloud)
    assert abs(noise.correlation) < 0.1
    assert noise.prompt_gap_std < 0.03


def test_prompt_level_gap_std_and_reliability_recover_the_planted_values() -> None:
    edge, cloud, gap = _noisy_pair(n=2000, s=8, gap_std=0.08, noise_std=0.12, seed=11)
    measured = ev.split_half_reliability(edge, cloud)
    assert measured.prompt_gap_std == pytest.approx(gap.std(ddof=1), abs=0.01)
    assert measured.prompt_gap_std == pytest.approx(0.08, abs=0.015)
    # A half's gap averages 4 seeds of edge and cloud noise: variance 2 * 0.12^2 / 4.
    half_noise, prompt = 2 * 0.12**2 / 4, 0.08**2
    assert measured.correlation == pytest.approx(prompt / (prompt + half_noise), abs=0.05)
    assert measured.spearman_brown == pytest.approx(prompt / (prompt + half_noise / 2), abs=0.05)


def test_split_half_oracle_finds_planted_structure_and_not_noise() -> None:
    edge, cloud, _ = _noisy_pair(n=600, s=8, gap_std=0.1, noise_std=0.05, seed=12)
    assert ev.split_half_oracle(edge, cloud).metrics["pgr@50"] > 0.8
    edge, cloud, _ = _noisy_pair(n=600, s=8, gap_std=0.0, noise_std=0.05, seed=13)
    assert ev.split_half_oracle(edge, cloud).metrics["pgr@50"] == pytest.approx(0.5, abs=0.15)


def test_gap_structure_reports_each_level_and_overall() -> None:
    rng = np.random.default_rng(14)
    n, s = 400, 8
    levels = np.array(["single", "relation"] * (n // 2))
    hard = levels == "relation"
    edge = 0.8 + rng.normal(0.0, 0.01, (n, s))
    cloud = edge.mean(1, keepdims=True) + rng.normal(0.0, 0.01, (n, s))
    cloud[hard] += rng.uniform(0.1, 0.3, int(hard.sum()))[:, None]  # only relations gain
    out = ev.gap_structure(edge, cloud, levels)
    assert list(out["by_level"]) == ["single", "relation"]
    single, relation, overall = out["by_level"]["single"], out["by_level"]["relation"], out["all"]
    assert single["share_edge_within"] == 1.0 and relation["share_edge_within"] == 0.0
    assert overall["share_edge_within"] == pytest.approx(0.5)
    assert relation["mean_gap"] == pytest.approx(0.2, abs=0.02)
    assert single["mean_gap"] == pytest.approx(0.0, abs=0.005)
    assert relation["split_half_reliability"] > 0.9 and overall["oracle_pgr50"] > 0.95
    assert overall["n_prompts"] == n and relation["n_prompts"] == n // 2
    assert overall["image_gap_std"] > overall["prompt_gap_std"] * 0.5


def _choices(n: int = 300, seed: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) per-prompt qualities of four choices, cheapest first, and their costs."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.6, 0.8, n)[:, None]
    lift = np.array([0.0, 0.03, 0.06, 0.08]) * rng.uniform(0.0, 2.0, (n, 1))
    return base + lift + rng.normal(0.0, 0.02, (n, 4)), np.array([1.0, 2.0, 10.0, 20.0])


def test_m_choice_curve_passes_through_the_cheapest_and_dearest_choice_at_lambda_extremes() -> None:
    quality, costs = _choices()
    noisy = quality + np.random.default_rng(16).normal(0.0, 0.05, quality.shape)
    curve = ev.cost_quality_curve(quality, noisy, costs)
    assert curve.mean_cost[0] == pytest.approx(costs[0]) and curve.mean_cost[-1] == costs[-1]
    assert curve.mean_quality[0] == pytest.approx(quality[:, 0].mean())
    assert curve.mean_quality[-1] == pytest.approx(quality[:, -1].mean())
    assert np.all(np.diff(curve.mean_cost) > 0)
    # Utilities that ignore the prompt move every prompt at once: each fixed choice is a point.
    flat = np.tile([0.0, 0.1, 0.3, 0.4], (quality.shape[0], 1))
    flat_curve = ev.cost_quality_curve(quality, flat, costs)
    np.testing.assert_allclose(flat_curve.mean_cost, costs)
    np.testing.assert_allclose(flat_curve.mean_quality, quality.mean(0))


def test_m_choice_curve_with_oracle_utilities_lies_above_interior_fixed_choices() -> None:
    quality, costs = _choices()
    comparisons = ev.compare_to_fixed(ev.cost_quality_curve(quality, quality, costs))
    assert [c.above for c in comparisons] == [False, True, True, False]  # ends lie on the curve
    assert comparisons[0].margin == pytest.approx(0.0, abs=1e-12)
    assert comparisons[-1].cost_saved > 0.2  # the dearest choice's quality, reached for less


def test_two_choice_cost_curve_matches_the_deferral_curve_at_whole_counts() -> None:
    rng = np.random.default_rng(17)
    n = 40
    quality = rng.random((n, 2))
    scores = rng.normal(size=n)
    curve = ev.cost_quality_curve(quality, np.stack([np.zeros(n), scores], 1), [0.0, 1.0])
    deferral = ev.deferral_curve(quality[:, 0], quality[:, 1], scores, np.arange(n + 1) / n)
    np.testing.assert_allclose(curve.mean_cost, np.arange(n + 1) / n)
    np.testing.assert_allclose(curve.mean_quality, deferral.quality, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: ev.deferral_curve(np.ones(5), np.ones(5), np.ones(4)), "scores"),
        (lambda: ev.deferral_curve(np.ones(5), np.ones(4), np.ones(5)), "quality_cloud"),
        (lambda: ev.choice_quality(np.full((2, 2, 2), np.nan)), "quality"),
        (lambda: ev.deferral_curve([0.1, np.nan], [0.2, 0.3], [1, 2]), "quality_edge"),
        (lambda: ev.deferral_curve([0.1, 0.2], [0.2, 0.3], [1, 2], [0.0, 0.5]), "rates"),
        (lambda: ev.cost_quality_curve(np.ones((3, 2)), np.ones((3, 2)), [2.0, 1.0]), "costs"),
        (lambda: ev.cost_quality_curve(np.ones((3, 2)), np.ones((3, 3)), [1.0, 2.0]), "utilities"),
        (lambda: ev.split_half_reliability(np.ones((4, 1)), np.ones((4, 1))), "quality_edge"),
        (lambda: ev.gap_structure(np.ones((4, 2)), np.ones((4, 2)), ["a"] * 3), "levels"),
        (lambda: ev.edge_cloud_quality(np.ones((2, 2, 2)), edge=0, cloud=5), "cloud"),
        (lambda: ev.edge_cloud_quality(np.ones((2, 2, 2)), 0, 1, costs=[2.0, 1.0]), "costs"),
        (
            lambda: ev.bootstrap_metrics([0.1, 0.2], [0.3, 0.4], {"m": [1.0, 2.0, 3.0]}),
            "scores of 'm'",
        ),
    ],
)
def test_bad_inputs_raise_invalid_request_naming_the_value(call, named: str) -> None:
    with pytest.raises(InvalidRequest, match=named):
        call()


def test_split_half_needs_two_seeds_and_says_how_many_it_got() -> None:
    with pytest.raises(InvalidRequest, match="1 seed"):
        ev.split_half_oracle(np.ones((4, 1)), np.ones((4, 1)))


def test_writers_format_intervals_and_round_trip_json(tmp_path: Path) -> None:
    assert ev.format_interval(ev.Interval(0.7149, 0.66, 0.7512)) == "0.71 [0.66, 0.75]"
    edge, cloud, gap = _noisy_pair(n=200, s=2, gap_std=0.08, noise_std=0.1)
    result = ev.bootstrap_metrics(edge.mean(1), cloud.mean(1), {"oracle": gap}, n_boot=100)
    table = ev.markdown_table(result, reference="random")
    assert table.startswith("| method | PGR@20% |")
    assert f"| oracle | {result.interval('oracle', 'pgr@20')} |" in table
    assert "Paired difference from random" in table
    curve = ev.random_deferral_curve([0.0], [1.0])
    payload = {"bootstrap": result, "nan": float("nan"), "curve": curve}
    written = json.loads(ev.write_json(tmp_path / "eval.json", payload).read_text())
    assert written["nan"] is None
    assert written["bootstrap"]["metrics"]["oracle"]["apgr"]["estimate"] == pytest.approx(
        result.estimates["oracle"]["apgr"]
    )
    assert ev.write_markdown(tmp_path / "eval.md", result, title="t").read_text().startswith("# t")


def test_plots_write_png_files(tmp_path: Path) -> None:
    edge, cloud, gap = _noisy_pair(n=100, s=2, gap_std=0.08, noise_std=0.1)
    qe, qc = edge.mean(1), cloud.mean(1)
    result = ev.bootstrap_metrics(qe, qc, {"oracle": gap}, n_boot=50)
    pgr_png = ev.plot_pgr_curves(
        {"oracle": ev.deferral_curve(qe, qc, gap)}, tmp_path / "pgr.png", bootstrap=result
    )
    quality, costs = _choices(n=50)
    cost_png = ev.plot_cost_quality(
        {"oracle": ev.cost_quality_curve(quality, quality, costs)},
        tmp_path / "cost.png",
        choice_names=["edge4", "edge8", "cloud10", "cloud20"],
    )
    for png in (pgr_png, cost_png):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_of_anticorrelated_halves_is_floored_at_zero() -> None:
    rng = np.random.default_rng(3)
    g = rng.normal(size=200)
    # halves whose gaps are opposite: correlation -1 would give -inf, -0.6 gives -3
    edge = np.zeros((200, 2))
    cloud = np.stack([g, -0.6 * g + 0.8 * rng.normal(size=200)], axis=1)
    measured = ev.split_half_reliability(edge, cloud)
    assert measured.correlation < -0.3
    assert measured.spearman_brown == 0.0
