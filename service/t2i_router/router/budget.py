# Over 400 lines on purpose: ~100 are the guarantee's derivation, ~100 the config and snapshot.
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

Tracking. The dual steps alone move lambda at most eta * max(rho, 1 - rho) per decision, and
tau holds near the lambda* whose density eta was chosen for. A large shift of the prompt mix
breaks both: lambda* moved 25x (0.013 -> 0.35) when a stream went from single/group to
pair/relation prompts, where the score density is far lower, and the steps took ~200 decisions to
follow at the eta that gives tau = 25 on the first mix. With ``track_every`` = K > 0 the
controller adds a feed-forward: every K counted decisions it re-solves theta = lambda* on the last
``track_window`` decisions (on `recent_outcome_model` when the router sets one, else as the
(1 - share) quantile of the last scores) and moves lambda to

    lambda = theta + kappa,     kappa = lambda - lambda_1 = eta * sum_t (c_t - rho) / c_scale

so lambda is a PI controller: theta follows the mix as fast as the window fills, kappa is the
dual steps' integral of the excess since the target changed, which the jump keeps (lambda_1
becomes lambda - kappa, as a warm start's jump shifts it). kappa is what the guarantee reads:
the identity and the (lambda_max + eta) / (eta * T) bound hold with tracking on, on any traffic
(`budget_store.track_state` keeps lambda_1 in [0, lambda_max]). lambda* follows a shift of any
size within about a window's length: a window of 2 tau took lambda 90% of the way in 0.8 tau
where the dual steps alone took 3.5 tau (benchmarks/budget_control.py, "large shift"); a
shorter window follows faster and jitters more.

Forced and fallback decisions (`counted=False`) are tallied but move neither lambda nor the
running rate.

Where the state lives. The controller keeps the score window (for warm starts) and talks to a
`budget_store.BudgetStore` for everything else, so the same rules run wherever the state is:

- `LocalBudgetStore` (the default): in memory, and with a ``state_dir`` a JSON file written
  atomically (temp file, fsync, ``os.replace``) when it changed, at most every
  ``persist_interval_s`` (by `observe`, and by `flush_due`, which a server calls periodically so
  that the last decisions before a quiet spell are written too), and on every `set_target` /
  `flush`, restored on start (a restored state wins over the config's
  target and lambda: SetBudget is the operator's live control). An unwritable state dir is
  logged once as a warning and the controller keeps serving from memory.
- `budget_redis.RedisBudgetStore`: one state shared by K router replicas in Redis; the dual
  steps of each counted batch are one atomic Lua script, so no replica's update is lost. While
  Redis is unreachable a replica keeps routing with its own copy of lambda and replays its
  decisions when Redis is back; SetBudget and GetBudget answer UNAVAILABLE meanwhile
  (docs/operations.md, "Replicas and the shared budget").

Thread safety: the stores apply each transition under a lock (local) or atomically on the server
(Redis). The local store's critical sections do no file I/O; the Redis store makes one round
trip per counted batch on the calling thread (at most its ``timeout_s``), so calling either
from an asyncio loop is fine.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.router.budget_store import (
    STATE_FILE,
    STATE_VERSION,
    BudgetChange,
    BudgetMode,
    BudgetState,
    BudgetStore,
    LocalBudgetStore,
    Observation,
    UpdateMode,
    check_targets,
)
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
        track_every: Counted decisions between two re-solves of lambda* on recent traffic (the
            tracking feed-forward, module docstring); 0 turns tracking off.
        track_window: How many of the latest decisions a re-solve reads (<= score_window when
            it falls back to the scores): lambda* follows a shift within about this many.
        state_dir: Directory of the persisted state; None keeps it in memory only (used by the
            default local store; a store given to the controller decides for itself).
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
    track_every: int = 0
    track_window: int = 100
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
        if self.track_every < 0:
            raise InvalidRequest(f"track_every is {self.track_every}, must be >= 0 (0: off)")
        if not 1 <= self.track_window <= self.score_window:
            raise InvalidRequest(
                f"track_window is {self.track_window}, must be in [1, score_window "
                f"{self.score_window}]"
            )
        if self.persist_interval_s < 0:
            raise InvalidRequest(f"persist_interval_s is {self.persist_interval_s}, must be >= 0")


def _check_targets(rate: float, cost: float, eta: float, lambda_max: float) -> None:
    try:
        check_targets(rate, cost, eta, lambda_max)
    except ValueError as e:
        raise InvalidRequest(str(e)) from None


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
        persisted: Whether the last write of the state succeeded (False without a state dir,
            and while a shared store is unreachable).
        store: Where the state lives (`BudgetStore.description`).
        pending_decisions: Decisions of this router not yet in a shared store (an outage).
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
    store: str = "memory"
    pending_decisions: int = 0

    @property
    def correction(self) -> float:
        """kappa = lambda - lambda_1: eta times the summed excess (exact while nothing clipped);
        with tracking, lambda = lambda* on recent traffic + kappa (module docstring)."""
        return self.multiplier - self.multiplier_at_since

    @property
    def error_bound(self) -> float:
        """(lambda_max + eta) / (eta * T): the bound on |running rate - target| (inf at T = 0)."""
        if self.decisions == 0:
            return math.inf
        return (self.lambda_max + self.eta) / (self.eta * self.decisions)


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
        store: Where the state lives; None: a `LocalBudgetStore` on ``config.state_dir``.
    """

    def __init__(
        self,
        config: BudgetConfig,
        clock: Callable[[], float] = time.time,
        store: BudgetStore | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._scores: deque[float] = deque(maxlen=config.score_window)
        #: lambda -> (cloud share, mean cost) on recent traffic; the warm start solves on it.
        self.outcome_model: Callable[[float], tuple[float, float]] | None = None
        #: The same on the last ``track_window`` decisions; tracking re-solves on it.
        self.recent_outcome_model: Callable[[float], tuple[float, float]] | None = None
        self._since_track = 0
        #: Re-solves applied (tracking).
        self.tracks = 0
        self.store: BudgetStore = store or LocalBudgetStore(
            config.state_dir, config.persist_interval_s
        )
        initial = BudgetState(
            mode=config.mode,
            target_rate=config.target_rate,
            target_cost=config.target_cost,
            eta=config.eta,
            lambda_max=config.lambda_max,
            multiplier=config.lambda_init,
            decisions=0,
            cloud_decisions=0,
            uncounted_decisions=0,
            cost_sum=0.0,
            since_unix_s=clock(),
            updates=0,
            clipped_updates=0,
            excess_sum=0.0,
            multiplier_at_since=config.lambda_init,
            warm_started=False,
        )
        self.restored = self.store.open(initial)

    # ----- reading

    @property
    def multiplier(self) -> float:
        """lambda to decide with now (never fails on an unreachable shared store)."""
        return self.store.state().multiplier

    @property
    def state_path(self) -> Path | None:
        """The persisted state's file, or None (no state dir, or a store that is no file)."""
        return getattr(self.store, "path", None)

    def snapshot(self) -> BudgetSnapshot:
        """The current state, consistent; read from the shared store if there is one.

        Raises:
            Unavailable: The shared store cannot be reached (GetBudget answers UNAVAILABLE).
        """
        return self._snapshot(self.store.state(fresh=True))

    def view(self) -> BudgetSnapshot:
        """This router's view of the state (metrics): a shared store's as last read, re-read
        when due and reachable; never raises."""
        return self._snapshot(self.store.state())

    # ----- deciding and learning

    def record_scores(self, scores: Sequence[float] | np.ndarray) -> None:
        """Adds routing scores (multiplier units) to the window the warm start reads."""
        values = np.asarray(scores, dtype=np.float64).ravel()
        with self._lock:
            self._scores.extend(float(s) for s in values if math.isfinite(s))

    def warm_start(
        self, scores: Sequence[float] | np.ndarray | None = None, if_cold: bool = False
    ) -> float:
        """Sets lambda where recent traffic meets the target (module docstring, Warm start).

        Solves on `outcome_model` when there is one and it has traffic; otherwise takes the
        (1 - share) quantile of the scores, so that share of them go to the cloud.

        Args:
            scores: Scores to use (also recorded); None uses the recent window.
            if_cold: Only if the state was never warm-started (replicas sharing a store start
                one after another; the first one's warm start stands).

        Returns:
            The new lambda (unchanged when there is nothing to start from).
        """
        if scores is not None:
            self.record_scores(scores)
        solved = self._solve_on_outcome()
        with self._lock:
            window = np.fromiter(self._scores, dtype=np.float64)
        if solved is not None:
            new, how = solved, "the policy's outcome"
        elif window.size == 0:
            log.warning("budget warm start skipped: no scores recorded yet")
            return self.multiplier
        else:
            share = self._cloud_share(self.store.state())
            new, how = float(np.quantile(window, 1.0 - share)), f"{window.size} scores"
        lam = self.store.warm_start(new, if_cold).multiplier  # clipped to [0, lambda_max]
        log.info("budget warm start: lambda=%.6g from %s", lam, how)
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
            if self.store.state().mode == "cost":
                raise InvalidRequest("costs are required in cost mode")
            costs_a = np.where(cloud_a, self.config.cloud_cost, self.config.edge_cost)
        else:
            costs_a = np.asarray(costs, dtype=np.float64).ravel()
            if costs_a.size != b:
                raise InvalidRequest(f"{costs_a.size} costs for {b} decisions")
        obs = Observation(
            cloud=cloud_a[counted_a],
            costs=costs_a[counted_a].astype(np.float64),
            uncounted=int(b - counted_a.sum()),
            cost_scale=self.config.cost_scale,
            update=self.config.update,
        )
        lam = self.store.observe(obs).multiplier
        if self.config.track_every and obs.n:
            self._since_track += obs.n
            if self._since_track >= self.config.track_every:
                self._since_track = 0
                lam = self.track()
        return lam

    def track(self) -> float:
        """Re-solves lambda* on recent traffic and moves lambda to it plus the dual steps'
        integral (module docstring, Tracking); `observe` calls it every ``track_every``
        counted decisions. Returns lambda (unchanged until ``track_window`` decisions were
        seen)."""
        s = self.store.state()
        window = self.config.track_window
        if self.recent_outcome_model is not None:
            theta = self._solve(self.recent_outcome_model, s)  # None until the window is full
        else:
            with self._lock:
                recent = np.fromiter(self._scores, dtype=np.float64)[-window:]
            full = recent.size >= window
            theta = float(np.quantile(recent, 1.0 - self._cloud_share(s))) if full else None
        if theta is None:
            return s.multiplier
        self.tracks += 1
        new = self.store.track(theta).multiplier
        log.debug("budget tracking: theta=%.6g lambda %.6g -> %.6g", theta, s.multiplier, new)
        return new

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

        Raises:
            InvalidRequest: A value is out of range (nothing is changed).
            Unavailable: The shared store cannot be reached (nothing is changed).
        """
        if target_rate is not None and target_cost is not None:
            raise InvalidRequest(
                f"give target_rate ({target_rate}) or target_cost ({target_cost}), not both"
            )
        current = self.store.state(fresh=True)
        new_max = current.lambda_max if lambda_max is None else float(lambda_max)
        _check_targets(
            current.target_rate if target_rate is None else float(target_rate),
            current.target_cost if target_cost is None else float(target_cost),
            current.eta if eta is None else float(eta),
            new_max,
        )
        if multiplier is not None and not 0 <= multiplier <= new_max:
            raise InvalidRequest(f"multiplier is {multiplier}, must be in [0, {new_max}]")
        change = BudgetChange(
            target_rate=None if target_rate is None else float(target_rate),
            target_cost=None if target_cost is None else float(target_cost),
            eta=None if eta is None else float(eta),
            lambda_max=None if lambda_max is None else new_max,
            multiplier=None if multiplier is None else float(multiplier),
        )
        self.store.reset(change, self._clock())
        retarget = target_rate is not None or target_cost is not None
        with self._lock:
            has_scores = bool(self._scores)
        if multiplier is None and retarget and has_scores:
            self.warm_start()
        self.store.flush()
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
        """Writes the state now; returns whether all of it reached the file or shared store."""
        return self.store.flush()

    def flush_due(self) -> bool:
        """Writes the state if it changed and ``persist_interval_s`` has passed since the last
        write; returns whether it was written. Called periodically, it bounds what a crash
        loses to the decisions of the last ``persist_interval_s`` plus the calling period (a
        shared store writes every change at once; there it retries what an outage held back)."""
        return self.store.flush_due()

    def close(self) -> None:
        """Flushes and releases the store's connections."""
        self.store.close()

    # ----- internals

    def _solve_on_outcome(self) -> float | None:
        """lambda* on `outcome_model` (None without a model or without traffic in it)."""
        return self._solve(self.outcome_model, self.store.state())

    @staticmethod
    def _solve(
        model: Callable[[float], tuple[float, float]] | None, s: BudgetState
    ) -> float | None:
        """lambda* where ``model`` meets the target (None without a model or traffic in it)."""
        if model is None:
            return None
        rate_mode = s.mode == "rate"
        target = s.target_rate if rate_mode else s.target_cost
        try:
            return solve_multiplier(
                lambda lam: model(lam)[0 if rate_mode else 1], target, s.lambda_max
            )
        except InvalidRequest as e:  # an empty window: fall back to the scores
            log.debug("lambda* on the policy's outcome skipped: %s", e)
            return None

    def _cloud_share(self, s: BudgetState) -> float:
        if s.mode == "rate":
            return s.target_rate
        lo, hi = self.config.edge_cost, self.config.cloud_cost
        return min(max((s.target_cost - lo) / (hi - lo), 0.0), 1.0)

    def _snapshot(self, s: BudgetState) -> BudgetSnapshot:
        n = s.decisions
        return BudgetSnapshot(
            mode=s.mode,
            target_rate=s.target_rate,
            target_cost=s.target_cost,
            multiplier=s.multiplier,
            eta=s.eta,
            lambda_max=s.lambda_max,
            cost_scale=1.0 if s.mode == "rate" else self.config.cost_scale,
            decisions=n,
            cloud_decisions=s.cloud_decisions,
            uncounted_decisions=s.uncounted_decisions,
            cost_sum=s.cost_sum,
            running_rate=s.cloud_decisions / n if n else 0.0,
            running_cost=s.cost_sum / n if n else 0.0,
            since_unix_s=s.since_unix_s,
            updates=s.updates,
            clipped_updates=s.clipped_updates,
            excess_sum=s.excess_sum,
            multiplier_at_since=s.multiplier_at_since,
            warm_started=s.warm_started,
            persisted=self.store.persisted,
            store=self.store.description,
            pending_decisions=self.store.pending_decisions,
        )


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
