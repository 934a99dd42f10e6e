"""Paired bootstrap intervals of the routing metrics, and their differences between methods."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.evaluation.curves import (
    _curve_metrics,
    _knots,
    _random_metrics,
    _rank,
    _two_choice_inputs,
    deferral_curve,
    random_deferral_curve,
)
from t2i_router.estimator.evaluation.inputs import (
    _BOOTSTRAP_CHUNK,
    METRIC_NAMES,
    _array,
    _expect_shape,
    _rates,
)

log = logging.getLogger(__name__)

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
