"""Deferral curves (two choices: PGR, APGR, calls saved) and cost-quality curves (M choices)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.evaluation.inputs import (
    _HALF_GAIN,
    _PGR_RATES,
    METRIC_NAMES,
    _array,
    _expect_shape,
    _pair,
    _rates,
    _trapezoid,
)

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
