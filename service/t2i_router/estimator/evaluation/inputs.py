"""Inputs of the evaluation: validated arrays, the rate grid, quality per choice and seed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from t2i_router.errors import InvalidRequest

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
