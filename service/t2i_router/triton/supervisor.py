"""Keep a managed tritonserver running: notice when it dies, start it again on the same ports.

`TritonSupervisor` owns a `ManagedTritonServer`. Its first start runs in the caller's thread
and raises as `ManagedTritonServer.start` does; then a thread (an `OwnerThread`: the servers it
restarts die with it) watches the server:

- *down* is a process that exited (checked every ``poll_interval_s``) or a server that answered
  no readiness probe for ``unhealthy_after_s`` (probed every ``probe_interval_s``);
- when it is down, the end of its log is logged, ``on_down(reason)`` is called, the server is
  stopped (what is left of its process group, the Python backend stubs, is killed) and started
  again on the *same ports* after the `RestartBackoff` wait; a failed start waits longer, and
  attempts never stop, they slow down to one per ``max_delay_s``;
- once it is ready again, ``on_up()`` is called. Clients that kept a channel to its gRPC URL
  reconnect by themselves (same address), so the router needs no restart.

Callbacks run in the supervisor's thread: hand them to an event loop with
``loop.call_soon_threadsafe`` (`t2i_router.router.server.RouterService.follow` does).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from t2i_router.errors import RouterError, TritonStartError
from t2i_router.triton.launch.backoff import RestartBackoff, RestartPolicy
from t2i_router.triton.launch.process import OwnerThread
from t2i_router.triton.launch.readiness import ReadinessProbe
from t2i_router.triton.server import ManagedTritonServer

__all__ = ["TritonSupervisor"]

log = logging.getLogger(__name__)

_LOG_TAIL_LINES = 20


class TritonSupervisor:
    """A managed tritonserver that is started again, with backoff, whenever it dies.

    Args:
        server: The server to keep running (not started yet).
        policy: The waits between restarts.
        poll_interval_s: How often the process is checked for an exit.
        probe_interval_s: How often readiness is probed over gRPC.
        unhealthy_after_s: How long a live server may answer no probe before it is restarted.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        server: ManagedTritonServer,
        policy: RestartPolicy | None = None,
        poll_interval_s: float = 0.1,
        probe_interval_s: float = 1.0,
        unhealthy_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (poll_interval_s > 0 and probe_interval_s > 0 and unhealthy_after_s > 0):
            raise TritonStartError(
                f"poll_interval_s {poll_interval_s}, probe_interval_s {probe_interval_s} and "
                f"unhealthy_after_s {unhealthy_after_s} must be > 0"
            )
        self.server = server
        self.backoff = RestartBackoff(policy, clock)
        self.poll_interval_s = poll_interval_s
        self.probe_interval_s = probe_interval_s
        self.unhealthy_after_s = unhealthy_after_s
        self.restarts = 0
        self.grpc_url: str | None = None
        self.ready_since_s: float | None = None
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: OwnerThread | None = None
        self._lock = threading.Lock()
        self._subscribers: list[tuple[Callable[[str], None], Callable[[], None]]] = []
        self._log_path = server.config.log_path

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the server (raising as `ManagedTritonServer.start`) and begins watching it."""
        if self._thread is not None:
            raise TritonStartError(f"already supervising tritonserver at {self.grpc_url}")
        self.server.start()
        ports = self.server.ports
        # Restarts reuse the ports, so clients keep one URL.
        self.server.config = dataclasses.replace(
            self.server.config,
            grpc_port=ports.grpc,
            http_port=ports.http,
            metrics_port=ports.metrics or 0,
        )
        self.grpc_url = self.server.grpc_url
        self._mark_ready()
        self._stopping.clear()
        self._thread = OwnerThread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops watching (interrupting a restart under way) and stops the server."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.server.stop()

    def __enter__(self) -> TritonSupervisor:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def subscribe(
        self, on_down: Callable[[str], None], on_up: Callable[[], None]
    ) -> Callable[[], None]:
        """Calls ``on_down(reason)`` when the server goes down and ``on_up()`` when it is back.

        Returns:
            A function that unsubscribes.
        """
        entry = (on_down, on_up)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    @property
    def pid(self) -> int:
        """The server's current pid (a restart changes it)."""
        return self.server.pid

    # -- the watching thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                reason = self._watch()
                if reason is None:
                    return
                self._down(reason)
                if not self._restart():
                    return
        finally:
            # From this thread: a server it restarted dies with it (PR_SET_PDEATHSIG), so it is
            # stopped gracefully here, before the thread ends, not SIGKILLed by the kernel after.
            self.server.stop()

    def _watch(self) -> str | None:
        """Waits until the server is down (returns why) or supervision stops (returns None)."""
        assert self.grpc_url is not None
        pid = self.server.pid
        probe = ReadinessProbe(self.grpc_url)
        try:
            answered_s = self._clock()
            next_probe_s = answered_s + self.probe_interval_s
            while not self._stopping.wait(self.poll_interval_s):
                status = self.server.exit_status
                if status is not None:
                    return f"tritonserver pid {pid} exited with status {status}"
                if self._clock() < next_probe_s:
                    continue
                if probe.ready(min(self.probe_interval_s, self.unhealthy_after_s)):
                    answered_s = self._clock()
                elif self._clock() - answered_s >= self.unhealthy_after_s:
                    return (
                        f"tritonserver pid {pid} has not been ready for "
                        f"{self._clock() - answered_s:.1f} s"
                    )
                next_probe_s = self._clock() + self.probe_interval_s
            return None
        finally:
            probe.close()

    def _down(self, reason: str) -> None:
        self.ready_since_s = None
        try:
            tail = self.server.log_tail(_LOG_TAIL_LINES)
            where = str(self.server.log_path)
        except (RouterError, OSError) as e:
            tail, where = "", f"unreadable: {e}"
        log.error(
            "Triton at %s is down: %s; end of its log (%s):\n%s", self.grpc_url, reason, where, tail
        )
        for on_down, _ in self._callbacks():
            try:
                on_down(reason)
            except Exception:
                log.exception("a Triton down callback failed")
        self.server.stop()

    def _restart(self) -> bool:
        """Starts the server again until it is ready (True) or supervision stops (False)."""
        while not self._stopping.is_set():
            delay_s = self.backoff.failed()
            log.warning(
                "restarting tritonserver at %s in %.1f s (failure %d in a row)",
                self.grpc_url,
                delay_s,
                self.backoff.failures,
            )
            if self._stopping.wait(delay_s):
                return False
            if self._log_path is not None:  # keep the log that says why it died
                name = f"{self._log_path.stem}.restart{self.restarts + 1}{self._log_path.suffix}"
                self.server.config = dataclasses.replace(
                    self.server.config, log_path=self._log_path.with_name(name)
                )
            try:
                self.server.start(cancel=self._stopping)
            except RouterError as e:
                if self._stopping.is_set():
                    return False
                summary = e.summary if isinstance(e, TritonStartError) else str(e)
                log.error("tritonserver restart at %s failed: %s", self.grpc_url, summary)
                continue
            except Exception:  # a bug: keep trying, slower and slower, rather than give up
                log.exception("tritonserver restart at %s failed", self.grpc_url)
                continue
            self._mark_ready()
            self.restarts += 1
            log.info("Triton at %s is back (restart %d)", self.grpc_url, self.restarts)
            for _, on_up in self._callbacks():
                try:
                    on_up()
                except Exception:
                    log.exception("a Triton up callback failed")
            return True
        return False

    def _mark_ready(self) -> None:
        self.backoff.ready()
        self.ready_since_s = self._clock()

    def _callbacks(self) -> list[tuple[Callable[[str], None], Callable[[], None]]]:
        with self._lock:
            return list(self._subscribers)
