# Over 400 lines on purpose: ~100 are the guarantee's derivation; persistence needs the lock.
"""Online budget control: move the cost multiplier lambda so that decisions hold a target.

The policy sends a prompt to the choice maximising ``u_m - lambda * c_m / c_scale``; the
BudgetController owns lambda and moves it by projected dual subgradient steps (budget pacing;
Balseiro, Lu & Mirrokni 2020) after every counted decision (or batch of them):

    lambda <- clip(lambda + eta * (c(x_t) - rho) / c_scale, 0, lambda_max)

- rate mode: c(x_t) = 1 if the decision went to the cloud else 0, rho = the target cloud rate,
  c_scale = 1;
- cost mode: c(x_t) = the chosen choice's cost, rho = the target average cost, c_scale = the
  configured cost scale (use the policy's, so lambda means the same in both).

Spending above target raises lambda (the cloud gets dearer), below target lowers it. With
per-batch updates the step uses the batch's sum of ``c - rho`` (every decision of a batch was
made with the same lambda), which keeps the identity below exact.

Guarantee. While the clip is inactive, summing the steps telescopes:

    sum_{t<=T} (c_t - rho) / c_scale = (lambda_{T+1} - lambda_1) / eta

so, as lambda stays in [0, lambda_max], the running rate error after T counted decisions is at
most (lambda_max + eta) / (eta * T) on *any* traffic (the eta covers one step past a bound). The
upper clip never acts when every score is below lambda_max - eta (at lambda above every score no
prompt goes to the cloud, so lambda only falls); the lower clip only acts when too few prompts
gain from the cloud, and then it only makes the rate fall *below* target. `clipped_updates`
counts clip events so the identity can be checked.

Choosing eta. Near the target threshold lambda* the expected step is
``eta * (P(score > lambda) - rho) ~ -eta * f(lambda*) * (lambda - lambda*)`` where f is the
density of the routing score (in multiplier units, see `policy`) at lambda*. Deviations decay
as exp(-t / tau) with

    tau ~ 1 / (eta * f(lambda*))        (in counted decisions)

so after a shift of the prompt mix lambda is 90% recovered after about 2.3 tau. Pick tau (the
recovery time wanted), estimate f from recent scores (`score_density`) and set
``eta = eta_for_recovery(tau, f)``. Smaller eta: smoother lambda, slower recovery; the running
error's noise grows like sqrt(tau) / T and the warm-start error like tau / T.

Warm start. Started at lambda = 0 the first decisions would all go to the cloud. `warm_start`
sets lambda where the first decisions already meet the target. With an ``outcome_model`` (the
router sets one: lambda -> (cloud share, mean cost) of its policy on recent traffic, see
`calibration`) lambda* is solved on the policy's outcome itself, which is right for any number of
choices. Without one it falls back to the (1 - share) quantile of recent two-engine scores
(share = the target rate, or in cost mode the cloud share that meets the target cost between the
edge and cloud costs), exact for two choices only.

Forced and fallback decisions (`counted=False`) are tallied but move neither lambda nor the
running rate.

Persistence. With a ``state_dir`` the state (target, lambda, counts, since) is written as JSON
with a version when it changed, at most every ``persist_interval_s`` (by `observe`, and by
`flush_due`, which a server calls periodically so that the last decisions before a quiet spell
are written too), and on every `set_target` / `flush`:
write a temp file, fsync, ``os.replace`` (atomic), so a crash leaves the old or the new state,
never half of one. It is restored on start (a restored state wins over the config's target and
lambda: SetBudget is the operator's live control). An unwritable state dir is logged once as a
warning and the controller keeps serving from memory.

Thread safety: every public method takes one lock; the critical sections are short (no I/O), so
calling them from an asyncio loop is fine. File writes happen outside the lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.router.calibration import solve_multiplier

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "BudgetConfig",
    "BudgetController",
    "BudgetMode",
    "BudgetSnapshot",
    "UpdateMode",
    "eta_for_recovery",
    "recovery_time",
    "score_density",
]

log = logging.getLogger(__name__)

BudgetMode = Literal["rate", "cost"]
UpdateMode = Literal["request", "batch"]

STATE_FILE = "budget_state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class BudgetConfig:
    """Budget target and controller settings.

    Attributes:
        mode: "rate" (target share of cloud decisions) or "cost" (target average cost).
        target_rate: rho in rate mode, in [0, 1].
        target_cost: rho in cost mode, in the choices' cost units; >= 0.
        eta: Step size (> 0); see the module docstring for choosing it from a recovery time.
        lambda_max: Upper clip of lambda (> 0); keep it above the largest score plus eta.
        lambda_init: lambda before any warm start or restored state, in [0, lambda_max].
        cost_scale: c_scale of the cost-mode update (> 0); rate mode always uses 1.
        edge_cost: Cost of the edge default (cost mode: turns the target cost into a cloud share
            for the warm start).
        cloud_cost: Cost of the cloud default (> edge_cost), as above.
        update: "request" (one step per counted decision) or "batch" (one step per `observe`).
        score_window: How many recent scores are kept for the warm start.
        state_dir: Directory of the persisted state; None keeps it in memory only.
        persist_interval_s: Least time between two writes of the state by `observe`.
    """

    mode: BudgetMode = "rate"
    target_rate: float = 0.3
    target_cost: float = 0.0
    eta: float = 5e-4
    lambda_max: float = 1.0
    lambda_init: float = 0.0
    cost_scale: float = 1.0
    edge_cost: float = 0.0
    cloud_cost: float = 1.0
    update: UpdateMode = "request"
    score_window: int = 2000
    state_dir: Path | None = None
    persist_interval_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ("rate", "cost"):
            raise InvalidRequest(f"budget mode is {self.mode!r}, expected 'rate' or 'cost'")
        if self.update not in ("request", "batch"):
            raise InvalidRequest(f"update is {self.update!r}, expected 'request' or 'batch'")
        _check_targets(self.target_rate, self.target_cost, self.eta, self.lambda_max)
        if not 0 <= self.lambda_init <= self.lambda_max:
            raise InvalidRequest(f"lambda_init is {self.lambda_init}, must be in [0, lambda_max]")
        if not self.cost_scale > 0:
            raise InvalidRequest(f"cost_scale is {self.cost_scale}, must be > 0")
        if not self.cloud_cost > self.edge_cost:
            raise InvalidRequest(
                f"cloud_cost {self.cloud_cost} must exceed edge_cost {self.edge_cost}"
            )
        if self.score_window < 1:
            raise InvalidRequest(f"score_window is {self.score_window}, must be >= 1")
        if self.persist_interval_s < 0:
            raise InvalidRequest(f"persist_interval_s is {self.persist_interval_s}, must be >= 0")


def _check_targets(rate: float, cost: float, eta: float, lambda_max: float) -> None:
    if not 0 <= rate <= 1:
        raise InvalidRequest(f"target_rate is {rate}, must be in [0, 1]")
    if not (math.isfinite(cost) and cost >= 0):
        raise InvalidRequest(f"target_cost is {cost}, must be >= 0")
    if not (math.isfinite(eta) and eta > 0):
        raise InvalidRequest(f"eta is {eta}, must be > 0")
    if not (math.isfinite(lambda_max) and lambda_max > 0):
        raise InvalidRequest(f"lambda_max is {lambda_max}, must be > 0")


@dataclass(frozen=True)
class BudgetSnapshot:
    """The controller's state at one moment (what GetBudget reports).

    Attributes:
        mode: "rate" or "cost".
        target_rate: Target cloud share (rate mode).
        target_cost: Target average cost (cost mode).
        multiplier: lambda now.
        eta: Step size.
        lambda_max: Upper clip.
        cost_scale: c_scale of cost-mode updates.
        decisions: Counted decisions since `since_unix_s`.
        cloud_decisions: Counted decisions that went to the cloud.
        uncounted_decisions: Forced/fallback decisions (not counted).
        cost_sum: Sum of the counted decisions' costs.
        running_rate: cloud_decisions / decisions (0 before any).
        running_cost: cost_sum / decisions (0 before any).
        since_unix_s: When the counts started (wall clock, seconds since the epoch).
        updates: lambda updates since `since_unix_s`.
        clipped_updates: Updates where the clip changed the step.
        excess_sum: sum of (c_t - rho) / c_scale over the updates since `since_unix_s`.
        multiplier_at_since: lambda when the counts started (the identity's lambda_1).
        warm_started: Whether lambda was warm-started from scores.
        persisted: Whether the last write of the state succeeded (False without a state dir).
    """

    mode: BudgetMode
    target_rate: float
    target_cost: float
    multiplier: float
    eta: float
    lambda_max: float
    cost_scale: float
    decisions: int
    cloud_decisions: int
    uncounted_decisions: int
    cost_sum: float
    running_rate: float
    running_cost: float
    since_unix_s: float
    updates: int
    clipped_updates: int
    excess_sum: float
    multiplier_at_since: float
    warm_started: bool
    persisted: bool

    @property
    def error_bound(self) -> float:
        """(lambda_max + eta) / (eta * T): the bound on |running rate - target| (inf at T = 0)."""
        if self.decisions == 0:
            return math.inf
        return (self.lambda_max + self.eta) / (self.eta * self.decisions)


# The persisted fields (besides "version"); restored only when all are present and valid.
_PERSISTED = (
    "mode",
    "target_rate",
    "target_cost",
    "eta",
    "lambda_max",
    "multiplier",
    "decisions",
    "cloud_decisions",
    "uncounted_decisions",
    "cost_sum",
    "since_unix_s",
    "updates",
    "clipped_updates",
    "excess_sum",
    "multiplier_at_since",
    "warm_started",
)


class BudgetController:
    """Holds a target cloud rate (or average cost) by moving lambda after each decision.

    Typical use by a servicer, per micro-batch:

        lam = controller.multiplier
        decisions = policy.decide(q, lam, targets)
        controller.record_scores(decisions.scores[~decisions.forced])
        controller.observe(decisions.cloud, decisions.costs, counted=~decisions.forced)

    Args:
        config: Target and settings.
        clock: Wall clock for `since_unix_s` (injectable for tests).
    """

    def __init__(self, config: BudgetConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._scores: deque[float] = deque(maxlen=config.score_window)
        #: lambda -> (cloud share, mean cost) on recent traffic; the warm start solves on it.
        self.outcome_model: Callable[[float], tuple[float, float]] | None = None
        self._mode: BudgetMode = config.mode
        self._target_rate = config.target_rate
        self._target_cost = config.target_cost
        self._eta = config.eta
        self._lambda_max = config.lambda_max
        self._multiplier = config.lambda_init
        self._warm_started = False
        self._reset_counts_locked()
        self._last_persist_s = -math.inf
        self._dirty = False  # changed since the last write
        self._persist_failed = False
        self._persisted = False
        self.restored = self._restore()

    # ----- reading

    @property
    def multiplier(self) -> float:
        """lambda to decide with now."""
        with self._lock:
            return self._multiplier

    @property
    def state_path(self) -> Path | None:
        """The persisted state's file, or None without a state dir."""
        if self.config.state_dir is None:
            return None
        return Path(self.config.state_dir) / STATE_FILE

    def snapshot(self) -> BudgetSnapshot:
        """The current state, consistent (taken under the lock)."""
        with self._lock:
            return self._snapshot_locked()

    # ----- deciding and learning

    def record_scores(self, scores: Sequence[float] | np.ndarray) -> None:
        """Adds routing scores (multiplier units) to the window the warm start reads."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        with self._lock:
            self._scores.extend(float(s) for s in values if math.isfinite(s))

    def warm_start(self, scores: Sequence[float] | np.ndarray | None = None) -> float:
        """Sets lambda where recent traffic meets the target (module docstring, Warm start).

        Solves on `outcome_model` when there is one and it has traffic; otherwise takes the
        (1 - share) quantile of the scores, so that share of them go to the cloud.

        Args:
            scores: Scores to use (also recorded); None uses the recent window.

        Returns:
            The new lambda (unchanged when there is nothing to start from).
        """
        if scores is not None:
            self.record_scores(scores)
        solved = self._solve_on_outcome()
        with self._lock:
            if solved is not None:
                new = min(max(solved, 0.0), self._lambda_max)
            elif not self._scores:
                log.warning("budget warm start skipped: no scores recorded yet")
                return self._multiplier
            else:
                share = self._cloud_share_locked()
                q = float(np.quantile(np.fromiter(self._scores, dtype=np.float64), 1.0 - share))
                new = min(max(q, 0.0), self._lambda_max)
            # the jump is not a step: shift lambda_1 with it so that the identity stays exact
            self._multiplier_at_since += new - self._multiplier
            self._multiplier = new
            self._warm_started = True
            lam = self._multiplier
        how = "the policy's outcome" if solved is not None else f"{len(self._scores)} scores"
        log.info("budget warm start: lambda=%.6g from %s", lam, how)
        self._persist(force=True)
        return lam

    def observe(
        self,
        cloud: Sequence[bool] | np.ndarray,
        costs: Sequence[float] | np.ndarray | None = None,
        counted: Sequence[bool] | np.ndarray | None = None,
    ) -> float:
        """Tallies decisions made with the current lambda and moves lambda.

        Args:
            cloud: Whether each decision went to the cloud engine, (B,).
            costs: Cost of each chosen choice, (B,); needed in cost mode.
            counted: Whether each decision counts (False: forced or fallback); default all.

        Returns:
            lambda after the update(s).
        """
        cloud_a = np.asarray(cloud, dtype=bool).ravel()
        b = cloud_a.size
        counted_a = np.ones(b, bool) if counted is None else np.asarray(counted, bool).ravel()
        if counted_a.size != b:
            raise InvalidRequest(f"{counted_a.size} counted flags for {b} decisions")
        if costs is None:
            if self._mode == "cost":
                raise InvalidRequest("costs are required in cost mode")
            costs_a = np.where(cloud_a, self.config.cloud_cost, self.config.edge_cost)
        else:
            costs_a = np.asarray(costs, dtype=np.float64).ravel()
            if costs_a.size != b:
                raise InvalidRequest(f"{costs_a.size} costs for {b} decisions")
        with self._lock:
            self._dirty = self._dirty or b > 0
            self._uncounted += int(b - counted_a.sum())
            cloud_c, costs_c = cloud_a[counted_a], costs_a[counted_a]
            if cloud_c.size:
                if self._mode == "rate":
                    excess = cloud_c.astype(np.float64) - self._target_rate  # c_scale = 1
                else:
                    excess = (costs_c - self._target_cost) / self.config.cost_scale
                if self.config.update == "batch":
                    self._step_locked(float(excess.sum()))
                else:
                    for e in excess.tolist():
                        self._step_locked(e)
                self._decisions += int(cloud_c.size)
                self._cloud += int(cloud_c.sum())
                self._cost_sum += float(costs_c.sum())
            lam = self._multiplier
        self._persist(force=False)
        return lam

    def _step_locked(self, excess: float) -> None:
        raw = self._multiplier + self._eta * excess
        new = min(max(raw, 0.0), self._lambda_max)
        if new != raw:
            self._clipped += 1
        self._multiplier = new
        self._excess_sum += excess
        self._updates += 1

    # ----- control

    def set_target(
        self,
        *,
        target_rate: float | None = None,
        target_cost: float | None = None,
        eta: float | None = None,
        lambda_max: float | None = None,
        multiplier: float | None = None,
    ) -> BudgetSnapshot:
        """Changes the target and/or settings (SetBudget); counts restart from now.

        Args:
            target_rate: New cloud share; switches to rate mode.
            target_cost: New average cost; switches to cost mode (give at most one target).
            eta: New step size.
            lambda_max: New upper clip.
            multiplier: New lambda; None warm-starts from recent scores when a target changed
                and there are scores (else keeps lambda, clipped to lambda_max).

        Returns:
            The state after the change.
        """
        if target_rate is not None and target_cost is not None:
            raise InvalidRequest(
                f"give target_rate ({target_rate}) or target_cost ({target_cost}), not both"
            )
        with self._lock:
            rate = self._target_rate if target_rate is None else float(target_rate)
            cost = self._target_cost if target_cost is None else float(target_cost)
            new_eta = self._eta if eta is None else float(eta)
            new_max = self._lambda_max if lambda_max is None else float(lambda_max)
            _check_targets(rate, cost, new_eta, new_max)
            if multiplier is not None and not 0 <= multiplier <= new_max:
                raise InvalidRequest(f"multiplier is {multiplier}, must be in [0, {new_max}]")
            if target_rate is not None:
                self._mode = "rate"
            if target_cost is not None:
                self._mode = "cost"
            self._target_rate, self._target_cost = rate, cost
            self._eta, self._lambda_max = new_eta, new_max
            self._multiplier = min(self._multiplier, new_max)
            if multiplier is not None:
                self._multiplier = float(multiplier)
            self._reset_counts_locked()
            retarget = target_rate is not None or target_cost is not None
            has_scores = bool(self._scores)
        if multiplier is None and retarget and has_scores:
            self.warm_start()
        self._persist(force=True)
        snap = self.snapshot()
        log.info(
            "budget set: mode=%s target_rate=%.4g target_cost=%.4g eta=%.4g lambda=%.6g",
            snap.mode,
            snap.target_rate,
            snap.target_cost,
            snap.eta,
            snap.multiplier,
        )
        return snap

    def flush(self) -> bool:
        """Writes the state now (if there is a state dir); returns whether it was written."""
        return self._persist(force=True)

    def flush_due(self) -> bool:
        """Writes the state if it changed and ``persist_interval_s`` has passed since the last
        write; returns whether it was written. Called periodically, it bounds what a crash
        loses to the decisions of the last ``persist_interval_s`` plus the calling period."""
        return self._persist(force=False)

    # ----- internals

    def _solve_on_outcome(self) -> float | None:
        """lambda* on `outcome_model` (None without a model or without traffic in it)."""
        model = self.outcome_model
        if model is None:
            return None
        with self._lock:
            rate_mode = self._mode == "rate"
            target = self._target_rate if rate_mode else self._target_cost
            top = self._lambda_max
        try:
            return solve_multiplier(lambda lam: model(lam)[0 if rate_mode else 1], target, top)
        except InvalidRequest as e:  # an empty window: fall back to the scores
            log.info("budget warm start on the policy's outcome skipped: %s", e)
            return None

    def _cloud_share_locked(self) -> float:
        if self._mode == "rate":
            return self._target_rate
        lo, hi = self.config.edge_cost, self.config.cloud_cost
        return min(max((self._target_cost - lo) / (hi - lo), 0.0), 1.0)

    def _reset_counts_locked(self) -> None:
        self._decisions = 0
        self._cloud = 0
        self._uncounted = 0
        self._cost_sum = 0.0
        self._updates = 0
        self._clipped = 0
        self._excess_sum = 0.0
        self._multiplier_at_since = self._multiplier
        self._since_unix_s = self._clock()

    def _snapshot_locked(self) -> BudgetSnapshot:
        n = self._decisions
        return BudgetSnapshot(
            mode=self._mode,
            target_rate=self._target_rate,
            target_cost=self._target_cost,
            multiplier=self._multiplier,
            eta=self._eta,
            lambda_max=self._lambda_max,
            cost_scale=1.0 if self._mode == "rate" else self.config.cost_scale,
            decisions=n,
            cloud_decisions=self._cloud,
            uncounted_decisions=self._uncounted,
            cost_sum=self._cost_sum,
            running_rate=self._cloud / n if n else 0.0,
            running_cost=self._cost_sum / n if n else 0.0,
            since_unix_s=self._since_unix_s,
            updates=self._updates,
            clipped_updates=self._clipped,
            excess_sum=self._excess_sum,
            multiplier_at_since=self._multiplier_at_since,
            warm_started=self._warm_started,
            persisted=self._persisted,
        )

    def _state_locked(self) -> dict[str, Any]:
        snap = asdict(self._snapshot_locked())
        state = {key: snap[key] for key in _PERSISTED}
        return {"version": STATE_VERSION, **state}

    def _persist(self, force: bool) -> bool:
        path = self.state_path
        if path is None:
            return False
        now = time.monotonic()
        with self._lock:
            if not force and (
                not self._dirty or now - self._last_persist_s < self.config.persist_interval_s
            ):
                return False
            self._last_persist_s = now
            self._dirty = False
            state = self._state_locked()
        with self._write_lock:
            try:
                _write_atomically(path, json.dumps(state, indent=1, sort_keys=True) + "\n")
            except OSError as e:
                with self._lock:
                    self._persisted = False
                    self._dirty = True  # try again at the next chance
                    first = not self._persist_failed
                    self._persist_failed = True
                if first:
                    log.warning(
                        "cannot write the budget state to %s (%s); keeping it in memory only, "
                        "it will not survive a restart",
                        path,
                        e,
                    )
                return False
        with self._lock:
            if self._persist_failed:
                log.info("budget state written to %s again", path)
            self._persist_failed = False
            self._persisted = True
        return True

    def _restore(self) -> bool:
        path = self.state_path
        if path is None or not path.exists():
            return False
        try:
            state = json.loads(path.read_text())
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"version {state.get('version')!r}, expected {STATE_VERSION}")
            missing = [k for k in _PERSISTED if k not in state]
            if missing:
                raise ValueError(f"missing {missing}")
            if state["mode"] not in ("rate", "cost"):
                raise ValueError(f"mode {state['mode']!r}")
            _check_targets(
                float(state["target_rate"]),
                float(state["target_cost"]),
                float(state["eta"]),
                float(state["lambda_max"]),
            )
            if not 0 <= float(state["multiplier"]) <= float(state["lambda_max"]):
                raise ValueError(f"multiplier {state['multiplier']} out of range")
        except (OSError, ValueError, TypeError, InvalidRequest) as e:
            log.warning("ignoring the budget state in %s: %s; starting fresh", path, e)
            return False
        with self._lock:
            self._mode = state["mode"]
            self._target_rate = float(state["target_rate"])
            self._target_cost = float(state["target_cost"])
            self._eta = float(state["eta"])
            self._lambda_max = float(state["lambda_max"])
            self._multiplier = float(state["multiplier"])
            self._decisions = int(state["decisions"])
            self._cloud = int(state["cloud_decisions"])
            self._uncounted = int(state["uncounted_decisions"])
            self._cost_sum = float(state["cost_sum"])
            self._since_unix_s = float(state["since_unix_s"])
            self._updates = int(state["updates"])
            self._clipped = int(state["clipped_updates"])
            self._excess_sum = float(state["excess_sum"])
            self._multiplier_at_since = float(state["multiplier_at_since"])
            self._warm_started = bool(state["warm_started"])
            self._persisted = True
        log.info("budget state restored from %s: lambda=%.6g", path, self._multiplier)
        return True


def _write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def eta_for_recovery(tau_decisions: float, density: float) -> float:
    """The step size that recovers from a shift with time constant ``tau_decisions``.

    Args:
        tau_decisions: Wanted recovery time constant, in counted decisions (> 0).
        density: Density of the routing score at the target threshold (multiplier units).

    Returns:
        eta = 1 / (tau * density).
    """
    if not (tau_decisions > 0 and density > 0):
        raise InvalidRequest(f"tau {tau_decisions} and density {density} must both be > 0")
    return 1.0 / (tau_decisions * density)


def recovery_time(eta: float, density: float) -> float:
    """tau = 1 / (eta * density): the time constant, in counted decisions, of lambda's recovery."""
    if not (eta > 0 and density > 0):
        raise InvalidRequest(f"eta {eta} and density {density} must both be > 0")
    return 1.0 / (eta * density)


def score_density(scores: Sequence[float] | np.ndarray, at: float) -> float:
    """Gaussian-kernel estimate of the density of ``scores`` at ``at`` (Silverman's bandwidth)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size < 2:
        raise InvalidRequest(f"need at least 2 scores to estimate a density, got {s.size}")
    iqr = float(np.subtract(*np.percentile(s, [75, 25])))
    spread = min(float(s.std(ddof=1)), iqr / 1.349) if iqr > 0 else float(s.std(ddof=1))
    h = 0.9 * max(spread, 1e-12) * s.size ** (-0.2)
    z = (at - s) / h
    return float(np.exp(-0.5 * z * z).sum() / (s.size * h * math.sqrt(2 * math.pi)))
