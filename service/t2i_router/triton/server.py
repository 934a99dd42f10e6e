"""A tritonserver started, watched and stopped by t2i_router, or an external one to connect to.

The binary is the Triton 2.51 build shipped in the ``nvidia-pytriton`` wheel. It cannot run from
site-packages as installed: the Python backend needs the stub for this interpreter copied into
``backends/python/``, the stub finds its interpreter through ``python3`` on PATH, and anything the
stub imports that links OpenSSL needs the interpreter's LIBDIR ahead of the wheel's bundled
libraries. `prepare_tritonserver` builds that layout once per wheel version in a cache directory
and `triton_environment` builds the matching environment.

A model plugs in as a folder of the repository (``<model>/config.pbtxt`` + ``<model>/1/...``);
nothing here knows about particular models.

Process hygiene (Linux): the server runs in its own process group (the Python backend stubs are
its children and share it), and `ManagedTritonServer.stop` signals the whole group. With
``die_with_parent`` the kernel also SIGKILLs the server when the thread that started it dies
(``PR_SET_PDEATHSIG``), so a crashed or killed parent leaves no orphan behind; the stubs notice
their parent is gone and exit on their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from t2i_router.errors import ConfigError, PortInUseError, TritonStartError, Unavailable

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
    "terminate_process_group",
    "triton_environment",
    "wait_until_ready",
]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
_KEPT_LOGS = 20
_POLL_INTERVAL_S = 0.2
_PR_SET_PDEATHSIG = 1

# A fresh gRPC channel backs off exponentially between failed connection attempts (1 s, 1.6 s,
# 2.6 s, ... by default), which would notice a server that became ready seconds late. Readiness
# polls use their own subchannel pool and a short backoff instead.
_READINESS_CHANNEL_ARGS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]

# How Triton 2.51 reports a port it could not bind, e.g.
#   "Failed to start HTTP service: Unavailable - Socket '127.0.0.1:8000' already in use"
#   "failed to start GRPC service: Unavailable - Socket '127.0.0.1:8001' already in use"
_PORT_IN_USE_RE = re.compile(r"Socket '[^']*:(\d+)' already in use")


def default_cache_dir() -> Path:
    """Where t2i_router keeps the prepared tritonserver, logs and run state by default."""
    return Path.home() / ".cache" / "t2i-router"


@dataclass(frozen=True)
class TritonServerConfig:
    """How to start a managed tritonserver.

    Attributes:
        model_repository: Folder of models, one ``<model>/config.pbtxt`` (+ versions) each.
        grpc_port: gRPC port; 0 picks a free one just before start.
        http_port: HTTP port (health, metadata); 0 picks a free one.
        metrics_port: Prometheus metrics port; 0 picks a free one. Ignored without metrics.
        host: Address all three services bind; loopback unless the server must be reachable.
        allow_metrics: Serve Prometheus metrics (CPU only; GPU metrics are always off).
        startup_timeout_s: How long to wait for readiness (all models loaded) after start.
        stop_grace_s: How long `stop` waits after SIGTERM before SIGKILLing the process group.
        log_verbose: Triton's ``--log-verbose`` level (0 is quiet).
        extra_args: More tritonserver flags, appended last so they can override ours.
        workdir: Holds the prepared tritonserver copy and the logs; None means
            `default_cache_dir`.
        log_path: File the server's stdout and stderr go to; None means a new file under
            ``<workdir>/logs``.
        die_with_parent: Have the kernel SIGKILL the server when the starting thread dies. Turn
            off only for a server meant to outlive its starter (``t2i-router triton start``).
    """

    model_repository: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    allow_metrics: bool = True
    startup_timeout_s: float = 120.0
    stop_grace_s: float = 20.0
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    workdir: Path | None = None
    log_path: Path | None = None
    die_with_parent: bool = True

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port", "metrics_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} is {port}, must be in 0..65535")
        if self.startup_timeout_s <= 0:
            raise ConfigError(f"startup_timeout_s is {self.startup_timeout_s}, must be > 0")
        if self.stop_grace_s < 0:
            raise ConfigError(f"stop_grace_s is {self.stop_grace_s}, must be >= 0")


@dataclass(frozen=True)
class TritonPorts:
    """The ports a started server actually listens on."""

    grpc: int
    http: int
    metrics: int | None


def prepare_tritonserver(cache_dir: Path | None = None) -> Path:
    """Returns a runnable tritonserver folder, copying it out of the pytriton wheel once.

    The copy is keyed by the wheel version and interpreter version, built in a temporary folder
    and renamed into place, so concurrent callers never see a half-copied tree.

    Args:
        cache_dir: Parent folder of the copy; None means `default_cache_dir`.

    Returns:
        The folder holding ``bin/tritonserver``, ``backends/`` and ``caches/``.

    Raises:
        TritonStartError: The wheel lacks the server or the stub for this Python, or the copy
            failed.
    """
    from importlib import metadata

    import pytriton

    source = Path(pytriton.__file__).parent / "tritonserver"
    py_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = source / "python_backend_stubs" / py_version / "triton_python_backend_stub"
    if not (source / "bin" / "tritonserver").is_file() or not stub.is_file():
        raise TritonStartError(f"{source} holds no tritonserver or no Python {py_version} stub")
    version = metadata.version("nvidia-pytriton")
    target = (cache_dir or default_cache_dir()) / f"tritonserver-{version}-py{py_version}"
    if (target / "backends" / "python" / "triton_python_backend_stub").is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        tree = staging / "tritonserver"
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy2(stub, tree / "backends" / "python" / "triton_python_backend_stub")
        try:
            tree.rename(target)
        except OSError as e:
            # Another process finished its copy first; theirs is as good as ours.
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        shutil.rmtree(staging, ignore_errors=True)
    except OSError as e:
        raise TritonStartError(f"cannot prepare tritonserver under {target.parent}: {e}") from e
    log.info("prepared tritonserver %s in %s", version, target)
    return target


def triton_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Returns the environment tritonserver and its Python backend stubs need.

    Args:
        base: Environment to extend; None means ``os.environ``.

    Returns:
        A copy of ``base`` with this interpreter's ``bin`` first on PATH (the stub runs the
        ``python3`` it finds there, so models see this venv) and the interpreter's LIBDIR, then
        the wheel's bundled libraries, first on LD_LIBRARY_PATH.
    """
    import pytriton

    env = dict(os.environ if base is None else base)
    venv_bin = Path(sys.prefix) / "bin"
    env["PATH"] = os.pathsep.join(p for p in (str(venv_bin), env.get("PATH", "")) if p)
    wheel_libs = Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (libdir, str(wheel_libs), env.get("LD_LIBRARY_PATH", "")) if p
    )
    return env


def _pick_free_ports(host: str, count: int) -> list[int]:
    # The sockets are closed before tritonserver binds, so another process can take a port in
    # between (a race). It is rare, and then startup fails with PortInUseError naming the port.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a port left in TIME_WAIT by an earlier server still counts as free, as
        # it does for tritonserver; an active listener still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(port, f"port {port} on {host} is already in use") from e
            raise TritonStartError(f"cannot bind {host}:{port}: {e}") from e


def _read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from field 3 (state) on, or None if the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def is_process_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (Linux /proc)."""
    fields = _read_stat(pid)
    return fields is not None and fields[0] != "Z"


def process_start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot, to tell a pid from a reused one."""
    fields = _read_stat(pid)
    return None if fields is None else int(fields[19])


def process_group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _read_stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def terminate_process_group(
    pid: int,
    grace_s: float,
    is_alive: Callable[[], bool] | None = None,
    settle_s: float = 5.0,
) -> None:
    """Stops a process group leader: SIGTERM, then SIGKILL to its whole group after ``grace_s``.

    After the leader is gone, whatever is left of its group (Python backend stubs) is SIGKILLed
    too, and this waits up to ``settle_s`` for the group to empty.

    Args:
        pid: The leader; its pid is also the process group id.
        grace_s: How long to wait for a clean exit after SIGTERM.
        is_alive: Tells whether the leader still runs; defaults to a /proc check (for a
            process that is not our child and so cannot be waited for).
        settle_s: How long to wait for the rest of the group to disappear.
    """
    alive = is_alive or (lambda: is_process_alive(pid))
    # Signal the pid only while it is alive: once reaped, the number may belong to another process.
    if alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive():
        log.warning("tritonserver pid %d ignored SIGTERM for %.1f s; killing it", pid, grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    while (alive() or process_group_members(pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = process_group_members(pid)
    if left:
        log.warning("processes %s of group %d survived SIGKILL", left, pid)


def _server_ready(client: object, timeout_s: float) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return bool(client.is_server_ready(client_timeout=timeout_s))  # type: ignore[attr-defined]
    except InferenceServerException:
        return False


def _http_ok(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def wait_until_ready(
    grpc_url: str,
    timeout_s: float,
    is_alive: Callable[[], bool] | None = None,
    http_probe_urls: Sequence[str] = (),
) -> bool:
    """Polls a Triton until it is ready, ``is_alive`` fails, or time runs out.

    Args:
        grpc_url: ``host:port`` of the gRPC service, asked for server readiness.
        timeout_s: The longest to wait.
        is_alive: Checked between polls; when it turns False, waiting stops.
        http_probe_urls: URLs that must also answer 200 (the HTTP health and metrics pages).

    Returns:
        True when the server reported ready.
    """
    import tritonclient.grpc

    deadline = time.monotonic() + timeout_s
    client = tritonclient.grpc.InferenceServerClient(grpc_url, channel_args=_READINESS_CHANNEL_ARGS)
    try:
        while True:
            probe_timeout_s = max(0.1, min(1.0, deadline - time.monotonic()))
            if _server_ready(client, probe_timeout_s) and all(
                _http_ok(url, probe_timeout_s) for url in http_probe_urls
            ):
                return True
            if (is_alive is not None and not is_alive()) or time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()


def _without_options_table(lines: list[str]) -> list[str]:
    """Drops the wide "| Option | Value |" table Triton prints at startup and on exit."""
    kept: list[str] = []
    in_table = False
    for line in lines:
        if line.startswith("| Option "):
            in_table = True
            if kept and kept[-1].startswith("+--"):
                kept.pop()
        elif in_table and not line.strip():
            in_table = False
        elif not in_table:
            kept.append(line)
    return kept


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a Triton log, less its options table ('' if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(_without_options_table(text.splitlines())[-lines:])


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    # Resolved here, in the parent: between fork and exec the child must not dlopen or allocate
    # (another thread of the parent may have held those locks at fork time).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    kill_signal = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, kill_signal, 0, 0, 0)
        # The parent may have died before prctl; then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    ports: TritonPorts
    log_path: Path
    started_monotonic_s: float = field(default_factory=time.monotonic)


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

    def start(self) -> None:
        """Starts tritonserver and returns once it reports ready (every model loaded).

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
                    preexec_fn=(_pdeathsig_preexec(os.getpid()) if cfg.die_with_parent else None),
                )
        except OSError as e:
            raise TritonStartError(f"cannot start {command[0]} (log {log_path}): {e}") from e
        self._running = _Running(process=process, ports=ports, log_path=log_path)
        if cfg.die_with_parent and threading.current_thread() is not threading.main_thread():
            log.warning(
                "tritonserver pid %d was started from thread %r and dies when that thread ends",
                process.pid,
                threading.current_thread().name,
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
                is_alive=lambda: process.poll() is None,
                http_probe_urls=probes,
            )
        except BaseException:
            self.stop()
            raise
        if not ready or process.poll() is not None:
            exit_status = process.poll()
            self.stop()
            raise self._start_failure(log_path, exit_status)
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
            _check_port_free(cfg.host, port)
        free = iter(_pick_free_ports(cfg.host, wanted.count(0)))
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
        match = _PORT_IN_USE_RE.search(tail)
        if match:
            port = int(match.group(1))
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
