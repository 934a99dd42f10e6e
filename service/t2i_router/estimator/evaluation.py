"""Evaluate routing: deferral curves, PGR and APGR, paired bootstrap intervals, noise ceiling.

Pure numpy (matplotlib only inside the plot functions); imports neither torch, grpc nor
tritonclient, so every figure can be recomputed from label arrays alone.

Inputs: ``quality`` (N, M, S) is the mean alignment of the image choice m made for test prompt n
with seed s; the quality of a choice on a prompt is its mean over seeds (`choice_quality`). A
two-choice method is a routing score per prompt (N,), higher = send to the cloud; an M-choice
method is a predicted utility per prompt and choice (N, M), routed by argmax_m u_m - lambda c_m.

Definitions follow RouteLLM (Ong et al. 2024; lm-sys/RouteLLM at 0b64fda,
``routellm/evals/evaluate.py``, ``generate_results``; ``routellm/evals/benchmarks.py``,
``Benchmark.evaluate``):

- Routing at a cloud rate: prompts whose score reaches a threshold go to the strong model
  (``benchmarks.py``: ``strong_win_rates >= threshold``), so tied scores move together.
- PGR(r) = (Q(r) - Q_weak) / (Q_strong - Q_weak), the share of the strong model's gain recovered
  (``evaluate.py``, ``pct_call_metric``: the target ``pct * (strong - weak) + weak``).
- APGR = (AUC - weak_AUC) / (strong_AUC - weak_AUC), each AUC a trapezoid over the strong-call
  share in [0, 1] (``evaluate.py``, ``auc_metric`` and ``apgr_metric``); this equals the trapezoid
  of PGR over the same grid, which is how it is computed here.
- Calls to reach x% of the gain (CPT(x%), columns "20% qual", "50% qual", "80% qual" of
  ``pct_call_metric``): the strong-call share at which Q(r) first reaches
  Q_weak + x (Q_strong - Q_weak). Calls saved vs random = 1 - CPT_method(50%) / CPT_random(50%)
  with CPT_random(50%) = 0.5 (the paper's "x% fewer calls than random"; RouteT2I reports the same
  figure).
- The random router draws a uniform score per prompt (``routellm/routers/routers.py``,
  ``RandomRouter``); in expectation it gives PGR(r) = r, computed here analytically.

Where this differs from RouteLLM, on purpose: RouteLLM evaluates at score deciles and interpolates
CPT with ``np.interp`` over accuracy, which assumes the curve rises monotonically; here Q(r) is
exact at any rate (a fractional prompt count interpolates linearly between whole counts, and a
block of tied scores fills evenly: the expectation over random tie orders, deterministic and
independent of prompt order), and CPT is the first crossing of the exact curve.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from t2i_router.errors import InvalidRequest

log = logging.getLogger(__name__)

__all__ = [
    "METRIC_LABELS",
    "METRIC_NAMES",
    "BootstrapResult",
    "CostQualityCurve",
    "DeferralCurve",
    "FixedChoiceComparison",
    "Interval",
    "SplitHalfReliability",
    "bootstrap_metrics",
    "choice_quality",
    "compare_to_fixed",
    "cost_quality_curve",
    "default_rates",
    "deferral_curve",
    "edge_cloud_quality",
    "format_interval",
    "gap_structure",
    "markdown_table",
    "plot_cost_quality",
    "plot_pgr_curves",
    "random_deferral_curve",
    "split_half_oracle",
    "split_half_reliability",
    "write_json",
    "write_markdown",
]

METRIC_NAMES: tuple[str, ...] = ("pgr@20", "pgr@50", "pgr@80", "apgr", "calls_saved@50")
METRIC_LABELS: Mapping[str, str] = {
    "pgr@20": "PGR@20%",
    "pgr@50": "PGR@50%",
    "pgr@80": "PGR@80%",
    "apgr": "APGR",
    "calls_saved@50": "calls saved @50%",
}
_PGR_RATES = (0.2, 0.5, 0.8)  # the rates of pgr@20, pgr@50, pgr@80
_HALF_GAIN = 0.5  # calls saved are counted to reach this share of the gain
RATE_GRID_POINTS = 101  # default cloud-rate grid: 0, 0.01, ..., 1
_BOOTSTRAP_CHUNK = 256  # resamples held in memory at once: (chunk, N) weights


# ----------------------------------------------------------------------------- validation


def _array(name: str, value: ArrayLike, ndim: int) -> NDArray[np.float64]:
    """``value`` as a finite float64 array with ``ndim`` dimensions, or InvalidRequest naming it."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{name} is not numeric: {e}") from e
    if arr.ndim != ndim:
        raise InvalidRequest(f"{name} has shape {arr.shape}, expected {ndim} dimension(s)")
    if arr.size == 0:
        raise InvalidRequest(f"{name} is empty (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InvalidRequest(
            f"{name} has {int(bad.sum())} NaN or infinite value(s), the first {arr[first]} at "
            f"index {first}"
        )
    return arr


def _expect_shape(name: str, arr: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if arr.shape != shape:
        raise InvalidRequest(f"{name} has shape {arr.shape}, expected {shape} ({what})")


def _rates(rates: ArrayLike | None) -> NDArray[np.float64]:
    """A validated cloud-rate grid: ascending, from 0 to 1 (APGR integrates over all of it)."""
    if rates is None:
        return default_rates()
    r = _array("rates", rates, 1)
    if r.size < 2 or r[0] != 0.0 or r[-1] != 1.0:
        raise InvalidRequest(f"rates must run from 0 to 1, got {r[0]} .. {r[-1]} ({r.size} points)")
    if np.any(np.diff(r) <= 0):
        i = int(np.flatnonzero(np.diff(r) <= 0)[0])
        raise InvalidRequest(f"rates must be strictly ascending: {r[i]} then {r[i + 1]}")
    return r


def _pair(quality_edge: ArrayLike, quality_cloud: ArrayLike, ndim: int) -> tuple[np.ndarray, ...]:
    qe = _array("quality_edge", quality_edge, ndim)
    qc = _array("quality_cloud", quality_cloud, ndim)
    _expect_shape("quality_cloud", qc, qe.shape, "the shape of quality_edge")
    return qe, qc


def default_rates() -> NDArray[np.float64]:
    """The default cloud-rate grid, 0 to 1 in steps of 0.01 (101 points)."""
    return np.linspace(0.0, 1.0, RATE_GRID_POINTS)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid area of ``y`` (..., R) over ``x`` (R,) (np.trapz is renamed across numpy 1/2)."""
    return np.sum(np.diff(x) * (y[..., 1:] + y[..., :-1]) / 2.0, axis=-1)


# ----------------------------------------------------------------------------- quality


def choice_quality(quality: ArrayLike) -> NDArray[np.float64]:
    """Quality of each choice on each prompt: the mean over its seeds.

    Args:
        quality: (N, M, S) mean alignment of each image, finite.

    Returns:
        (N, M) per-prompt, per-choice quality.
    """
    q = _array("quality", quality, 3)
    return q.mean(axis=2)  # (N, M)


def edge_cloud_quality(
    quality: ArrayLike, edge: int, cloud: int, costs: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The edge's and the cloud's per-seed qualities out of all choices'.

    Args:
        quality: (N, M, S) mean alignment of each image.
        edge: Index of the edge choice (the cheap default).
        cloud: Index of the cloud choice (the expensive default).
        costs: (M,) costs; when given, the edge must cost less than the cloud.

    Returns:
        quality_edge, quality_cloud: (N, S) each; ``.mean(axis=1)`` gives per-prompt quality.
    """
    q = _array("quality", quality, 3)
    m = q.shape[1]
    for name, index in (("edge", edge), ("cloud", cloud)):
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise InvalidRequest(f"{name} must be a choice index, got {index!r}")
        if not 0 <= index < m:
            raise InvalidRequest(f"{name} index {index} is out of range for {m} choices")
    if edge == cloud:
        raise InvalidRequest(f"edge and cloud are the same choice ({edge})")
    if costs is not None:
        c = _array("costs", costs, 1)
        _expect_shape("costs", c, (m,), "one per choice")
        if not c[edge] < c[cloud]:
            raise InvalidRequest(
                f"costs[edge={edge}] = {c[edge]} is not below costs[cloud={cloud}] = {c[cloud]}"
            )
    return q[:, edge, :], q[:, cloud, :]


# ----------------------------------------------------------------------------- two choices


@dataclass(frozen=True)
class DeferralCurve:
    """Quality and PGR against the cloud rate for one routing of two choices.

    Attributes:
        rates: (R,) cloud rates from 0 to 1.
        quality: (R,) mean quality when the top ``rate`` share of prompts go to the cloud.
        pgr: (R,) performance gap recovered, (quality - quality_edge) / (quality_cloud -
            quality_edge); NaN when the cloud's mean quality is not above the edge's.
        quality_edge: Mean quality with every prompt on the edge.
        quality_cloud: Mean quality with every prompt on the cloud.
        metrics: ``METRIC_NAMES`` -> value: PGR at 20/50/80% (exact at those rates), APGR
            (trapezoid over ``rates``) and calls saved vs random to reach 50% of the gain.
    """

    rates: NDArray[np.float64]
    quality: NDArray[np.float64]
    pgr: NDArray[np.float64]
    quality_edge: float
    quality_cloud: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (lists of floats)."""
        return {
            "rates": self.rates.tolist(),
            "quality": self.quality.tolist(),
            "pgr": self.pgr.tolist(),
            "quality_edge": self.quality_edge,
            "quality_cloud": self.quality_cloud,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class _Ranking:
    order: NDArray[np.int64]  # (N,) prompt indices, highest score first, ties by index
    ends: NDArray[np.int64]  # (K,) positions in `order` where a block of equal scores ends


def _rank(scores: np.ndarray) -> _Ranking:
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    return _Ranking(order=order, ends=ends)


def _knots(
    gap: np.ndarray, ranking: _Ranking, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative prompt count and gain at the end of each tie block, best-ranked first.

    Between knots the gain grows linearly in the count: fractional counts interpolate, and a tie
    block fills evenly. ``weights`` (B, N) counts each prompt's copies in a resample.

    Returns:
        count, gain: (B, K + 1) each, starting at 0.
    """
    w = weights[:, ranking.order]  # (B, N)
    count = np.cumsum(w, axis=1)[:, ranking.ends]  # (B, K)
    gain = np.cumsum(w * gap[ranking.order], axis=1)[:, ranking.ends]  # (B, K)
    zeros = np.zeros((w.shape[0], 1))
    return np.hstack([zeros, count]), np.hstack([zeros, gain])


def _curve_metrics(
    count: np.ndarray, gain: np.ndarray, rates: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gain curve, PGR curve and metrics from knots, row by row.

    Returns:
        gained: (B, R) gain summed over the prompts sent to the cloud at each rate.
        pgr: (B, R) PGR at each rate; NaN rows where the total gain is not positive.
        metrics: (B, len(METRIC_NAMES)) in that order; NaN rows likewise.
    """
    n_rows = count.shape[0]
    n = count[:, -1]  # (B,) prompts in each resample
    total = gain[:, -1]  # (B,)
    points = np.concatenate([rates, _PGR_RATES])  # (R + 3,)
    gained = np.empty((n_rows, points.size))
    for b in range(n_rows):
        gained[b] = np.interp(points * n[b], count[b], gain[b])
    ok = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pgr_all = np.where(ok[:, None], gained / total[:, None], np.nan)  # (B, R + 3)
    pgr = pgr_all[:, : rates.size]
    metrics = np.full((n_rows, len(METRIC_NAMES)), np.nan)
    metrics[:, :3] = pgr_all[:, rates.size :]
    metrics[:, 3] = _trapezoid(pgr, rates)
    # Calls to reach half the gain: the first crossing of the piecewise-linear gain curve.
    target = _HALF_GAIN * total  # (B,)
    j = np.maximum(np.argmax(gain >= target[:, None], axis=1), 1)  # (B,) first knot at target
    rows = np.arange(n_rows)
    c0, c1 = count[rows, j - 1], count[rows, j]
    g0, g1 = gain[rows, j - 1], gain[rows, j]
    with np.errstate(divide="ignore", invalid="ignore"):
        calls = c0 + (target - g0) / (g1 - g0) * (c1 - c0)
        metrics[:, 4] = np.where(ok, 1.0 - (calls / n) / _HALF_GAIN, np.nan)
    return gained[:, : rates.size], pgr, metrics


def _two_choice_inputs(
    quality_edge: ArrayLike, quality_cloud: ArrayLike, scores: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    qe, qc = _pair(quality_edge, quality_cloud, 1)
    if scores is None:
        return qe, qc, None
    s = _array("scores", scores, 1)
    _expect_shape("scores", s, qe.shape, "one per prompt")
    return qe, qc, s


def deferral_curve(
    quality_edge: ArrayLike,
    quality_cloud: ArrayLike,
    scores: ArrayLike,
    rates: ArrayLike | None = None,
) -> DeferralCurve:
    """The deferral curve of one routing score between two choices, with its metrics.

    At cloud rate r the top r N prompts by score go to the cloud; a fractional count sends that
    fraction of the next prompt (linear interpolation), and prompts with equal scores are filled
    evenly (the expectation over random orders among them).

    Args:
        quality_edge: (N,) quality of the edge on each prompt (mean over seeds).
        quality_cloud: (N,) quality of the cloud on each prompt.
        scores: (N,) routing score, higher = send to the cloud.
        rates: Cloud-rate grid, strictly ascending from 0 to 1; default `default_rates()`.

    Returns:
        The curve; PGR and metrics are NaN when the cloud's mean quality is not above the edge's.
    """
    qe, qc, s = _two_choice_inputs(quality_edge, quality_cloud, scores)
    r = _rates(rates)
    n = qe.size
    count, gain = _knots(qc - qe, _rank(s), np.ones((1, n)))
    gained, pgr, metrics = _curve_metrics(count, gain, r)
    return DeferralCurve(
        rates=r,
        quality=qe.mean() + gained[0] / n,
        pgr=pgr[0],
        quality_edge=float(qe.mean()),
        quality_cloud=float(qc.mean()),
        metrics=dict(zip(METRIC_NAMES, metrics[0].tolist())),
    )


def _random_metrics(rates: np.ndarray) -> np.ndarray:
    """Metrics of random routing in expectation: PGR(r) = r, APGR = 1/2, no calls saved."""
    return np.array([*_PGR_RATES, float(_trapezoid(rates, rates)), 0.0])


def random_deferral_curve(
    quality_edge: ArrayLike, quality_cloud: ArrayLike, rates: ArrayLike | None = None
) -> DeferralCurve:
    """The expected deferral curve of random routing, computed analytically (not sampled).

    A random share r of prompts on the cloud gains r (Q_cloud - Q_edge) in expectation, so
    PGR(r) = r, APGR = 0.5 and calls saved = 0.

    Args:
        quality_edge: (N,) quality of the edge on each prompt.
        quality_cloud: (N,) quality of the cloud on each prompt.
        rates: Cloud-rate grid, strictly ascending from 0 to 1; default `default_rates()`.
    """
    qe, qc, _ = _two_choice_inputs(quality_edge, quality_cloud, None)
    r = _rates(rates)
    q_edge, q_cloud = float(qe.mean()), float(qc.mean())
    ok = q_cloud > q_edge
    return DeferralCurve(
        rates=r,
        quality=q_edge + r * (q_cloud - q_edge),
        pgr=r.copy() if ok else np.full_like(r, np.nan),
        quality_edge=q_edge,
        quality_cloud=q_cloud,
        metrics=dict(zip(METRIC_NAMES, (_random_metrics(r) if ok else [math.nan] * 5))),
    )


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return format_interval(self)

    def to_dict(self) -> dict[str, float]:
        """``{"estimate", "low", "high"}``."""
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def format_interval(interval: Interval, decimals: int = 2) -> str:
    """``"0.71 [0.66, 0.75]"``; ``"n/a"`` for a NaN estimate."""
    if math.isnan(interval.estimate):
        return "n/a"
    return (
        f"{interval.estimate:.{decimals}f} [{interval.low:.{decimals}f}, "
        f"{interval.high:.{decimals}f}]"
    )


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates and paired bootstrap resamples of every method's metrics.

    Every method is scored on the same resampled prompts, so differences between methods are
    paired (`difference`).

    Attributes:
        rates: (R,) the cloud-rate grid.
        estimates: method -> metric -> point estimate on all test prompts.
        samples: method -> (B, len(METRIC_NAMES)) metrics on each resample.
        pgr_estimates: method -> (R,) PGR curve on all test prompts.
        pgr_samples: method -> (B, R) PGR curve on each resample.
        n_prompts: N, the test prompts resampled.
        n_boot: B, the resamples.
        seed: Seed of the numpy Generator that drew them.
        confidence: Coverage of the percentile intervals, e.g. 0.95.
        n_degenerate: Resamples whose cloud mean was not above the edge's (metrics NaN there,
            left out of the intervals).
    """

    rates: NDArray[np.float64]
    estimates: dict[str, dict[str, float]]
    samples: dict[str, NDArray[np.float64]]
    pgr_estimates: dict[str, NDArray[np.float64]]
    pgr_samples: dict[str, NDArray[np.float64]]
    n_prompts: int
    n_boot: int
    seed: int
    confidence: float
    n_degenerate: int

    @property
    def methods(self) -> list[str]:
        """Method names in the order given (analytic ``random`` last if included)."""
        return list(self.estimates)

    def _method(self, method: str) -> None:
        if method not in self.estimates:
            raise InvalidRequest(f"unknown method {method!r}; known: {self.methods}")

    def _metric(self, metric: str) -> int:
        if metric not in METRIC_NAMES:
            raise InvalidRequest(f"unknown metric {metric!r}; known: {list(METRIC_NAMES)}")
        return METRIC_NAMES.index(metric)

    def _percentiles(self, values: np.ndarray) -> tuple[float, float]:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return math.nan, math.nan
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        low, high = np.percentile(finite, [tail, 100.0 - tail])
        return float(low), float(high)

    def interval(self, method: str, metric: str) -> Interval:
        """The point estimate of ``metric`` for ``method`` with its percentile interval."""
        self._method(method)
        i = self._metric(metric)
        low, high = self._percentiles(self.samples[method][:, i])
        return Interval(self.estimates[method][metric], low, high)

    def difference(self, method: str, other: str, metric: str) -> Interval:
        """``method`` minus ``other`` on ``metric``, its interval from the paired resamples."""
        self._method(method)
        self._method(other)
        i = self._metric(metric)
        low, high = self._percentiles(self.samples[method][:, i] - self.samples[other][:, i])
        return Interval(self.estimates[method][metric] - self.estimates[other][metric], low, high)

    def intervals(self) -> dict[str, dict[str, Interval]]:
        """method -> metric -> `Interval`, for every method and metric."""
        return {m: {k: self.interval(m, k) for k in METRIC_NAMES} for m in self.methods}

    def pgr_band(self, method: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Pointwise percentile band (low, high) of the method's PGR curve, each (R,)."""
        self._method(method)
        curves = self.pgr_samples[method]  # (B, R)
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        if not np.isfinite(curves).any():
            nan = np.full(self.rates.size, np.nan)
            return nan, nan.copy()
        low, high = np.nanpercentile(curves, [tail, 100.0 - tail], axis=0)
        return low, high

    def to_dict(self, reference: str | None = None) -> dict[str, Any]:
        """JSON-ready summary: settings, every interval, and differences from ``reference``."""
        out: dict[str, Any] = {
            "n_prompts": self.n_prompts,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_degenerate": self.n_degenerate,
            "metrics": {
                m: {k: iv.to_dict() for k, iv in per.items()} for m, per in self.intervals().items()
            },
        }
        if reference is not None:
            self._method(reference)
            out["reference"] = reference
            out["difference_from_reference"] = {
                m: {k: self.difference(m, reference, k).to_dict() for k in METRIC_NAMES}
                for m in self.methods
                if m != reference
            }
        return out


def _resample_weights(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n): copies of each prompt in each resample of ``n`` prompts with replacement."""
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def bootstrap_metrics(
    quality_edge: ArrayLike,
    quality_cloud: ArrayLike,
    method_scores: Mapping[str, ArrayLike],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    rates: ArrayLike | None = None,
    include_random: bool = True,
) -> BootstrapResult:
    """Paired percentile bootstrap over test prompts of every method's PGR metrics.

    Each resample draws N prompts with replacement (a seeded ``np.random.Generator``) and scores
    every method on that same draw, so `BootstrapResult.difference` is a paired interval.

    Args:
        quality_edge: (N,) quality of the edge on each prompt (mean over seeds).
        quality_cloud: (N,) quality of the cloud on each prompt.
        method_scores: method name -> (N,) routing scores, higher = send to the cloud.
        n_boot: Resamples, B.
        seed: Seed of the Generator; the same seed draws the same resamples.
        confidence: Interval coverage in (0, 1).
        rates: Cloud-rate grid, strictly ascending from 0 to 1; default `default_rates()`.
        include_random: Add ``"random"``, the analytic expectation of random routing (PGR(r) = r
            on every resample), so that differences from random have intervals too.

    Returns:
        The estimates and resamples of every method.
    """
    qe, qc, _ = _two_choice_inputs(quality_edge, quality_cloud, None)
    r = _rates(rates)
    if not method_scores:
        raise InvalidRequest("method_scores is empty; give at least one method")
    if include_random and "random" in method_scores:
        raise InvalidRequest("method name 'random' is reserved when include_random is set")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise InvalidRequest(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidRequest(f"confidence must lie in (0, 1), got {confidence!r}")
    scores = {}
    for name, s in method_scores.items():
        arr = _array(f"scores of {name!r}", s, 1)
        _expect_shape(f"scores of {name!r}", arr, qe.shape, "one per prompt")
        scores[name] = arr
    n = qe.size
    gap = qc - qe
    rankings = {name: _rank(s) for name, s in scores.items()}
    samples = {name: np.empty((n_boot, len(METRIC_NAMES))) for name in scores}
    pgr_samples = {name: np.empty((n_boot, r.size)) for name in scores}
    totals = np.empty(n_boot)
    rng = np.random.default_rng(seed)
    for start in range(0, n_boot, _BOOTSTRAP_CHUNK):
        stop = min(start + _BOOTSTRAP_CHUNK, n_boot)
        weights = _resample_weights(rng, n, stop - start)  # (b, N), shared by every method
        totals[start:stop] = weights @ gap
        for name, ranking in rankings.items():
            _, pgr, metrics = _curve_metrics(*_knots(gap, ranking, weights), r)
            samples[name][start:stop] = metrics
            pgr_samples[name][start:stop] = pgr
    estimates, pgr_estimates = {}, {}
    for name, s in scores.items():
        curve = deferral_curve(qe, qc, s, r)
        estimates[name] = curve.metrics
        pgr_estimates[name] = curve.pgr
    if include_random:
        ok = totals > 0
        random_row = _random_metrics(r)
        samples["random"] = np.where(ok[:, None], random_row[None, :], np.nan)
        pgr_samples["random"] = np.where(ok[:, None], r[None, :], np.nan)
        curve = random_deferral_curve(qe, qc, r)
        estimates["random"] = curve.metrics
        pgr_estimates["random"] = curve.pgr
    n_degenerate = int(np.sum(totals <= 0))
    if n_degenerate:
        log.warning(
            "%d of %d resamples show no cloud gain; their metrics are left out",
            n_degenerate,
            n_boot,
        )
    return BootstrapResult(
        rates=r,
        estimates=estimates,
        samples=samples,
        pgr_estimates=pgr_estimates,
        pgr_samples=pgr_samples,
        n_prompts=n,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        n_degenerate=n_degenerate,
    )


# ----------------------------------------------------------------------------- M choices


@dataclass(frozen=True)
class CostQualityCurve:
    """Mean quality against mean cost as lambda sweeps argmax_m u_m - lambda c_m.

    Points are ordered by mean cost, ascending (lambda descending); each distinct routing appears
    once. Between points, quality interpolates linearly (a mix of the two adjacent routings).

    Attributes:
        lambdas: (L,) the lambda of each point.
        mean_cost: (L,) mean cost of the routing.
        mean_quality: (L,) mean quality of the routing.
        choice_share: (L, M) share of prompts on each choice.
        costs: (M,) the choices' costs, strictly ascending.
        fixed_quality: (M,) mean quality of each choice used for every prompt.
    """

    lambdas: NDArray[np.float64]
    mean_cost: NDArray[np.float64]
    mean_quality: NDArray[np.float64]
    choice_share: NDArray[np.float64]
    costs: NDArray[np.float64]
    fixed_quality: NDArray[np.float64]

    def quality_at_cost(self, cost: float) -> float:
        """Routed mean quality at mean ``cost`` (interpolated); NaN outside the curve's range."""
        slack = 1e-9 * max(abs(float(self.mean_cost[0])), abs(float(self.mean_cost[-1])), 1.0)
        # A mean of N equal costs can differ from that cost in the last bit.
        if not self.mean_cost[0] - slack <= cost <= self.mean_cost[-1] + slack:
            return math.nan
        return float(np.interp(cost, self.mean_cost, self.mean_quality))

    def cost_to_reach(self, quality: float) -> float:
        """Least mean cost at which the routed curve reaches ``quality``; NaN if it never does."""
        hit = np.flatnonzero(self.mean_quality >= quality)
        if hit.size == 0:
            return math.nan
        j = int(hit[0])
        if j == 0:
            return float(self.mean_cost[0])
        q0, q1 = self.mean_quality[j - 1], self.mean_quality[j]
        c0, c1 = self.mean_cost[j - 1], self.mean_cost[j]
        return float(c0 + (quality - q0) / (q1 - q0) * (c1 - c0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "lambdas": self.lambdas.tolist(),
            "mean_cost": self.mean_cost.tolist(),
            "mean_quality": self.mean_quality.tolist(),
            "choice_share": self.choice_share.tolist(),
            "costs": self.costs.tolist(),
            "fixed_quality": self.fixed_quality.tolist(),
        }


def _ascending_costs(costs: ArrayLike, m: int) -> np.ndarray:
    c = _array("costs", costs, 1)
    _expect_shape("costs", c, (m,), "one per choice")
    if np.any(np.diff(c) <= 0):
        raise InvalidRequest(
            f"costs must be strictly ascending (cheapest choice first), got {c.tolist()}"
        )
    return c


def _default_lambdas(u: np.ndarray, c: np.ndarray, max_points: int) -> np.ndarray:
    """Every lambda where some prompt's choice changes (or quantiles of them), plus both ends."""
    i, j = np.triu_indices(c.size, k=1)
    breaks = np.unique((u[:, j] - u[:, i]) / (c[j] - c[i]))  # (<= N M (M-1) / 2,)
    if breaks.size > max_points:
        breaks = np.quantile(breaks, np.linspace(0.0, 1.0, max_points))
    # Beyond every break each prompt takes the cheapest (above) or dearest (below) choice.
    return np.concatenate([[breaks[-1] + 1.0], breaks[::-1], [breaks[0] - 1.0]])


def cost_quality_curve(
    prompt_quality: ArrayLike,
    utilities: ArrayLike,
    costs: ArrayLike,
    lambdas: ArrayLike | None = None,
    max_points: int = 512,
) -> CostQualityCurve:
    """The M-choice deferral curve of one method: mean quality vs mean cost as lambda sweeps.

    Each prompt takes argmax_m u_m - lambda c_m (ties to the cheaper choice). By default lambda
    runs over every value where a prompt's choice changes (at most ``max_points`` quantiles of
    them) and beyond both ends, so the curve starts at the cheapest choice on every prompt and
    ends at the dearest; the negative lambdas that reach the dearest stand for a budget that must
    be spent.

    Args:
        prompt_quality: (N, M) quality of each choice on each prompt (mean over seeds).
        utilities: (N, M) the method's predicted utility of each choice.
        costs: (M,) cost of each choice, strictly ascending.
        lambdas: Lambdas to evaluate instead of the default sweep.
        max_points: Most lambdas in the default sweep (plus its two ends).

    Returns:
        The curve, with the fixed choices' costs and qualities for comparison.
    """
    q = _array("prompt_quality", prompt_quality, 2)
    u = _array("utilities", utilities, 2)
    _expect_shape("utilities", u, q.shape, "the shape of prompt_quality")
    c = _ascending_costs(costs, q.shape[1])
    if q.shape[1] < 2:
        raise InvalidRequest(f"prompt_quality has {q.shape[1]} choice(s), a curve needs at least 2")
    if lambdas is None:
        lam = _default_lambdas(u, c, max_points)
    else:
        lam = np.sort(_array("lambdas", lambdas, 1))[::-1]
    n, m = q.shape
    choice = np.empty((lam.size, n), dtype=np.int64)
    for start in range(0, lam.size, 64):
        stop = start + 64
        net = u[None, :, :] - lam[start:stop, None, None] * c[None, None, :]  # (l, N, M)
        choice[start:stop] = np.argmax(net, axis=2)  # first maximum = the cheaper choice
    mean_cost = c[choice].mean(axis=1)  # (L,)
    mean_quality = np.take_along_axis(q, choice.T, axis=1).mean(axis=0)  # (L,)
    share = np.stack([np.bincount(row, minlength=m) for row in choice]) / n  # (L, M)
    # A prompt's chosen cost never rises with lambda, so equal mean cost means equal routing.
    order = np.argsort(mean_cost, kind="stable")
    keep = order[np.append(True, np.diff(mean_cost[order]) > 0)]
    return CostQualityCurve(
        lambdas=lam[keep],
        mean_cost=mean_cost[keep],
        mean_quality=mean_quality[keep],
        choice_share=share[keep],
        costs=c,
        fixed_quality=q.mean(axis=0),
    )


@dataclass(frozen=True)
class FixedChoiceComparison:
    """The routed curve against one choice used for every prompt.

    Attributes:
        choice: Index of the choice.
        cost: Its cost.
        quality: Its mean quality.
        routed_quality: The routed curve's quality at the same mean cost (interpolated).
        margin: ``routed_quality - quality``; 0 by construction at the cheapest and dearest
            choice, where the default sweep ends.
        above: ``margin > tolerance``.
        cost_to_match: Least mean cost at which the routed curve reaches ``quality``.
        cost_saved: ``1 - cost_to_match / cost``: the share of the choice's cost that routing
            saves at equal quality.
    """

    choice: int
    cost: float
    quality: float
    routed_quality: float
    margin: float
    above: bool
    cost_to_match: float
    cost_saved: float


def compare_to_fixed(
    curve: CostQualityCurve, tolerance: float = 1e-9
) -> list[FixedChoiceComparison]:
    """Whether the routed curve lies above each fixed choice at that choice's cost.

    Args:
        curve: A `cost_quality_curve`.
        tolerance: Margin the routed quality must exceed to count as above; the default only
            absorbs rounding where the curve ends on a fixed choice.

    Returns:
        One comparison per choice, cheapest first.
    """
    out = []
    for m, (cost, quality) in enumerate(zip(curve.costs.tolist(), curve.fixed_quality.tolist())):
        routed = curve.quality_at_cost(cost)
        margin = routed - quality
        to_match = curve.cost_to_reach(quality)
        out.append(
            FixedChoiceComparison(
                choice=m,
                cost=cost,
                quality=quality,
                routed_quality=routed,
                margin=margin,
                above=bool(margin > tolerance),
                cost_to_match=to_match,
                cost_saved=1.0 - to_match / cost if cost > 0 else math.nan,
            )
        )
    return out


# ----------------------------------------------------------------------------- noise ceiling


def _halves(name: str, quality: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt means over the first S//2 seeds and the next S//2 (an odd last seed unused)."""
    s = quality.shape[1]
    if s < 2:
        raise InvalidRequest(f"{name} has {s} seed(s) per prompt; a split half needs at least 2")
    h = s // 2
    return quality[:, :h].mean(axis=1), quality[:, h : 2 * h].mean(axis=1)


def _seed_pair(quality_edge: ArrayLike, quality_cloud: ArrayLike) -> tuple[np.ndarray, ...]:
    qe, qc = _pair(quality_edge, quality_cloud, 2)
    e1, e2 = _halves("quality_edge", qe)
    c1, c2 = _halves("quality_cloud", qc)
    return qe, qc, e1, e2, c1, c2


def split_half_oracle(
    quality_edge: ArrayLike, quality_cloud: ArrayLike, rates: ArrayLike | None = None
) -> DeferralCurve:
    """The noise ceiling: rank by the gap over the first half of seeds, score on the second half.

    A predictor that knew each prompt's expected gap exactly could do better only by as much as
    the first half's seed noise costs; no estimator trained on images can expect to beat it by
    much. For an interval, pass the second half's qualities and the first half's gap to
    `bootstrap_metrics`.

    Args:
        quality_edge: (N, S) quality of each edge image, S >= 2.
        quality_cloud: (N, S) quality of each cloud image.
        rates: Cloud-rate grid, strictly ascending from 0 to 1; default `default_rates()`.

    Returns:
        Its deferral curve on the second half of the seeds.
    """
    _, _, e1, e2, c1, c2 = _seed_pair(quality_edge, quality_cloud)
    return deferral_curve(e2, c2, c1 - e1, rates)


@dataclass(frozen=True)
class SplitHalfReliability:
    """How much of the per-prompt gap (cloud - edge) is the prompt's and how much seed noise.

    Attributes:
        correlation: Pearson correlation across prompts of the two halves' gaps.
        spearman_brown: Reliability of the gap over all (both halves') seeds, 2 r / (1 + r),
            floored at 0: a negative split-half correlation means no measurable prompt-level
            signal (the formula would give values below -1 there).
        prompt_gap_std: Std of the prompt-level gap, sqrt(max(cov(half 1, half 2), 0)): the
            halves share the prompt's expected gap and have independent seed noise.
        n_prompts: Prompts it was measured on.
    """

    correlation: float
    spearman_brown: float
    prompt_gap_std: float
    n_prompts: int


def split_half_reliability(
    quality_edge: ArrayLike, quality_cloud: ArrayLike
) -> SplitHalfReliability:
    """Split-half reliability of the per-prompt gap and the std of its prompt-level part.

    Args:
        quality_edge: (N, S) quality of each edge image, S >= 2.
        quality_cloud: (N, S) quality of each cloud image.

    Returns:
        The reliability; correlation terms are NaN with fewer than 3 prompts or a constant half.
    """
    _, _, e1, e2, c1, c2 = _seed_pair(quality_edge, quality_cloud)
    return _reliability(c1 - e1, c2 - e2)


def _reliability(g1: np.ndarray, g2: np.ndarray) -> SplitHalfReliability:
    n = g1.size
    if n < 2:
        return SplitHalfReliability(math.nan, math.nan, math.nan, n)
    cov = float(np.cov(g1, g2)[0, 1])  # ddof = 1
    sd1, sd2 = float(g1.std(ddof=1)), float(g2.std(ddof=1))
    corr = cov / (sd1 * sd2) if n >= 3 and sd1 > 0 and sd2 > 0 else math.nan
    corr = min(max(corr, -1.0), 1.0) if not math.isnan(corr) else corr
    brown = max(0.0, 2 * corr / (1 + corr)) if not math.isnan(corr) else math.nan
    return SplitHalfReliability(corr, brown, math.sqrt(max(cov, 0.0)), n)


def _gap_stats(qe: np.ndarray, qc: np.ndarray, tolerance: float) -> dict[str, float | int]:
    e1, e2 = _halves("quality_edge", qe)
    c1, c2 = _halves("quality_cloud", qc)
    rel = _reliability(c1 - e1, c2 - e2)
    expected_gap = qc.mean(axis=1) - qe.mean(axis=1)  # (N,)
    image_gap = (qc - qe).ravel()  # (N S,) seeds paired by index
    oracle = deferral_curve(e2, c2, c1 - e1)
    return {
        "n_prompts": int(qe.shape[0]),
        "n_seeds": int(qe.shape[1]),
        "quality_edge": float(qe.mean()),
        "quality_cloud": float(qc.mean()),
        "mean_gap": float(expected_gap.mean()),
        "split_half_correlation": rel.correlation,
        "split_half_reliability": rel.spearman_brown,
        "prompt_gap_std": rel.prompt_gap_std,
        "image_gap_std": float(image_gap.std(ddof=1)) if image_gap.size > 1 else math.nan,
        "oracle_pgr50": oracle.metrics["pgr@50"],
        "share_edge_within": float(np.mean(expected_gap <= tolerance)),
    }


def gap_structure(
    quality_edge: ArrayLike,
    quality_cloud: ArrayLike,
    levels: ArrayLike | None = None,
    tolerance: float = 0.02,
) -> dict[str, Any]:
    """How the cloud's gain over the edge is spread over prompts, overall and per level.

    For issue 21's goals: per group, ``mean_gap`` (cloud - edge, over prompts and seeds),
    ``split_half_correlation`` and ``split_half_reliability`` (Spearman-Brown) of the per-prompt
    gap, ``prompt_gap_std`` (from the covariance of the halves), ``image_gap_std`` (one image
    pair's gap, seeds paired by index), ``oracle_pgr50`` (split-half oracle's PGR at 50%; NaN where
    the second half shows no gain) and ``share_edge_within``: the share of prompts where the edge's
    expected quality is at least the cloud's minus ``tolerance`` (an edge better than the cloud
    counts). That share is measured on S-seed means and so is blurred by their seed noise.

    Args:
        quality_edge: (N, S) quality of each edge image, S >= 2.
        quality_cloud: (N, S) quality of each cloud image, seed s paired with the edge's seed s.
        levels: (N,) complexity level of each prompt (strings), or None for the overall figures.
        tolerance: Quality difference within which the edge counts as matching the cloud.

    Returns:
        ``{"all": stats, "by_level": {level: stats}}``, levels in order of first appearance.
    """
    qe, qc = _pair(quality_edge, quality_cloud, 2)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise InvalidRequest(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    out: dict[str, Any] = {"all": _gap_stats(qe, qc, tolerance), "by_level": {}}
    if levels is None:
        return out
    lv = np.asarray(levels).astype(str)
    _expect_shape("levels", lv, (qe.shape[0],), "one per prompt")
    for level in dict.fromkeys(lv.tolist()):
        mask = lv == level
        out["by_level"][level] = _gap_stats(qe[mask], qc[mask], tolerance)
    return out


# ----------------------------------------------------------------------------- writers


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays converted, NaN and inf as null."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON; numpy values become plain, NaN becomes null.

    Objects with a ``to_dict()`` (curves, `BootstrapResult`, `Interval`) are written through it.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return out


def markdown_table(result: BootstrapResult, reference: str | None = None, decimals: int = 2) -> str:
    """Methods x metrics as a Markdown table, each cell ``"0.71 [0.66, 0.75]"``.

    With ``reference``, a second table gives every other method's paired difference from it.
    """
    header = "| method | " + " | ".join(METRIC_LABELS[k] for k in METRIC_NAMES) + " |"
    rule = "|---|" + "---|" * len(METRIC_NAMES)

    def row(name: str, cells: Sequence[Interval]) -> str:
        return f"| {name} | " + " | ".join(format_interval(c, decimals) for c in cells) + " |"

    lines = [header, rule]
    lines += [row(m, [result.interval(m, k) for k in METRIC_NAMES]) for m in result.methods]
    if reference is not None:
        lines += ["", f"Paired difference from {reference}:", "", header, rule]
        lines += [
            row(m, [result.difference(m, reference, k) for k in METRIC_NAMES])
            for m in result.methods
            if m != reference
        ]
    pct = round(result.confidence * 100)
    lines += [
        "",
        f"{pct}% paired percentile bootstrap intervals over {result.n_prompts} test prompts, "
        f"B = {result.n_boot}, seed {result.seed}.",
    ]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: str | Path,
    result: BootstrapResult,
    reference: str | None = None,
    title: str | None = None,
) -> Path:
    """Write `markdown_table` (under a ``# title`` if given) to ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown_table(result, reference)
    out.write_text(f"# {title}\n\n{text}" if title else text)
    return out


# ----------------------------------------------------------------------------- plots


def plot_pgr_curves(
    curves: Mapping[str, DeferralCurve],
    path: str | Path,
    bootstrap: BootstrapResult | None = None,
    title: str | None = None,
) -> Path:
    """PGR against cloud rate for several methods, the random diagonal, and bootstrap bands.

    Args:
        curves: method name -> its `deferral_curve`.
        path: PNG to write.
        bootstrap: Where it holds a method of the same name, its pointwise band is shaded.
        title: Figure title.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg for PNG

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    for name, curve in curves.items():
        (line,) = ax.plot(curve.rates, curve.pgr, label=name)
        if bootstrap is not None and name in bootstrap.estimates:
            low, high = bootstrap.pgr_band(name)
            ax.fill_between(bootstrap.rates, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("cloud rate")
    ax.set_ylabel("PGR (share of the cloud's gain recovered)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def plot_cost_quality(
    curves: Mapping[str, CostQualityCurve],
    path: str | Path,
    choice_names: Sequence[str] | None = None,
    title: str | None = None,
    cost_label: str = "mean cost",
) -> Path:
    """Mean quality against mean cost for M-choice methods, with the fixed choices as points.

    Args:
        curves: method name -> its `cost_quality_curve` (all on the same prompts and choices).
        path: PNG to write.
        choice_names: Labels of the fixed choices; default ``choice 0``, ``choice 1``, ...
        title: Figure title.
        cost_label: x-axis label, e.g. ``"GFLOPs per image"``.
    """
    from matplotlib.figure import Figure

    if not curves:
        raise InvalidRequest("curves is empty; give at least one method")
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve.mean_cost, curve.mean_quality, label=name)
    first = next(iter(curves.values()))
    names = list(choice_names) if choice_names else [f"choice {m}" for m in range(first.costs.size)]
    if len(names) != first.costs.size:
        raise InvalidRequest(f"choice_names has {len(names)} names for {first.costs.size} choices")
    ax.scatter(first.costs, first.fixed_quality, color="black", zorder=3, label="fixed choices")
    for name, cost, quality in zip(names, first.costs, first.fixed_quality):
        ax.annotate(name, (cost, quality), textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mean quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out
