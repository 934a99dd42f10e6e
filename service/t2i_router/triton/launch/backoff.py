"""When to restart a managed tritonserver that died: capped exponential backoff (pure).

A server that dies right after each start must not be restarted in a tight loop (every start
loads every model, a minute of CPU here), and one that ran for days before dying once should
come back at once. `RestartBackoff` gives the wait before each restart:

    delay_n = min(initial_delay_s * multiplier ** n, max_delay_s)

where n counts the failures (deaths and failed starts) since the server last stayed ready for
``reset_after_s``. Nothing here starts or watches a process (`triton.supervisor` does); the
clock is injected, so the policy is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from t2i_router.errors import ConfigError

__all__ = ["RestartBackoff", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """How a managed tritonserver is restarted.

    Attributes:
        initial_delay_s: Wait before the first restart after a healthy run (>= 0).
        max_delay_s: The longest wait between two attempts (>= initial_delay_s): attempts never
            stop, they only slow down to one per ``max_delay_s``.
        multiplier: Growth of the wait per consecutive failure (>= 1).
        reset_after_s: A server that stayed ready this long counts as healthy: the next death
            waits ``initial_delay_s`` again.
    """

    initial_delay_s: float = 1.0
    max_delay_s: float = 30.0
    multiplier: float = 2.0
    reset_after_s: float = 300.0

    def __post_init__(self) -> None:
        values = (self.initial_delay_s, self.max_delay_s, self.multiplier, self.reset_after_s)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"restart policy values must be finite, got {self}")
        if self.initial_delay_s < 0:
            raise ConfigError(f"initial_delay_s is {self.initial_delay_s}, must be >= 0")
        if self.max_delay_s < self.initial_delay_s:
            raise ConfigError(
                f"max_delay_s is {self.max_delay_s}, must be >= initial_delay_s "
                f"{self.initial_delay_s}"
            )
        if self.multiplier < 1:
            raise ConfigError(f"multiplier is {self.multiplier}, must be >= 1")
        if self.reset_after_s < 0:
            raise ConfigError(f"reset_after_s is {self.reset_after_s}, must be >= 0")

    def delay_s(self, failures: int) -> float:
        """The wait before the attempt that follows ``failures`` consecutive failures (>= 1)."""
        if failures < 1:
            raise ConfigError(f"failures is {failures}, must be >= 1")
        n = failures - 1
        if self.initial_delay_s == 0:
            return 0.0
        # Past the cap, return it without computing the power (which overflows on long outages).
        ratio = self.max_delay_s / self.initial_delay_s
        if self.multiplier > 1 and n >= math.log(ratio, self.multiplier):
            return self.max_delay_s
        return min(self.initial_delay_s * self.multiplier**n, self.max_delay_s)


class RestartBackoff:
    """Counts consecutive failures of one server and says how long to wait before restarting.

    Args:
        policy: The delays.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self, policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._failures = 0
        self._ready_since_s: float | None = None

    @property
    def failures(self) -> int:
        """Consecutive failures counted so far (0 after a healthy run)."""
        return self._failures

    def ready(self) -> None:
        """The server (re)started and reported ready now."""
        self._ready_since_s = self._clock()

    def failed(self) -> float:
        """The server died or a start failed now; returns the wait before the next start."""
        now = self._clock()
        if (
            self._ready_since_s is not None
            and now - self._ready_since_s >= self.policy.reset_after_s
        ):
            self._failures = 0
        self._ready_since_s = None
        self._failures += 1
        return self.policy.delay_s(self._failures)
