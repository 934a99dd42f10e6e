"""A tritonserver started, watched and stopped by t2i_router, or an external one to connect to.

The parts live in :mod:`t2i_router.triton.launch` by concern (config, the wheel's server and
its environment, ports, /proc process management, readiness, log parsing); this module puts
them together and re-exports the names callers import from here.

A model plugs in as a folder of the repository (``<model>/config.pbtxt`` + ``<model>/1/...``);
nothing here knows about particular models.

Process hygiene (Linux): the server runs in its own process group and
`ManagedTritonServer.stop` signals the whole group; with ``die_with_parent`` it dies with the
thread that started it (see :mod:`t2i_router.triton.launch.process`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from t2i_router.errors import PortInUseError, TritonStartError, Unavailable
from t2i_router.triton.channel import server_keepalive_flags
from t2i_router.triton.launch.config import TritonPorts, TritonServerConfig, default_cache_dir
from t2i_router.triton.launch.environment import prepare_tritonserver, triton_environment
from t2i_router.triton.launch.logs import LOG_TAIL_LINES, port_in_use, read_log_tail
from t2i_router.triton.launch.ports import check_port_free, pick_free_ports
from t2i_router.triton.launch.process import (
    OwnerThread,
    is_process_alive,
    pdeathsig_preexec,
    process_group_members,
    process_start_ticks,
    python_backend_shm_files,
    terminate_process_group,
)
from t2i_router.triton.launch.readiness import wait_until_ready

__all__ = [
    "ExternalTriton",
    "ManagedTritonServer",
    "TritonPorts",
    "TritonServerConfig",
    "connect",
    "default_cache_dir",
    "is_process_alive",
    "prepare_tritonserver",
    "process_group_members",
    "process_start_ticks",
    "read_log_tail",
    "terminate_process_group",
    "triton_environment",
    "wait_until_ready",
]

log = logging.getLogger(__name__)

_KEPT_LOGS = 20


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    ports: TritonPorts
    log_path: Path
    started_monotonic_s: float = field(default_factory=time.monotonic)
    shm_files: list[Path] = field(default_factory=list)  # the Python backend's, once ready


class ManagedTritonServer:
    """A tritonserver child process: started, waited on until ready, and stopped.

    Use as a context manager, or call `start` and `stop`::

        with ManagedTritonServer(TritonServerConfig(Path("triton_repo"))) as triton:
            client = TritonClient(triton.grpc_url)

    With ``die_with_parent`` (the default) the server dies with the *thread* that started it
    (that is how ``PR_SET_PDEATHSIG`` works), so start it from a thread that lives as long as the
    server should, normally the main thread.
    """

    def __init__(self, config: TritonServerConfig) -> None:
        self.config = config
        self._running: _Running | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, cancel: threading.Event | None = None) -> None:
        """Starts tritonserver and returns once it reports ready (every model loaded).

        Args:
            cancel: Set from another thread, stops waiting for readiness: the server is stopped
                and TritonStartError raised (how a supervisor's stop interrupts a restart).

        Raises:
            PortInUseError: A requested port is taken (found before start, or in Triton's log).
            TritonStartError: The repository is missing, the server exited during startup (a
                model failed to load, say) or was not ready within ``startup_timeout_s``; the
                message quotes the end of Triton's log.
        """
        if self._running is not None:
            raise TritonStartError(f"tritonserver already running, pid {self._running.process.pid}")
        cfg = self.config
        repository = Path(cfg.model_repository).resolve()
        if not repository.is_dir():
            raise TritonStartError(f"model repository {repository} is not a folder")
        workdir = cfg.workdir or default_cache_dir()
        server_dir = prepare_tritonserver(workdir)
        ports = self._choose_ports()
        log_path = cfg.log_path or self._new_log_path(workdir)
        command = self._command(server_dir, repository, ports)
        log.info(
            "starting tritonserver: repository %s, grpc %s:%d, log %s",
            repository,
            cfg.host,
            ports.grpc,
            log_path,
        )
        log.debug("tritonserver command: %s", command)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=triton_environment(),
                    start_new_session=True,  # own process group: stop() signals the stubs too
                    preexec_fn=(pdeathsig_preexec(os.getpid()) if cfg.die_with_parent else None),
                )
        except OSError as e:
            raise TritonStartError(f"cannot start {command[0]} (log {log_path}): {e}") from e
        self._running = _Running(process=process, ports=ports, log_path=log_path)
        thread = threading.current_thread()
        if (
            cfg.die_with_parent
            and thread is not threading.main_thread()
            and not isinstance(thread, OwnerThread)
        ):
            log.warning(
                "tritonserver pid %d was started from thread %r and dies when that thread ends",
                process.pid,
                thread.name,
            )
        # Triton starts gRPC, then HTTP, then metrics, and exits if any of them cannot bind, so
        # gRPC readiness alone can be seen just before an exit; every endpoint must answer.
        probes = [f"http://{self.http_url}/v2/health/ready"]
        if self.metrics_url is not None:
            probes.append(self.metrics_url)
        try:
            ready = wait_until_ready(
                self.grpc_url,
                cfg.startup_timeout_s,
                is_alive=lambda: process.poll() is None and not (cancel and cancel.is_set()),
                http_probe_urls=probes,
            )
        except BaseException:
            self.stop()
            raise
        if cancel is not None and cancel.is_set():
            self.stop()
            raise TritonStartError(f"tritonserver start cancelled (log {log_path})")
        if not ready or process.poll() is not None:
            exit_status = process.poll()
            self.stop()
            raise self._start_failure(log_path, exit_status)
        self._running.shm_files = python_backend_shm_files(
            [process.pid, *process_group_members(process.pid)]
        )
        elapsed_s = time.monotonic() - self._running.started_monotonic_s
        log.info("tritonserver pid %d ready in %.1f s at %s", process.pid, elapsed_s, self.grpc_url)

    def stop(self) -> None:
        """Stops the server (SIGTERM, then SIGKILL to its process group); a no-op if stopped."""
        running, self._running = self._running, None
        if running is None:
            return
        process = running.process
        terminate_process_group(
            process.pid, self.config.stop_grace_s, is_alive=lambda: process.poll() is None
        )
        process.wait()
        log.info("tritonserver pid %d stopped (exit status %s)", process.pid, process.returncode)
        # A server that was killed could not unlink its shared memory; its group is gone now.
        left = [path for path in running.shm_files if path.exists()]
        for path in left:
            with contextlib.suppress(OSError):
                path.unlink()
        if left:
            log.info("removed %d shared-memory files tritonserver left behind", len(left))

    def __enter__(self) -> ManagedTritonServer:
        if self._running is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._running is not None and self._running.process.poll() is None

    @property
    def exit_status(self) -> int | None:
        """The exit status of a server that exited by itself; None while it runs or when stopped."""
        return None if self._running is None else self._running.process.poll()

    @property
    def pid(self) -> int:
        """Process id of tritonserver, which is also its process group id."""
        return self._require().process.pid

    @property
    def ports(self) -> TritonPorts:
        """The ports the server listens on."""
        return self._require().ports

    @property
    def log_path(self) -> Path:
        """The file holding the server's stdout and stderr."""
        return self._require().log_path

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC service, as tritonclient.grpc expects it."""
        return f"{self.config.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP service, as tritonclient.http expects it."""
        return f"{self.config.host}:{self.ports.http}"

    @property
    def metrics_url(self) -> str | None:
        """Full URL of the Prometheus metrics page, or None with metrics off."""
        port = self.ports.metrics
        return None if port is None else f"http://{self.config.host}:{port}/metrics"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        return read_log_tail(self.log_path, lines)

    # -- helpers -----------------------------------------------------------------------------

    def _require(self) -> _Running:
        if self._running is None:
            raise Unavailable("tritonserver is not running")
        return self._running

    def _choose_ports(self) -> TritonPorts:
        cfg = self.config
        wanted = [cfg.grpc_port, cfg.http_port]
        if cfg.allow_metrics:
            wanted.append(cfg.metrics_port)
        given = [p for p in wanted if p]
        if len(set(given)) != len(given):
            raise TritonStartError(f"grpc, http and metrics ports must differ, got {wanted}")
        for port in given:
            check_port_free(cfg.host, port)
        free = iter(pick_free_ports(cfg.host, wanted.count(0)))
        chosen = [p or next(free) for p in wanted]
        return TritonPorts(
            grpc=chosen[0], http=chosen[1], metrics=chosen[2] if cfg.allow_metrics else None
        )

    def _new_log_path(self, workdir: Path) -> Path:
        logs = workdir / "logs"
        # Keep the newest logs only; each start without a log_path writes a new one.
        with contextlib.suppress(OSError):
            old_logs = sorted(logs.glob("tritonserver-*.log"), key=lambda p: p.stat().st_mtime)
            for path in old_logs[:-_KEPT_LOGS]:
                path.unlink(missing_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return logs / f"tritonserver-{stamp}-{os.getpid()}-{id(self):x}.log"

    def _command(self, server_dir: Path, repository: Path, ports: TritonPorts) -> list[str]:
        cfg = self.config
        command = [
            str(server_dir / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={server_dir / 'backends'}",
            f"--cache-directory={server_dir / 'caches'}",
            f"--grpc-address={cfg.host}",
            f"--grpc-port={ports.grpc}",
            f"--http-address={cfg.host}",
            f"--http-port={ports.http}",
            f"--allow-metrics={str(cfg.allow_metrics).lower()}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={cfg.log_verbose}",
            *server_keepalive_flags(),  # accept the pings of the router's TritonClient
        ]
        if ports.metrics is not None:
            command += [f"--metrics-address={cfg.host}", f"--metrics-port={ports.metrics}"]
        return command + list(cfg.extra_args)

    def _start_failure(self, log_path: Path, exit_status: int | None) -> TritonStartError:
        tail = read_log_tail(log_path)
        if exit_status is None:
            what = f"tritonserver was not ready within {self.config.startup_timeout_s:g} s"
        else:
            what = f"tritonserver exited with status {exit_status} during startup"
        # First line: what happened; then the end of Triton's log, which says why.
        details = f"log: {log_path}\n{tail}"
        port = port_in_use(tail)
        if port is not None:
            return PortInUseError(port, f"port {port} is already in use: {what}; {details}")
        return TritonStartError(f"{what}; {details}")


@dataclass(frozen=True)
class ExternalTriton:
    """A Triton somebody else runs (the NGC container on a GPU host, a detached server).

    Attributes:
        grpc_url: ``host:port`` of its gRPC service.
    """

    grpc_url: str

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Returns once the server reports ready.

        Raises:
            Unavailable: It did not report ready within ``timeout_s``.
        """
        if not wait_until_ready(self.grpc_url, timeout_s):
            raise Unavailable(f"Triton at {self.grpc_url} is not ready after {timeout_s:g} s")


def connect(grpc_url: str, ready_timeout_s: float = 10.0) -> ExternalTriton:
    """Points at an already running Triton and checks that it is ready.

    Args:
        grpc_url: ``host:port`` of its gRPC service.
        ready_timeout_s: How long to wait for readiness.

    Raises:
        Unavailable: It did not report ready within ``ready_timeout_s``.
    """
    triton = ExternalTriton(grpc_url)
    triton.wait_ready(ready_timeout_s)
    return triton
