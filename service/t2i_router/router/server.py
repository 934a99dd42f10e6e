"""The router's gRPC server: configuration, assembly, health, reflection, metrics, shutdown.

- `RouterConfig`: every setting, a frozen dataclass; `RouterConfig.from_env` reads
  ``T2I_ROUTER_<FIELD>`` over the defaults (the CLI then applies its flags).
- `build_router`: the core from an estimator and an engine client (choices and costs from the
  model cards, equal weights on the alignment metrics, the budget controller).
- `create_server(config, router) -> (server, port)`: a grpc.aio server with the Router service,
  grpc.health.v1 (NOT_SERVING until told otherwise) and server reflection, bound but not started.
- `RouterService`: starts it all, warm-starts lambda, watches readiness (health SERVING while
  the estimator and the edge engine are ready, NOT_SERVING when they go away) and stops
  gracefully: health NOT_SERVING, then ``server.stop(grace_s)`` drains in-flight calls, then the
  micro-batcher drains, then the budget state is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from t2i_router.errors import InvalidRequest, PortInUseError
from t2i_router.estimator.choices import Choice as ChoiceName
from t2i_router.estimator.choices import choice_costs
from t2i_router.router.batching import BatcherConfig
from t2i_router.router.budget import BudgetConfig, BudgetController
from t2i_router.router.core import Router
from t2i_router.router.estimator import DEFAULT_ESTIMATOR_DIR, Estimator
from t2i_router.router.metrics import RouterMetrics, serve_metrics
from t2i_router.router.policy import Choice, Policy, PolicyConfig
from t2i_router.router.servicer import RouterServicer
from t2i_router.router.types import EngineClient, Limits
from t2i_router.world import ALIGNMENT_ASPECTS, sample_prompts
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

__all__ = ["ENV_PREFIX", "RouterConfig", "RouterService", "build_router", "create_server"]

log = logging.getLogger(__name__)

ENV_PREFIX = "T2I_ROUTER_"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class RouterConfig:
    """Everything `t2i-router serve` can be told (environment ``T2I_ROUTER_<FIELD>``, then flags).

    Attributes:
        host: Address the gRPC server binds (loopback by default).
        port: gRPC port; 0 picks a free one.
        max_batch_size: Most prompts per estimator batch.
        max_delay_s: Longest a prompt waits for its batch to fill.
        max_queue: Most prompts waiting for the estimator; more get RESOURCE_EXHAUSTED.
        limits: Request limits (environment: ``T2I_ROUTER_MAX_PROMPT_BYTES`` and so on).
        state_dir: Where the budget state is persisted; None keeps it in memory.
        metrics_port: Prometheus port on loopback; None serves no metrics, 0 a free port.
        grace_s: How long shutdown waits for in-flight calls.
        target_rate: Initial target cloud rate (a restored state wins).
        eta: Step size of the budget controller.
        lambda_max: Upper clip of lambda.
        triton_url: ``host:port`` of an external Triton; None starts a managed one.
        triton_repo: Model repository of the managed Triton.
        models_dir: Engine folders holding the model cards (choice costs).
        estimator_dir: The trained estimator's folder.
        edge_default: The edge engine's default choice.
        cloud_default: The cloud engine's default choice.
        health_interval_s: How often readiness is checked.
        warm_start_prompts: Sampled prompts whose scores warm-start lambda (0: none).
        ready_timeout_s: How long `serve` waits to become SERVING before giving up.
    """

    host: str = "127.0.0.1"
    port: int = 50051
    max_batch_size: int = 32
    max_delay_s: float = 0.002
    max_queue: int = 1024
    limits: Limits = field(default_factory=Limits)
    state_dir: Path | None = None
    metrics_port: int | None = None
    grace_s: float = 10.0
    target_rate: float = 0.3
    eta: float = 5e-4
    lambda_max: float = 1.0
    triton_url: str | None = None
    triton_repo: Path = Path("triton_repo")
    models_dir: Path = Path("models")
    estimator_dir: Path = DEFAULT_ESTIMATOR_DIR
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
_OPTIONAL_TYPES: dict[str, type] = {"state_dir": Path, "metrics_port": int, "triton_url": str}


def _convert(name: str, text: str, default: Any) -> Any:
    kind = _OPTIONAL_TYPES.get(name, type(default))
    if kind is not str and text.strip().lower() in ("", "none"):
        return None
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise InvalidRequest(
            f"{ENV_PREFIX}{name.upper()} is {text!r}, not {kind.__name__}"
        ) from None


def build_policy(
    estimator: Estimator, models_dir: Path, edge_default: str, cloud_default: str
) -> Policy:
    """The policy over the estimator's choices, costs in GFLOPs from the engines' model cards."""
    names = [ChoiceName.parse(c) for c in estimator.choices]
    costs = choice_costs(names, models_dir)
    choices = tuple(Choice(c.name, c.engine, c.steps, costs[c.name].gflops) for c in names)
    metrics = tuple(estimator.metric_names)
    weights = [1.0 if m in ALIGNMENT_ASPECTS else 0.0 for m in metrics]
    if not any(weights):  # no alignment metric by name: weigh them all
        weights = [1.0] * len(metrics)
    total = sum(weights)
    return Policy(
        PolicyConfig(
            choices=choices,
            metric_weights=tuple(w / total for w in weights),
            edge_default=edge_default,
            cloud_default=cloud_default,
            metric_names=metrics,
        )
    )


def build_router(
    config: RouterConfig,
    estimator: Estimator,
    engines: EngineClient,
    metrics: RouterMetrics | None = None,
) -> Router:
    """The core, assembled from the configuration (see the module docstring)."""
    policy = build_policy(estimator, config.models_dir, config.edge_default, config.cloud_default)
    edge = policy.config.choice(config.edge_default)
    cloud = policy.config.choice(config.cloud_default)
    budget = BudgetController(
        BudgetConfig(
            target_rate=config.target_rate,
            eta=config.eta,
            lambda_max=config.lambda_max,
            cost_scale=policy.config.c_scale,
            edge_cost=edge.cost,
            cloud_cost=cloud.cost,
            state_dir=config.state_dir,
        )
    )
    return Router(estimator, policy, budget, engines, config.batcher, config.limits, metrics)


def create_server(
    config: RouterConfig,
    router: Router,
    health_servicer: health.aio.HealthServicer | None = None,
    metrics: RouterMetrics | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the Router service, health (NOT_SERVING) and reflection.

    Returns:
        The server, bound but not started, and its port (the free one picked for port 0).

    Raises:
        PortInUseError: The address cannot be bound.
    """
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServicer_to_server(RouterServicer(router, metrics), server)
    health_servicer = health_servicer or health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            router_pb2.DESCRIPTOR.services_by_name["Router"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:
        raise PortInUseError(config.port, f"cannot bind {address}: {e}") from e
    if port == 0:
        raise PortInUseError(config.port, f"cannot bind {address}")
    return server, port


class RouterService:
    """A running router: gRPC server, health watcher and metrics around one `Router`.

    Args:
        config: Settings (host, port, grace_s, metrics_port, health_interval_s, ...).
        router: The core.
        metrics: The router's metrics (the same object the core reports to), or None.
    """

    def __init__(
        self, config: RouterConfig, router: Router, metrics: RouterMetrics | None = None
    ) -> None:
        self.config = config
        self.router = router
        self.metrics = metrics
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.serving = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._serving_state: bool | None = None

    async def start(self) -> int:
        """Binds and starts the server (health NOT_SERVING) and the readiness watcher."""
        self._server, self.port = create_server(self.config, self.router, self.health, self.metrics)
        await self._set_serving(False)
        await self._server.start()
        if self.metrics is not None:
            self.metrics.watch(lambda: self.router.batcher.queue_depth, self.router.budget_snapshot)
            if self.config.metrics_port is not None:
                self._metrics_server, self.metrics_port = serve_metrics(
                    self.metrics, self.config.metrics_port
                )
        log.info("gRPC server listening on %s:%d", self.config.host, self.port)
        await self._warm_start()
        self._watcher = asyncio.create_task(self._watch(), name="router-health")
        return self.port

    async def wait_serving(self, timeout_s: float) -> bool:
        """Waits until health first reports SERVING; False when ``timeout_s`` passes first."""
        try:
            await asyncio.wait_for(self.serving.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight calls for up to grace_s, flush state."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(self.config.grace_s)
        await self.router.close()
        self.router.budget.flush()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        log.info("router stopped")

    async def _warm_start(self) -> None:
        n = self.config.warm_start_prompts
        if n <= 0 or self.router.budget.restored:
            return
        prompts = [text for text, _ in sample_prompts(n, seed=0)]
        try:
            await self.router.warm_start(prompts)
        except Exception as e:  # the router still serves, from lambda_init
            log.warning("lambda warm start failed: %s", e)

    async def _watch(self) -> None:
        while True:
            try:
                readiness = await self.router.readiness(timeout_s=self.config.health_interval_s)
                serving = readiness.serving
            except Exception as e:
                log.warning("readiness check failed: %s", e)
                serving, readiness = False, None
            if serving != self._serving_state:
                log.info("health %s: %s", "SERVING" if serving else "NOT_SERVING", readiness)
            await self._set_serving(serving)
            await asyncio.sleep(self.config.health_interval_s)

    async def _set_serving(self, serving: bool) -> None:
        self._serving_state = serving
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if serving:
            self.serving.set()
