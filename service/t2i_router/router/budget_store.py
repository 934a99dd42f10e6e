# Over 400 lines on purpose: the state, its transitions (mirrored in Lua) and the local store.
"""The budget controller's state, its transitions, and the store that keeps it on this host.

`BudgetState` is what the controller persists: target, settings, lambda and the counts since
the last target change. Its transitions are pure functions, so every store moves it the same
way (the Redis store's Lua scripts, `budget_redis`, mirror them line by line):

- `observe_state`: counted decisions and their dual steps
  ``lambda <- clip(lambda + eta * excess, 0, lambda_max)``, one per decision ("request") or
  one with the batch's sum ("batch"); uncounted decisions are tallied only;
- `replay_state`: decisions a replica made while a shared store was unreachable, added back as
  one step with their summed excess (the sum is what the rate identity needs);
- `warm_start_state`: a jump of lambda to a quantile of scores (not a step: lambda_1 moves
  with it, so the identity stays exact);
- `track_state`: the feed-forward of tracking: lambda moves to theta + kappa, where theta is
  lambda* re-solved on recent traffic and kappa = lambda - lambda_1 (eta times the excess the
  dual steps have summed since the target changed); lambda_1 becomes theta, so kappa, the
  identity and the rate bound are untouched (`budget`, "Tracking");
- `reset_state`: SetBudget: new target and/or settings, counts restart.

`BudgetStore` is the interface the `BudgetController` talks to, so the controller does not know
where the state lives. `LocalBudgetStore` keeps it in memory and, with a state dir, in a JSON
file written atomically (temp file, fsync, ``os.replace``) when it changed, at most every
``persist_interval_s`` (`observe`, `flush_due`) and on every flush, restored on start; an
unwritable dir is logged once and the store keeps serving from memory. It holds the state of one
router: K replicas with a local store each hold the target on their own share of the traffic
(docs/operations.md, "Replicas and the shared budget"); a shared store
(`budget_redis.RedisBudgetStore`) holds it on their sum.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "STATE_FILE",
    "STATE_VERSION",
    "BudgetChange",
    "BudgetState",
    "BudgetStore",
    "LocalBudgetStore",
    "Observation",
    "check_targets",
    "observe_state",
    "replay_state",
    "reset_state",
    "track_state",
    "warm_start_state",
]

log = logging.getLogger(__name__)

BudgetMode = Literal["rate", "cost"]
UpdateMode = Literal["request", "batch"]

STATE_FILE = "budget_state.json"
STATE_VERSION = 1


def check_targets(rate: float, cost: float, eta: float, lambda_max: float) -> None:
    """Raises ValueError naming the first of the four values that is out of range."""
    if not 0 <= rate <= 1:
        raise ValueError(f"target_rate is {rate}, must be in [0, 1]")
    if not (math.isfinite(cost) and cost >= 0):
        raise ValueError(f"target_cost is {cost}, must be >= 0")
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta is {eta}, must be > 0")
    if not (math.isfinite(lambda_max) and lambda_max > 0):
        raise ValueError(f"lambda_max is {lambda_max}, must be > 0")


@dataclass(frozen=True)
class BudgetState:
    """Everything the controller persists (field meanings as in `budget.BudgetSnapshot`)."""

    mode: BudgetMode
    target_rate: float
    target_cost: float
    eta: float
    lambda_max: float
    multiplier: float
    decisions: int
    cloud_decisions: int
    uncounted_decisions: int
    cost_sum: float
    since_unix_s: float
    updates: int
    clipped_updates: int
    excess_sum: float
    multiplier_at_since: float
    warm_started: bool

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON object with its format version."""
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BudgetState:
        """Reads a JSON object or a Redis hash (strings); raises ValueError if it is not valid.

        The version must be `STATE_VERSION` and every field present and in range.
        """
        version = values.get("version")
        if str(version) != str(STATE_VERSION):
            raise ValueError(f"version {version!r}, expected {STATE_VERSION}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in values]
        if missing:
            raise ValueError(f"missing {missing}")
        converted: dict[str, Any] = {}
        try:
            for f in dataclasses.fields(cls):
                raw = values[f.name]
                if f.name == "mode":
                    converted[f.name] = str(raw)
                elif f.name == "warm_started":
                    converted[f.name] = _boolean(raw)
                elif f.type == "int":
                    converted[f.name] = int(float(raw))
                else:
                    converted[f.name] = float(raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"field {f.name!r} is {values[f.name]!r}: {e}") from None
        state = cls(**converted)
        if state.mode not in ("rate", "cost"):
            raise ValueError(f"mode {state.mode!r}")
        check_targets(state.target_rate, state.target_cost, state.eta, state.lambda_max)
        if not 0 <= state.multiplier <= state.lambda_max:
            raise ValueError(f"multiplier {state.multiplier} out of range")
        return state


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise ValueError("not a boolean")


@dataclass(frozen=True)
class Observation:
    """Decisions made with one lambda (a micro-batch), as a store applies them.

    Attributes:
        cloud: Whether each counted decision went to the cloud, (B,) bool.
        costs: Cost of each counted decision's choice, (B,) float.
        uncounted: Forced or fallback decisions of the batch (tallied only).
        cost_scale: c_scale of cost-mode steps (the controller's configuration).
        update: "request" (a step per decision) or "batch" (one step with the sum).
    """

    cloud: np.ndarray
    costs: np.ndarray
    uncounted: int
    cost_scale: float
    update: UpdateMode

    @property
    def n(self) -> int:
        return int(self.cloud.size)


@dataclass(frozen=True)
class BudgetChange:
    """A SetBudget: each field None keeps the current value.

    Attributes:
        target_rate: New cloud share; switches to rate mode.
        target_cost: New average cost; switches to cost mode.
        eta: New step size.
        lambda_max: New upper clip (lambda is clipped to it).
        multiplier: New lambda.
    """

    target_rate: float | None = None
    target_cost: float | None = None
    eta: float | None = None
    lambda_max: float | None = None
    multiplier: float | None = None


def _step(lam: float, eta: float, lambda_max: float, excess: float) -> tuple[float, bool]:
    raw = lam + eta * excess
    new = min(max(raw, 0.0), lambda_max)
    return new, new != raw


def observe_state(s: BudgetState, obs: Observation) -> BudgetState:
    """Counts ``obs`` and moves lambda by its dual step(s)."""
    n = obs.n
    lam, updates, clipped, excess_sum = s.multiplier, s.updates, s.clipped_updates, s.excess_sum
    if n:
        if s.mode == "rate":
            excess = obs.cloud.astype(np.float64) - s.target_rate  # c_scale = 1
        else:
            excess = (obs.costs - s.target_cost) / obs.cost_scale
        steps = [float(excess.sum())] if obs.update == "batch" else excess.tolist()
        for e in steps:
            lam, hit = _step(lam, s.eta, s.lambda_max, e)
            clipped += hit
            excess_sum += e
            updates += 1
    return replace(
        s,
        multiplier=lam,
        decisions=s.decisions + n,
        cloud_decisions=s.cloud_decisions + int(obs.cloud.sum()),
        uncounted_decisions=s.uncounted_decisions + obs.uncounted,
        cost_sum=s.cost_sum + float(obs.costs.sum()),
        updates=updates,
        clipped_updates=clipped,
        excess_sum=excess_sum,
    )


def replay_state(
    s: BudgetState, n: int, cloud: int, cost_sum: float, uncounted: int, cost_scale: float
) -> BudgetState:
    """Adds ``n`` decisions made elsewhere (``cloud`` of them to the cloud) as one step."""
    lam, updates, clipped, excess_sum = s.multiplier, s.updates, s.clipped_updates, s.excess_sum
    if n:
        if s.mode == "rate":
            excess = cloud - n * s.target_rate
        else:
            excess = (cost_sum - n * s.target_cost) / cost_scale
        lam, hit = _step(lam, s.eta, s.lambda_max, excess)
        clipped += hit
        excess_sum += excess
        updates += 1
    return replace(
        s,
        multiplier=lam,
        decisions=s.decisions + n,
        cloud_decisions=s.cloud_decisions + cloud,
        uncounted_decisions=s.uncounted_decisions + uncounted,
        cost_sum=s.cost_sum + cost_sum,
        updates=updates,
        clipped_updates=clipped,
        excess_sum=excess_sum,
    )


def warm_start_state(s: BudgetState, multiplier: float, if_cold: bool) -> BudgetState:
    """Jumps lambda to ``multiplier`` (clipped); with ``if_cold`` only if never warm-started."""
    if if_cold and s.warm_started:
        return s
    new = min(max(multiplier, 0.0), s.lambda_max)
    # the jump is not a step: shift lambda_1 with it so that the identity stays exact
    return replace(
        s,
        multiplier=new,
        multiplier_at_since=s.multiplier_at_since + new - s.multiplier,
        warm_started=True,
    )


def track_state(s: BudgetState, theta: float) -> BudgetState:
    """Moves lambda to ``theta + kappa`` (clipped), kappa = lambda - lambda_1 kept.

    ``theta`` (clipped to [0, lambda_max]) is lambda* on recent traffic. lambda_1 becomes
    ``lambda_new - kappa``, which lies in [0, lambda_max] as long as |kappa| <= lambda_max (it
    does: lambda and lambda_1 both lie there), so the rate bound's argument is unchanged.
    """
    kappa = s.multiplier - s.multiplier_at_since
    new = min(max(min(max(theta, 0.0), s.lambda_max) + kappa, 0.0), s.lambda_max)
    return replace(s, multiplier=new, multiplier_at_since=new - kappa)


def reset_state(s: BudgetState, change: BudgetChange, now_unix_s: float) -> BudgetState:
    """Applies a SetBudget (validated by the caller) and restarts the counts at ``now_unix_s``."""
    mode = s.mode
    if change.target_rate is not None:
        mode = "rate"
    if change.target_cost is not None:
        mode = "cost"
    lambda_max = s.lambda_max if change.lambda_max is None else change.lambda_max
    lam = min(s.multiplier, lambda_max) if change.multiplier is None else change.multiplier
    return replace(
        s,
        mode=mode,
        target_rate=s.target_rate if change.target_rate is None else change.target_rate,
        target_cost=s.target_cost if change.target_cost is None else change.target_cost,
        eta=s.eta if change.eta is None else change.eta,
        lambda_max=lambda_max,
        multiplier=lam,
        decisions=0,
        cloud_decisions=0,
        uncounted_decisions=0,
        cost_sum=0.0,
        since_unix_s=now_unix_s,
        updates=0,
        clipped_updates=0,
        excess_sum=0.0,
        multiplier_at_since=lam,
    )


class BudgetStore(Protocol):
    """Where the budget state lives. Every method applies its transition atomically.

    A store that cannot reach its backing service keeps routing going (`observe`, `warm_start`
    and ``state(fresh=False)`` never raise for that) and refuses what needs the shared state
    (``state(fresh=True)`` and `reset` raise `Unavailable`).
    """

    @property
    def description(self) -> str:
        """Where the state is, for logs ("memory", "file ...", "redis://host:6379/0 key ...")."""
        ...

    @property
    def persisted(self) -> bool:
        """Whether the last write reached the backing file or service."""
        ...

    @property
    def pending_decisions(self) -> int:
        """Decisions counted here but not yet in the shared state (0 for a local store)."""
        ...

    def open(self, initial: BudgetState) -> bool:
        """Loads the stored state, else starts from ``initial``; True when a state was restored."""
        ...

    def state(self, fresh: bool = False) -> BudgetState:
        """The state: ``fresh`` reads the authority (may raise Unavailable), else the local view."""
        ...

    def observe(self, obs: Observation) -> BudgetState:
        """`observe_state`, atomically."""
        ...

    def warm_start(self, multiplier: float, if_cold: bool) -> BudgetState:
        """`warm_start_state`, atomically."""
        ...

    def track(self, theta: float) -> BudgetState:
        """`track_state`, atomically."""
        ...

    def reset(self, change: BudgetChange, now_unix_s: float) -> BudgetState:
        """`reset_state`, atomically."""
        ...

    def flush(self) -> bool:
        """Writes everything now; True when all of it reached the backing file or service."""
        ...

    def flush_due(self) -> bool:
        """Writes what changed if a write is due (called periodically); True when written."""
        ...

    def close(self) -> None:
        """Flushes and releases connections."""
        ...


class LocalBudgetStore:
    """The state of one router, in memory and (with ``state_dir``) in a JSON file.

    Args:
        state_dir: Directory of ``budget_state.json``; None keeps the state in memory only.
        persist_interval_s: Least time between two writes by `observe`.
    """

    def __init__(self, state_dir: Path | None = None, persist_interval_s: float = 1.0) -> None:
        self.state_dir = None if state_dir is None else Path(state_dir)
        self.persist_interval_s = persist_interval_s
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._state: BudgetState | None = None
        self._last_persist_s = -math.inf
        self._dirty = False  # changed since the last write
        self._persist_failed = False
        self._persisted = False

    @property
    def path(self) -> Path | None:
        """The state file, or None without a state dir."""
        return None if self.state_dir is None else self.state_dir / STATE_FILE

    @property
    def description(self) -> str:
        return "memory" if self.path is None else f"file {self.path}"

    @property
    def persisted(self) -> bool:
        return self._persisted

    @property
    def pending_decisions(self) -> int:
        return 0

    def open(self, initial: BudgetState) -> bool:
        restored = self._restore()
        with self._lock:
            self._state = restored or initial
        return restored is not None

    def state(self, fresh: bool = False) -> BudgetState:
        with self._lock:
            return self._require()

    def observe(self, obs: Observation) -> BudgetState:
        with self._lock:
            self._state = observe_state(self._require(), obs)
            self._dirty = self._dirty or obs.n + obs.uncounted > 0
            state = self._state
        self._persist(force=False)
        return state

    def warm_start(self, multiplier: float, if_cold: bool) -> BudgetState:
        with self._lock:
            self._state = warm_start_state(self._require(), multiplier, if_cold)
            state = self._state
        self._persist(force=True)
        return state

    def track(self, theta: float) -> BudgetState:
        with self._lock:
            self._state = track_state(self._require(), theta)
            state = self._state
        self._persist(force=False)
        return state

    def reset(self, change: BudgetChange, now_unix_s: float) -> BudgetState:
        with self._lock:
            self._state = reset_state(self._require(), change, now_unix_s)
            state = self._state
        self._persist(force=True)
        return state

    def flush(self) -> bool:
        return self._persist(force=True)

    def flush_due(self) -> bool:
        return self._persist(force=False)

    def close(self) -> None:
        self.flush()

    # ----- internals

    def _require(self) -> BudgetState:
        if self._state is None:
            raise RuntimeError("LocalBudgetStore used before open()")
        return self._state

    def _persist(self, force: bool) -> bool:
        path = self.path
        if path is None:
            return False
        now = time.monotonic()
        with self._lock:
            if not force and (
                not self._dirty or now - self._last_persist_s < self.persist_interval_s
            ):
                return False
            self._last_persist_s = now
            self._dirty = False
            text = json.dumps(self._require().to_json(), indent=1, sort_keys=True) + "\n"
        with self._write_lock:
            try:
                _write_atomically(path, text)
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

    def _restore(self) -> BudgetState | None:
        path = self.path
        if path is None or not path.exists():
            return None
        try:
            state = BudgetState.from_mapping(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("ignoring the budget state in %s: %s; starting fresh", path, e)
            return None
        self._persisted = True
        log.info("budget state restored from %s: lambda=%.6g", path, state.multiplier)
        return state


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
