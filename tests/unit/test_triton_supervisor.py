"""The restart backoff (pure, fake clock) and the supervisor's loop around a fake server.

The fake stands in for the tritonserver process only (start, exit, stop); the supervisor's
readiness probe is real and talks to a port where nothing listens. tests/integration/
test_router_faults.py kills a real tritonserver under a real router.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from hung_triton import HungTriton

from t2i_router.errors import ConfigError, TritonStartError
from t2i_router.triton import RestartPolicy, TritonPorts, TritonServerConfig, TritonSupervisor
from t2i_router.triton.launch.backoff import RestartBackoff
from t2i_router.triton.launch.ports import pick_free_ports


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_backoff_doubles_per_failure_up_to_the_cap() -> None:
    backoff = RestartBackoff(RestartPolicy(initial_delay_s=0.5, max_delay_s=6.0), FakeClock())
    delays = [backoff.failed() for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    assert backoff.failures == 7


def test_backoff_resets_only_after_a_run_of_reset_after_s() -> None:
    clock = FakeClock()
    policy = RestartPolicy(initial_delay_s=1.0, max_delay_s=60.0, reset_after_s=120.0)
    backoff = RestartBackoff(policy, clock)
    assert [backoff.failed(), backoff.failed()] == [1.0, 2.0]
    backoff.ready()
    clock.now_s += 119.0  # died again before counting as healthy: keeps growing
    assert backoff.failed() == 4.0
    backoff.ready()
    clock.now_s += 120.0
    assert backoff.failed() == 1.0 and backoff.failures == 1


def test_backoff_long_outage_stays_at_the_cap_without_overflow() -> None:
    policy = RestartPolicy(initial_delay_s=1e-3, max_delay_s=5.0, multiplier=10.0)
    assert policy.delay_s(10_000) == 5.0
    assert policy.delay_s(1) == 1e-3
    assert RestartPolicy(initial_delay_s=0.0).delay_s(50) == 0.0
    assert RestartPolicy(initial_delay_s=2.0, multiplier=1.0).delay_s(50) == 2.0


@pytest.mark.parametrize(
    ("changes", "quoted"),
    [
        ({"initial_delay_s": -1.0}, "initial_delay_s is -1.0"),
        ({"initial_delay_s": 5.0, "max_delay_s": 1.0}, "max_delay_s is 1.0"),
        ({"multiplier": 0.5}, "multiplier is 0.5"),
        ({"reset_after_s": float("nan")}, "finite"),
    ],
)
def test_restart_policy_refuses_bad_values_quoting_them(changes, quoted) -> None:
    with pytest.raises(ConfigError, match=quoted):
        RestartPolicy(**changes)


class FakeServer:
    """A tritonserver stand-in: starts (or fails to, ``failures`` times), exits when told."""

    def __init__(self, tmp_path: Path, failures: int = 0) -> None:
        self.config = TritonServerConfig(model_repository=tmp_path, log_path=tmp_path / "t.log")
        self.failures = failures
        self.starts: list[TritonServerConfig] = []
        self.stops = 0
        self.status: int | None = None
        self._up = False
        self._free = pick_free_ports("127.0.0.1", 3)

    def start(self, cancel: threading.Event | None = None) -> None:
        self.starts.append(self.config)
        if len(self.starts) > 1 and self.failures > 0:
            self.failures -= 1
            raise TritonStartError("tritonserver exited with status 1 during startup\nlog tail")
        self._up, self.status = True, None

    def stop(self) -> None:
        self.stops += 1
        self._up = False

    @property
    def exit_status(self) -> int | None:
        return self.status if self._up else None

    @property
    def ports(self) -> TritonPorts:
        c = self.config
        return TritonPorts(
            c.grpc_port or self._free[0], c.http_port or self._free[1], c.metrics_port or 0
        )

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def pid(self) -> int:
        return 4242

    @property
    def log_path(self) -> Path:
        return self.config.log_path

    def log_tail(self, lines: int = 20) -> str:
        return "E model failed: out of memory"


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_supervisor_restarts_a_dead_server_on_its_ports_with_growing_waits(
    tmp_path, caplog
) -> None:
    server = FakeServer(tmp_path, failures=2)
    policy = RestartPolicy(initial_delay_s=0.01, max_delay_s=0.04)
    supervisor = TritonSupervisor(server, policy, poll_interval_s=0.01, unhealthy_after_s=60)
    events: list[str] = []
    unsubscribe = supervisor.subscribe(
        lambda reason: events.append(f"down: {reason}"), lambda: events.append("up")
    )
    caplog.set_level(logging.INFO, logger="t2i_router.triton.supervisor")
    with supervisor:
        url = supervisor.grpc_url
        server.status = -9  # SIGKILL
        # restarts counts before the callbacks run (in the supervisor's thread): wait for both
        wait_for(lambda: supervisor.restarts == 1 and len(events) == 2)
        assert events == ["down: tritonserver pid 4242 exited with status -9", "up"]
        # two failed starts after the death: three failures in a row, waits 0.01, 0.02, 0.04
        assert supervisor.backoff.failures == 3 and len(server.starts) == 4
        first = server.starts[0]
        for config in server.starts[1:]:  # same ports, so clients keep their URL
            assert (config.grpc_port, config.http_port) == (server.ports.grpc, server.ports.http)
        assert first.grpc_port == 0 and supervisor.grpc_url == url
        assert server.starts[-1].log_path.name == "t.restart1.log"  # the crash log is kept
        unsubscribe()
        server.status = 1
        wait_for(lambda: supervisor.restarts == 2)
        assert events[-1] == "up" and len(events) == 2  # unsubscribed: not called again
    text = caplog.text
    assert "is down: tritonserver pid 4242 exited with status -9" in text
    assert "E model failed: out of memory" in text  # the end of its log
    assert f"restart at {url} failed" in text and "restarting tritonserver" in text
    assert server.stops >= 3 and not supervisor._thread


def test_supervisor_restarts_a_live_server_that_answers_no_probe(tmp_path) -> None:
    server = FakeServer(tmp_path)  # nothing listens on its gRPC port: every probe fails
    policy = RestartPolicy(initial_delay_s=0.0)
    supervisor = TritonSupervisor(
        server, policy, poll_interval_s=0.01, probe_interval_s=0.05, unhealthy_after_s=0.3
    )
    reasons: list[str] = []
    supervisor.subscribe(reasons.append, lambda: None)
    started_s = time.monotonic()
    with supervisor:
        wait_for(lambda: supervisor.restarts == 1)
    assert time.monotonic() - started_s >= 0.3
    assert reasons and "has not been ready for" in reasons[0]


def test_supervisor_restarts_a_live_server_that_hangs_within_its_bound(tmp_path) -> None:
    """Each probe gives up after its timeout, so a server that never answers is restarted
    ``unhealthy_after_s`` after its last answer, plus at most one probe interval."""
    server = FakeServer(tmp_path)
    policy = RestartPolicy(initial_delay_s=0.0)
    probe_interval_s, unhealthy_after_s = 0.2, 0.6
    supervisor = TritonSupervisor(
        server,
        policy,
        poll_interval_s=0.01,
        probe_interval_s=probe_interval_s,
        unhealthy_after_s=unhealthy_after_s,
    )
    reasons: list[str] = []
    supervisor.subscribe(reasons.append, lambda: None)
    with HungTriton(server.ports.grpc) as hung:
        started_s = time.monotonic()
        with supervisor:
            wait_for(lambda: bool(reasons), timeout_s=10 * unhealthy_after_s)
            down_s = time.monotonic() - started_s
            wait_for(lambda: supervisor.restarts == 1)
    assert hung.calls["ServerReady"] >= 2  # the probes reached the hung server, unanswered
    assert "has not been ready for" in reasons[0]
    # the bound of docs/operations.md ("Faults"), with slack for a busy 2-core host
    assert unhealthy_after_s <= down_s < unhealthy_after_s + probe_interval_s + 2.0


def test_supervisor_stop_interrupts_a_long_backoff(tmp_path) -> None:
    server = FakeServer(tmp_path)
    policy = RestartPolicy(initial_delay_s=600.0, max_delay_s=600.0)
    supervisor = TritonSupervisor(server, policy, poll_interval_s=0.01, unhealthy_after_s=60)
    supervisor.start()
    server.status = 137
    wait_for(lambda: server.stops >= 1)
    started_s = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started_s < 5 and len(server.starts) == 1


def test_supervisor_first_start_failure_raises(tmp_path) -> None:
    server = FakeServer(tmp_path)
    server.start = lambda cancel=None: (_ for _ in ()).throw(TritonStartError("no repository"))
    supervisor = TritonSupervisor(server)
    with pytest.raises(TritonStartError, match="no repository"):
        supervisor.start()
    assert supervisor._thread is None and supervisor.grpc_url is None
    assert server.config.grpc_port == 0  # nothing was pinned
