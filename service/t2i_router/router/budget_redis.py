# Over 400 lines on purpose: ~150 are the Lua scripts, kept beside the calls that send them.
"""A budget state shared by K router replicas in Redis (``--budget-store redis://host:port/db``).

The state (`budget_store.BudgetState`) is one Redis hash, ``<prefix>:budget``. Every change is
one Lua script, which Redis runs atomically, so the dual step is a single read-modify-write on
the server: K replicas stepping at once lose no update, and the rate identity of
`router.budget` holds for their sum. The scripts mirror `budget_store`'s pure transitions.

Each replica caches the state it last saw (every script returns it) and decides with that
lambda; an idle replica re-reads it at most every ``refresh_interval_s``.

Exactly once. Every observation a replica sends carries ``(replica id, sequence number)`` and
the script skips one whose number it has already applied (``<prefix>:budget:applied`` holds the
last number per replica). A call that times out may still have run on the server; when it is
sent again with the same number it is not counted twice.

Outage (Redis unreachable, a timeout, any Redis error). Routing does not fail because of Redis,
and waits on it at most ``timeout_s`` (0.1 s) per try:

- the replica logs one warning naming the store, keeps deciding with its cached lambda, steps
  that copy itself (it then holds the target on its own share, like a local store) and keeps
  the decisions it made as pending (aggregated, a few numbers per try);
- it tries again after ``retry_initial_s`` (0.5 s), then doubling up to ``retry_max_s``; when
  Redis answers, the pending decisions are replayed (one step with their summed excess per try,
  skipping any that had already arrived), the replica adopts the shared state and logs that it
  is back;
- GetBudget and SetBudget need the shared state and answer UNAVAILABLE meanwhile, naming the
  store; metrics show the replica's view, ``t2i_router_budget_persisted`` 0 and the pending
  decisions;
- if the state is gone when Redis comes back (restarted without persistence), the first replica
  to notice seeds it with its own view (a warning says so) and the others replay onto it.

Decisions a replica made during an outage are lost if that replica stops before Redis is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from t2i_router.errors import Unavailable
from t2i_router.router.budget_store import (
    STATE_VERSION,
    BudgetChange,
    BudgetState,
    Observation,
    observe_state,
    track_state,
    warm_start_state,
)

__all__ = ["DEFAULT_KEY_PREFIX", "RedisBudgetStore", "redact_url"]

log = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "t2i-router"
_MAX_SEGMENTS = 4096

# Helpers every script starts with. KEYS[1]: the state hash; KEYS[2]: last applied seq by replica.
_LIB = """
local function load()
  local flat = redis.call('HGETALL', KEYS[1])
  if #flat == 0 then return nil end
  local s = {}
  for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
  return s
end
local function f(x) return string.format('%.17g', x) end
local function last_seq(replica)
  return tonumber(redis.call('HGET', KEYS[2], replica) or '0')
end
local function step(st, e)
  local raw = st.lam + st.eta * e
  local new = math.min(math.max(raw, 0.0), st.lmax)
  if new ~= raw then st.clipped = st.clipped + 1 end
  st.lam = new
  st.esum = st.esum + e
  st.updates = st.updates + 1
end
local function stepper(s)
  return {lam = tonumber(s.multiplier), eta = tonumber(s.eta), lmax = tonumber(s.lambda_max),
          clipped = tonumber(s.clipped_updates), esum = tonumber(s.excess_sum),
          updates = tonumber(s.updates), n = tonumber(s.decisions),
          cloud = tonumber(s.cloud_decisions), uncounted = tonumber(s.uncounted_decisions),
          csum = tonumber(s.cost_sum)}
end
local function save(st)
  redis.call('HSET', KEYS[1], 'multiplier', f(st.lam), 'clipped_updates', f(st.clipped),
             'excess_sum', f(st.esum), 'updates', f(st.updates), 'decisions', f(st.n),
             'cloud_decisions', f(st.cloud), 'uncounted_decisions', f(st.uncounted),
             'cost_sum', f(st.csum))
end
"""

# ARGV: replica, seq, update ('request'|'batch'), cost_scale, uncounted, n, n cloud flags, n costs
_OBSERVE = """
local s = load()
if not s then return false end
local seq = tonumber(ARGV[2])
if seq > last_seq(ARGV[1]) then
  local st = stepper(s)
  local scale, n = tonumber(ARGV[4]), tonumber(ARGV[6])
  local rate, cost = tonumber(s.target_rate), tonumber(s.target_cost)
  local total = 0.0
  for i = 1, n do
    local c, k = tonumber(ARGV[6 + i]), tonumber(ARGV[6 + n + i])
    local e
    if s.mode == 'rate' then e = c - rate else e = (k - cost) / scale end
    if ARGV[3] == 'batch' then total = total + e else step(st, e) end
    st.cloud = st.cloud + c
    st.csum = st.csum + k
  end
  if ARGV[3] == 'batch' and n > 0 then step(st, total) end
  st.n = st.n + n
  st.uncounted = st.uncounted + tonumber(ARGV[5])
  save(st)
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: replica, cost_scale, m, then m segments of (seq, n, cloud, cost_sum, uncounted)
_REPLAY = """
local s = load()
if not s then return false end
local st = stepper(s)
local last = last_seq(ARGV[1])
local scale, m = tonumber(ARGV[2]), tonumber(ARGV[3])
local rate, cost = tonumber(s.target_rate), tonumber(s.target_cost)
for j = 0, m - 1 do
  local seq = tonumber(ARGV[4 + 5 * j])
  if seq > last then
    local n, c = tonumber(ARGV[5 + 5 * j]), tonumber(ARGV[6 + 5 * j])
    local k, u = tonumber(ARGV[7 + 5 * j]), tonumber(ARGV[8 + 5 * j])
    if n > 0 then
      if s.mode == 'rate' then step(st, c - n * rate) else step(st, (k - n * cost) / scale) end
    end
    st.n = st.n + n
    st.cloud = st.cloud + c
    st.csum = st.csum + k
    st.uncounted = st.uncounted + u
    last = seq
  end
end
save(st)
redis.call('HSET', KEYS[2], ARGV[1], f(last))
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: multiplier, if_cold ('1'|'0')
_WARM_START = """
local s = load()
if not s then return false end
if ARGV[2] == '1' and s.warm_started == '1' then return redis.call('HGETALL', KEYS[1]) end
local lam = tonumber(s.multiplier)
local new = math.min(math.max(tonumber(ARGV[1]), 0.0), tonumber(s.lambda_max))
redis.call('HSET', KEYS[1], 'multiplier', f(new), 'warm_started', '1',
           'multiplier_at_since', f(tonumber(s.multiplier_at_since) + new - lam))
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: theta (lambda* on the calling replica's recent traffic); see budget_store.track_state
_TRACK = """
local s = load()
if not s then return false end
local lmax = tonumber(s.lambda_max)
local kappa = tonumber(s.multiplier) - tonumber(s.multiplier_at_since)
local theta = math.min(math.max(tonumber(ARGV[1]), 0.0), lmax)
local new = math.min(math.max(theta + kappa, 0.0), lmax)
redis.call('HSET', KEYS[1], 'multiplier', f(new), 'multiplier_at_since', f(new - kappa))
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: now, target_rate, target_cost, eta, lambda_max, multiplier ('' keeps the current value)
_RESET = """
local s = load()
if not s then return false end
local mode = s.mode
if ARGV[2] ~= '' then mode = 'rate' end
if ARGV[3] ~= '' then mode = 'cost' end
local function pick(arg, current) if arg ~= '' then return arg end return current end
local lmax = tonumber(pick(ARGV[5], s.lambda_max))
local lam = math.min(tonumber(s.multiplier), lmax)
if ARGV[6] ~= '' then lam = tonumber(ARGV[6]) end
redis.call('HSET', KEYS[1], 'mode', mode, 'target_rate', pick(ARGV[2], s.target_rate),
           'target_cost', pick(ARGV[3], s.target_cost), 'eta', pick(ARGV[4], s.eta),
           'lambda_max', f(lmax), 'multiplier', f(lam), 'multiplier_at_since', f(lam),
           'decisions', '0', 'cloud_decisions', '0', 'uncounted_decisions', '0',
           'cost_sum', '0', 'updates', '0', 'clipped_updates', '0', 'excess_sum', '0',
           'since_unix_s', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# ARGV: replica, seq, replace ('1' overwrites), then field, value pairs. Returns 1 if written.
_SEED = """
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if tonumber(ARGV[2]) > last_seq(ARGV[1]) then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"""


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class _Segment:
    """Decisions not yet in the shared state; ``seq`` is the number of the newest of them."""

    seq: int
    n: int
    cloud: int
    cost_sum: float
    uncounted: int

    def __add__(self, other: _Segment) -> _Segment:
        return _Segment(
            max(self.seq, other.seq),
            self.n + other.n,
            self.cloud + other.cloud,
            self.cost_sum + other.cost_sum,
            self.uncounted + other.uncounted,
        )


class _Down(Unavailable):
    """Internal: the store could not be reached (already logged)."""


def _encode(state: BudgetState) -> list[str]:
    values: list[str] = ["version", str(STATE_VERSION)]
    for name, value in state.to_json().items():
        if name == "version":
            continue
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = str(value)
        values += [name, text]
    return values


def _decode(flat: Any) -> BudgetState:
    items = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2])
    return BudgetState.from_mapping(
        {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in items
        }
    )


class RedisBudgetStore:
    """`budget_store.BudgetStore` over one Redis hash shared by every replica.

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS, ``unix://`` too).
        key_prefix: Prefix of the keys (``<prefix>:budget``, ``<prefix>:budget:applied``); one
            prefix per fleet that shares a budget.
        timeout_s: Connect and read timeout of each call; a slower answer counts as an outage.
        refresh_interval_s: Longest an idle replica decides with a cached lambda.
        retry_initial_s: First wait before trying an unreachable Redis again (then doubled).
        retry_max_s: Longest wait between two tries while Redis is unreachable.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        *,
        timeout_s: float = 0.1,
        refresh_interval_s: float = 0.5,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.key = f"{key_prefix}:budget"
        self._keys = [self.key, f"{key_prefix}:budget:applied"]
        self.description = f"{redact_url(url)} key {self.key}"
        self.refresh_interval_s = refresh_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # an outage is handled here, not retried blindly
        )
        self._scripts = {
            name: self._client.register_script(_LIB + body)
            for name, body in (
                ("observe", _OBSERVE),
                ("replay", _REPLAY),
                ("warm_start", _WARM_START),
                ("track", _TRACK),
                ("reset", _RESET),
                ("seed", _SEED),
            )
        }
        self._replica = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._seq = 0
        self._state: BudgetState | None = None
        self._pending: list[_Segment] = []  # sent at least once and failed; maybe applied
        self._unsent: _Segment | None = None  # decided while down, never sent
        self._down_since: float | None = None
        self._down_error = ""
        self._retry_at = 0.0
        self._retry_s = retry_initial_s
        self._refreshed_at = -float("inf")
        self._cost_scale = 1.0  # the controller's, learnt from its observations

    # ----- BudgetStore

    @property
    def persisted(self) -> bool:
        return self._down_since is None and not self._pending and self._unsent is None

    @property
    def pending_decisions(self) -> int:
        with self._lock:
            segments = [*self._pending, *([self._unsent] if self._unsent else [])]
            return sum(s.n for s in segments)

    def open(self, initial: BudgetState) -> bool:
        with self._lock:
            self._state = initial
            try:
                flat = self._run(lambda: self._client.hgetall(self.key))
            except _Down:
                log.warning("starting with the configured budget until %s answers", self.url_text)
                return False
            if flat:
                try:
                    self._state = _decode(flat)
                except ValueError as e:
                    log.warning(
                        "ignoring the budget state at %s: %s; replacing it", self.description, e
                    )
                    self._seed(initial, force=True)
                    return False
                log.info(
                    "budget state restored from %s: lambda=%.6g",
                    self.description,
                    self._state.multiplier,
                )
                return True
            self._seed(initial, force=False)
            return False

    def state(self, fresh: bool = False) -> BudgetState:
        with self._lock:
            if self._down_since is not None:
                self._recover(force=fresh)
            elif fresh or self._clock() - self._refreshed_at >= self.refresh_interval_s:
                with contextlib.suppress(_Down):
                    self._read()
            if fresh and self._down_since is not None:
                raise Unavailable(
                    f"the shared budget store {self.description} is unreachable "
                    f"({self._down_error}); routing goes on with this replica's lambda "
                    f"{self._require().multiplier:.6g}"
                )
            return self._require()

    def observe(self, obs: Observation) -> BudgetState:
        with self._lock:
            self._seq += 1
            self._cost_scale = float(obs.cost_scale)
            segment = _Segment(
                self._seq, obs.n, int(obs.cloud.sum()), float(obs.costs.sum()), obs.uncounted
            )
            local = observe_state(self._require(), obs)
            if self._down_since is not None:
                self._unsent = segment if self._unsent is None else self._unsent + segment
                self._state = local
                self._recover(force=False)
                return self._require()
            args: list[Any] = [
                self._replica,
                self._seq,
                obs.update,
                repr(float(obs.cost_scale)),
                obs.uncounted,
                obs.n,
                *("1" if c else "0" for c in obs.cloud.tolist()),
                *(repr(float(c)) for c in obs.costs.tolist()),
            ]
            try:
                flat = self._run(lambda: self._scripts["observe"](keys=self._keys, args=args))
                # the state is gone: seed it with ours, this batch included
                if not flat and not self._seed(local, force=False):
                    flat = self._run(lambda: self._scripts["observe"](keys=self._keys, args=args))
            except _Down:
                self._pending.append(segment)  # it may have run: replayed under its number
                self._state = local
                return local
            if flat:
                self._adopt(flat)
            return self._require()

    def warm_start(self, multiplier: float, if_cold: bool) -> BudgetState:
        with self._lock:
            if self._down_since is None or self._recover(force=True):
                args = [repr(float(multiplier)), "1" if if_cold else "0"]
                try:
                    flat = self._with_state(
                        lambda: self._scripts["warm_start"](keys=self._keys, args=args)
                    )
                    self._adopt(flat)
                    return self._require()
                except _Down:
                    pass
            # only this replica's copy moves; the shared state, once back, wins
            self._state = warm_start_state(self._require(), multiplier, if_cold)
            return self._state

    def track(self, theta: float) -> BudgetState:
        with self._lock:
            if self._down_since is None:
                args = [repr(float(theta))]
                try:
                    flat = self._with_state(
                        lambda: self._scripts["track"](keys=self._keys, args=args)
                    )
                    self._adopt(flat)
                    return self._require()
                except _Down:
                    pass
            # only this replica's copy moves; the shared state, once back, wins
            self._state = track_state(self._require(), theta)
            return self._state

    def reset(self, change: BudgetChange, now_unix_s: float) -> BudgetState:
        def text(value: float | None) -> str:
            return "" if value is None else repr(float(value))

        args = [
            repr(float(now_unix_s)),
            *(text(v) for v in (change.target_rate, change.target_cost, change.eta)),
            *(text(v) for v in (change.lambda_max, change.multiplier)),
        ]
        with self._lock:
            if self._down_since is None or self._recover(force=True):
                try:
                    flat = self._with_state(
                        lambda: self._scripts["reset"](keys=self._keys, args=args)
                    )
                    self._adopt(flat)
                    return self._require()
                except _Down:
                    pass
            raise Unavailable(
                f"cannot change the budget: the shared budget store {self.description} is "
                f"unreachable ({self._down_error})"
            )

    def flush(self) -> bool:
        with self._lock:
            if self._down_since is not None:
                self._recover(force=True)
            return self.persisted

    def flush_due(self) -> bool:
        # every change is written at once; what an outage held back goes when a retry is due
        with self._lock:
            if self._down_since is not None:
                self._recover(force=False)
            return self.persisted

    def close(self) -> None:
        with self._lock:
            self.flush()
            if self._down_since is None:
                with contextlib.suppress(_Down):  # its sequence numbers are no longer needed
                    self._run(lambda: self._client.hdel(self._keys[1], self._replica))
            self._client.close()

    # ----- internals

    @property
    def url_text(self) -> str:
        return redact_url(self.url)

    def _require(self) -> BudgetState:
        if self._state is None:
            raise RuntimeError("RedisBudgetStore used before open()")
        return self._state

    def _run(self, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except redis.RedisError as e:
            self._mark_down(e)
            raise _Down from e
        return result

    def _mark_down(self, error: Exception) -> None:
        now = self._clock()
        self._down_error = f"{type(error).__name__}: {error}"
        if self._down_since is None:
            self._down_since = now
            self._retry_s = self.retry_initial_s
            log.warning(
                "budget store %s unreachable (%s); routing goes on with this replica's lambda "
                "%.6g, its decisions are kept and replayed when the store is back",
                self.description,
                self._down_error,
                self._require().multiplier,
            )
        else:
            self._retry_s = min(self._retry_s * 2, self.retry_max_s)
        self._retry_at = now + self._retry_s

    def _adopt(self, flat: Any) -> None:
        self._state = _decode(flat)
        self._refreshed_at = self._clock()

    def _read(self) -> None:
        flat = self._run(lambda: self._client.hgetall(self.key))
        if flat:
            self._adopt(flat)
        else:
            self._seed(self._require(), force=False)

    def _with_state(self, call: Callable[[], Any]) -> Any:
        """Runs a script; if the state is gone, seeds it with this replica's view and reruns."""
        flat = self._run(call)
        if not flat:
            self._seed(self._require(), force=False)
            flat = self._run(call)
        return flat

    def _seed(self, state: BudgetState, force: bool) -> bool:
        """Writes ``state`` if the key is absent (or ``force``); True when this replica wrote it."""
        args = [self._replica, self._seq, "1" if force else "0", *_encode(state)]
        written = bool(self._run(lambda: self._scripts["seed"](keys=self._keys, args=args)))
        if written:
            if self._refreshed_at > -float("inf"):
                log.warning(
                    "the shared budget state at %s was missing (Redis restarted without "
                    "persistence?); seeded it with this replica's view, lambda=%.6g",
                    self.description,
                    state.multiplier,
                )
            self._state = state
            self._refreshed_at = self._clock()
        else:
            self._read()
        return written

    def _recover(self, force: bool) -> bool:
        """Tries to reach the store (when a retry is due, or ``force``); replays what is pending.

        Returns whether the store is reachable now.
        """
        if self._down_since is None:
            return True
        if not force and self._clock() < self._retry_at:
            return False
        if self._unsent is not None:  # sent now: from here on it may have been applied
            self._pending.append(self._unsent)
            self._unsent = None
        if len(self._pending) > _MAX_SEGMENTS:  # after days of outage: bound the memory
            self._pending[:2] = [self._pending[0] + self._pending[1]]
        args: list[Any] = [self._replica, repr(self._cost_scale), len(self._pending)]
        for seg in self._pending:
            args += [seg.seq, seg.n, seg.cloud, repr(seg.cost_sum), seg.uncounted]
        replayed = sum(s.n for s in self._pending)
        try:
            flat = self._run(lambda: self._scripts["replay"](keys=self._keys, args=args))
            if not flat:  # the state is gone: this replica's view holds its pending decisions
                seed_seq = max((s.seq for s in self._pending), default=self._seq)
                args_seed = [self._replica, seed_seq, "0", *_encode(self._require())]
                written = self._run(lambda: self._scripts["seed"](keys=self._keys, args=args_seed))
                if written:
                    log.warning(
                        "the shared budget state at %s was missing when the store came back; "
                        "seeded it with this replica's view (lambda=%.6g)",
                        self.description,
                        self._require().multiplier,
                    )
                    flat = self._run(lambda: self._client.hgetall(self.key))
                else:
                    flat = self._run(lambda: self._scripts["replay"](keys=self._keys, args=args))
        except _Down:
            return False
        down_s = self._clock() - (self._down_since or 0.0)
        self._down_since = None
        self._pending = []
        self._adopt(flat)
        log.info(
            "budget store %s reachable again after %.1f s; replayed %d decisions, lambda=%.6g",
            self.description,
            down_s,
            replayed,
            self._require().multiplier,
        )
        return True
