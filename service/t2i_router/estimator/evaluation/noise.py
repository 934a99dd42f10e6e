"""The noise ceiling: split-half oracle and reliability over seeds, and the edge-cloud gap."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.evaluation.curves import DeferralCurve, deferral_curve
from t2i_router.estimator.evaluation.inputs import _expect_shape, _pair

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
