"""Where lambda meets the budget: the policy's own outcome as a function of lambda.

The budget controller's first warm start took a quantile of the two-engine routing score (cloud
default minus edge default). With more than two choices that misses: the argmax over M choices
often picks a cheaper cloud choice (``cloud_large@10``) the score does not see, so the share at
the quantile is not the target. Here lambda* is found on the policy's outcome itself:

- `OutcomeWindow` keeps the utilities u (N, M) of recent AUTO decisions and answers, for any
  lambda, the cloud share and the mean cost the policy would produce on them
  (`Policy.outcome`). Both are non-increasing in lambda (the chosen cost of argmax u - lambda c
  never grows with lambda).
- `solve_multiplier` bisects for the smallest lambda whose outcome is at most the target.
- `calibrate_budget` adds the slope of the share around lambda*, which sets the step size eta
  for a wanted recovery time (``eta = 1 / (tau * slope)``, as `budget.eta_for_recovery`).

Pure: numpy only, no server, no lock of its own (the router calls it from one event loop).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from t2i_router.errors import InvalidRequest

__all__ = ["BudgetCalibration", "OutcomeWindow", "calibrate_budget", "solve_multiplier"]

#: Bisection steps: lambda_max / 2**40 is far below any step the controller takes.
_BISECTIONS = 40


def solve_multiplier(outcome: Callable[[float], float], target: float, lambda_max: float) -> float:
    """The smallest lambda in [0, lambda_max] with ``outcome(lambda) <= target``.

    Args:
        outcome: Non-increasing function of lambda (cloud share or mean cost of the policy).
        target: The share or cost to meet.
        lambda_max: Upper end of the search (returned when even it overshoots the target).

    Returns:
        lambda*, to within lambda_max / 2**40.
    """
    if not lambda_max > 0:
        raise InvalidRequest(f"lambda_max is {lambda_max}, must be > 0")
    lo, hi = 0.0, float(lambda_max)
    if outcome(lo) <= target:
        return lo
    if outcome(hi) > target:
        return hi
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if outcome(mid) > target else (lo, mid)
    return hi


@dataclass(frozen=True)
class BudgetCalibration:
    """Where the policy meets the target on sample prompts, and the step size for it.

    Attributes:
        multiplier: lambda* at which the policy's cloud share on the sample is the target.
        slope: -d(cloud share)/d(lambda) around lambda* (share +-``band`` apart).
        eta: ``1 / (tau * slope)`` capped at ``max_eta``.
    """

    multiplier: float
    slope: float
    eta: float


def calibrate_budget(
    cloud_share: Callable[[float], float],
    target_rate: float,
    tau_decisions: float,
    lambda_max: float,
    max_eta: float,
    band: float = 0.1,
) -> BudgetCalibration:
    """lambda* and eta from the policy's cloud share as a function of lambda (non-increasing).

    Bisection for lambda* and for the lambdas where the share is target +- ``band``, whose
    slope sets eta for a recovery time constant of ``tau_decisions`` counted decisions.
    """
    if not tau_decisions > 0:
        raise InvalidRequest(f"tau_decisions is {tau_decisions}, must be > 0")
    star = solve_multiplier(cloud_share, target_rate, lambda_max)
    upper = solve_multiplier(cloud_share, max(target_rate - band, 0.0), lambda_max)
    lower = solve_multiplier(cloud_share, min(target_rate + band, 1.0), lambda_max)
    slope = 2 * band / max(upper - lower, 1e-9)
    return BudgetCalibration(star, slope, min(1.0 / (tau_decisions * slope), max_eta))


class OutcomeWindow:
    """Utilities of the last ``size`` AUTO decisions, and the outcome any lambda gives on them.

    Args:
        outcome: ``(u, lambda) -> (cloud share, mean cost)`` (`Policy.outcome`).
        size: How many decisions are kept (>= 1).
    """

    def __init__(
        self, outcome: Callable[[np.ndarray, float], tuple[float, float]], size: int
    ) -> None:
        if size < 1:
            raise InvalidRequest(f"window size is {size}, must be >= 1")
        self._outcome = outcome
        self._rows: deque[np.ndarray] = deque(maxlen=size)
        self._stacked: np.ndarray | None = None  # `rows()`, until the next `add`

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, utilities: np.ndarray | Sequence[Sequence[float]]) -> None:
        """Adds the utility rows (N, M) of decided prompts; rows with a NaN are skipped."""
        u = np.asarray(utilities, dtype=np.float64)
        if u.ndim != 2:
            raise InvalidRequest(f"utilities have shape {u.shape}, expected (N, M)")
        self._rows.extend(u[np.isfinite(u).all(axis=1)])
        self._stacked = None

    def rows(self) -> np.ndarray:
        """The utilities kept, oldest first, (N, M); stacked once per `add` (a bisection
        evaluates `at` ~40 times on the same rows)."""
        if not self._rows:
            raise InvalidRequest("the outcome window is empty: no decisions recorded yet")
        if self._stacked is None:
            self._stacked = np.stack(self._rows)
        return self._stacked

    def at(self, multiplier: float, last: int | None = None) -> tuple[float, float]:
        """(cloud share, mean cost) the policy would give at ``multiplier`` on the window, or
        on its latest ``last`` rows (the budget's tracking); raises InvalidRequest while the
        window holds fewer."""
        rows = self.rows()
        if last is None:
            return self._outcome(rows, multiplier)
        if len(rows) < last:
            raise InvalidRequest(
                f"the outcome window holds {len(rows)} decisions, fewer than {last}"
            )
        return self._outcome(rows[len(rows) - last :], multiplier)
