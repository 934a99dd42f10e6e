"""The router's settings: `RouterConfig`, a frozen dataclass read from defaults, then
``T2I_ROUTER_<FIELD>`` environment variables (`RouterConfig.from_env`), then the CLI's flags.

It refuses at construction what must not run: plaintext on a non-loopback host without
``insecure``, half a TLS configuration. Tokens are held with ``repr=False`` and read from their
files only by `RouterConfig.tokens`, so neither a log line nor a traceback shows them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2i_router.errors import ConfigError, InvalidRequest
from t2i_router.router.batching import BatcherConfig
from t2i_router.router.core import DEFAULT_ENGINE_TIMEOUT_S
from t2i_router.router.estimator import DEFAULT_ESTIMATOR_DIR
from t2i_router.router.security import Tokens, check_exposure, read_token
from t2i_router.router.types import Limits

__all__ = ["ENV_PREFIX", "ESTIMATOR_RUNTIMES", "RouterConfig"]

ENV_PREFIX = "T2I_ROUTER_"
#: Where the quality estimator runs (`RouterConfig.estimator_runtime`).
ESTIMATOR_RUNTIMES = ("in-process", "triton")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class RouterConfig:
    """Everything `t2i-router serve` can be told (environment ``T2I_ROUTER_<FIELD>``, then flags).

    Attributes:
        host: Address the gRPC server binds (loopback by default; any other needs TLS or
            ``insecure``).
        port: gRPC port; 0 picks a free one.
        insecure: Serve plaintext on a non-loopback host (refused otherwise).
        tls_cert: The server's PEM certificate chain; with ``tls_key``, serves TLS only.
        tls_key: The server's PEM private key.
        tls_client_ca: PEM CA that client certificates must chain to; set, it requires them (mTLS).
        token_file: File holding the generation token (wins over ``token``).
        admin_token_file: File holding the admin token (wins over ``admin_token``).
        token: The generation token itself (``T2I_ROUTER_TOKEN``); never shown by repr.
        admin_token: The admin token itself (``T2I_ROUTER_ADMIN_TOKEN``); never shown by repr.
        max_message_bytes: Largest gRPC message received or sent; larger ones get
            RESOURCE_EXHAUSTED from grpc before the servicer runs.
        max_batch_size: Most prompts per estimator batch.
        max_delay_s: Longest a prompt waits for its batch to fill; 0 (default) sends a batch as
            soon as the estimator is free, so batches are what queued meanwhile.
        max_queue: Most prompts waiting for the estimator; more get RESOURCE_EXHAUSTED.
        limits: Request limits (environment: ``T2I_ROUTER_MAX_PROMPT_BYTES`` and so on).
        state_dir: Where the budget state is persisted (local store); None keeps it in memory.
        state_flush_interval_s: Least time between two writes of a changed budget state; a
            crash (SIGKILL) loses at most the decisions of the last ``state_flush_interval_s +
            health_interval_s``.
        budget_store: ``local`` (this router's own state, in memory or ``state_dir``) or a Redis
            URL shared by every replica (``redis://[:password@]host:port/db``, ``rediss://``
            for TLS, ``unix://``); never shown by repr, as it may hold a password.
        budget_key_prefix: Prefix of the Redis keys; one per fleet sharing a budget.
        budget_store_timeout_s: Connect/read timeout of a Redis call; slower counts as an outage.
        metrics_port: Prometheus port; None serves no metrics, 0 a free port.
        metrics_host: Address of the metrics port (loopback by default; the page has no auth).
        grace_s: How long shutdown waits for in-flight calls.
        engine_timeout_s: The longest one engine call (an image from Triton) may take when the
            caller's deadline is later or not set; a call it ends answers UNAVAILABLE, is not
            counted, and frees its slot. A hung Triton then costs a caller without a deadline
            at most this long (twice for an AUTO call that falls back from the cloud).
        target_rate: Initial target cloud rate (a restored state wins).
        eta: Step size of the budget controller.
        lambda_max: Upper clip of lambda.
        track_every: Counted decisions between two re-solves of lambda* on recent traffic (the
            budget's tracking feed-forward, `budget`); 0 leaves lambda to the dual steps alone.
        track_window: Latest AUTO decisions a re-solve reads: lambda* follows a shift of the
            prompt mix within about this many decisions; longer is smoother.
        triton_url: ``host:port`` of an external Triton; None starts a managed one.
        triton_restart_initial_s: Wait before restarting a managed Triton that died.
        triton_restart_max_s: Longest wait between restart attempts (the wait doubles per
            failure in a row, up to this).
        triton_restart_reset_s: A managed Triton ready this long restarts at the initial wait
            again after its next death.
        triton_unhealthy_s: A managed Triton whose process lives but that answers no readiness
            probe for this long is stopped and restarted.
        triton_repo: Model repository of the managed Triton.
        models_dir: Engine folders holding the model cards (choice costs).
        estimator_dir: The trained estimator's folder (``estimator_runtime`` "in-process").
        estimator_runtime: "in-process" (ONNX Runtime in the router: no network hop, the
            lowest route latency) or "triton" (the ``quality_estimator`` model of the Triton
            repository: one place to scale it, batched across replicas).
        edge_default: The edge engine's default choice.
        cloud_default: The cloud engine's default choice.
        health_interval_s: How often readiness is checked.
        warm_start_prompts: Sampled prompts whose scores warm-start lambda (0: none).
        ready_timeout_s: How long `serve` waits to become SERVING before giving up.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token_file: Path | None = None
    admin_token_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    max_message_bytes: int = 4 * 1024 * 1024
    max_batch_size: int = 32
    max_delay_s: float = 0.0
    max_queue: int = 1024
    limits: Limits = field(default_factory=Limits)
    state_dir: Path | None = None
    state_flush_interval_s: float = 1.0
    budget_store: str = field(default="local", repr=False)
    budget_key_prefix: str = "t2i-router"
    budget_store_timeout_s: float = 0.1
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    grace_s: float = 10.0
    engine_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S
    target_rate: float = 0.3
    eta: float = 5e-4
    lambda_max: float = 1.0
    track_every: int = 20
    track_window: int = 200
    triton_url: str | None = None
    triton_restart_initial_s: float = 1.0
    triton_restart_max_s: float = 30.0
    triton_restart_reset_s: float = 300.0
    triton_unhealthy_s: float = 30.0
    triton_repo: Path = Path("triton_repo")
    models_dir: Path = Path("models")
    estimator_dir: Path = DEFAULT_ESTIMATOR_DIR
    estimator_runtime: str = "in-process"
    edge_default: str = "edge_small@8"
    cloud_default: str = "cloud_large@20"
    health_interval_s: float = 1.0
    warm_start_prompts: int = 256
    ready_timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidRequest(f"port is {self.port}, must be in 0..65535")
        if self.grace_s < 0 or self.health_interval_s <= 0:
            raise InvalidRequest(
                f"grace_s {self.grace_s} must be >= 0 and health_interval_s "
                f"{self.health_interval_s} > 0"
            )
        if not (math.isfinite(self.engine_timeout_s) and self.engine_timeout_s > 0):
            raise ConfigError(
                f"engine_timeout_s is {self.engine_timeout_s}, must be a finite number of "
                f"seconds > 0 ({ENV_PREFIX}ENGINE_TIMEOUT_S, --engine-timeout-s)"
            )
        if not self.state_flush_interval_s >= 0:
            raise InvalidRequest(
                f"state_flush_interval_s is {self.state_flush_interval_s}, must be >= 0"
            )
        if not (
            0 <= self.triton_restart_initial_s <= self.triton_restart_max_s
            and self.triton_restart_reset_s >= 0
            and self.triton_unhealthy_s > 0
        ):
            raise InvalidRequest(
                f"triton restart waits initial {self.triton_restart_initial_s} s, max "
                f"{self.triton_restart_max_s} s, reset {self.triton_restart_reset_s} s and "
                f"unhealthy {self.triton_unhealthy_s} s must satisfy 0 <= initial <= max, "
                "reset >= 0, unhealthy > 0"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs TLS (--tls-cert and --tls-key)")
        if self.max_message_bytes < 1024:
            raise ConfigError(f"max_message_bytes is {self.max_message_bytes}, must be >= 1024")
        if self.estimator_runtime not in ESTIMATOR_RUNTIMES:
            raise ConfigError(
                f"estimator_runtime is {self.estimator_runtime!r}, expected one of "
                f"{ESTIMATOR_RUNTIMES}"
            )
        check_exposure(self.host, self.tls, self.insecure)
        if self.budget_store != "local" and not self.budget_store.startswith(_REDIS_SCHEMES):
            raise ConfigError(
                f"budget store is {self.budget_store.split('@')[-1]!r}: give 'local' or a Redis "
                "URL (redis://host:port/db, rediss://..., unix://...)"
            )
        if not self.budget_key_prefix or not self.budget_store_timeout_s > 0:
            raise ConfigError(
                f"budget_key_prefix {self.budget_key_prefix!r} must be set and "
                f"budget_store_timeout_s {self.budget_store_timeout_s} > 0"
            )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def tokens(self) -> Tokens:
        """The bearer tokens, read from their files when given (a file wins over the value)."""
        generation = read_token(self.token_file) if self.token_file else self.token
        admin = (
            read_token(self.admin_token_file, "admin token file")
            if self.admin_token_file
            else self.admin_token
        )
        return Tokens(generation or None, admin or None)

    @property
    def batcher(self) -> BatcherConfig:
        return BatcherConfig(self.max_batch_size, self.max_delay_s, self.max_queue)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RouterConfig:
        """Defaults, then ``T2I_ROUTER_<FIELD>`` variables, then ``overrides`` (None: unset)."""
        environ = os.environ if environ is None else environ
        defaults, limit_defaults = cls(), Limits()
        values: dict[str, Any] = {}
        limits: dict[str, Any] = {}
        for source, target, fields in (
            (defaults, values, dataclasses.fields(cls)),
            (limit_defaults, limits, dataclasses.fields(Limits)),
        ):
            for f in fields:
                text = environ.get(ENV_PREFIX + f.name.upper())
                if text is None or f.name == "limits":
                    continue
                target[f.name] = _convert(f.name, text, getattr(source, f.name))
        limits.update({k: v for k, v in overrides.pop("limits", {}).items() if v is not None})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values, limits=Limits(**limits))


# Fields whose default is None, and what their values are.
_OPTIONAL_TYPES: dict[str, type] = {
    "state_dir": Path,
    "metrics_port": int,
    "triton_url": str,
    "tls_cert": Path,
    "tls_key": Path,
    "tls_client_ca": Path,
    "token_file": Path,
    "admin_token_file": Path,
    "token": str,
    "admin_token": str,
}
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _convert(name: str, text: str, default: Any) -> Any:
    kind = _OPTIONAL_TYPES.get(name, type(default))
    if kind is not str and text.strip().lower() in ("", "none"):
        return None
    if kind is bool:
        try:
            return _BOOLS[text.strip().lower()]
        except KeyError:
            raise InvalidRequest(f"{ENV_PREFIX}{name.upper()} is {text!r}, not a boolean") from None
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise InvalidRequest(
            f"{ENV_PREFIX}{name.upper()} is {text!r}, not {kind.__name__}"
        ) from None
