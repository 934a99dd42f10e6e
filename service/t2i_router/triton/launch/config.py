"""What a managed tritonserver is started with, and the ports it ended up on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from t2i_router.errors import ConfigError

__all__ = ["TritonPorts", "TritonServerConfig", "default_cache_dir"]


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
