"""The router's gRPC server: configuration, assembly, health, reflection, metrics, shutdown.

- `RouterConfig` (`router.config`, re-exported here): every setting, a frozen dataclass;
  `RouterConfig.from_env` reads ``T2I_ROUTER_<FIELD>`` over the defaults (the CLI then applies
  its flags).
- `build_router`: the core from an estimator and an engine client (choices and costs from the
  model cards, equal weights on the alignment metrics, the budget controller).
- `create_server(config, router) -> (server, port)`: a grpc.aio server with the Router service,
  grpc.health.v1 (NOT_SERVING until told otherwise) and server reflection, bound but not started;
  TLS (mTLS) when configured, the bearer-token, full-queue and per-client guards as
  interceptors (`router.security`, `router.overload`, `router.guard`), an explicit message size
  limit, and grpc's pending-call limits raised with the queue bound (`router.overload`).
- `RouterService`: starts it all, warm-starts lambda, watches readiness (health SERVING while
  the estimator and the edge engine are ready, NOT_SERVING when they go away), writes a changed
  budget state at every check (`BudgetController.flush_due`) and stops gracefully: health
  NOT_SERVING, then ``server.stop(grace_s)`` drains in-flight calls, then the micro-batcher
  drains, then the budget state is written. With a managed Triton, `RouterService.follow` has
  health follow its supervisor: NOT_SERVING the moment it dies, SERVING as soon as it is back
  (docs/operations.md, "Faults").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from t2i_router.errors import PortInUseError
from t2i_router.estimator.choices import Choice as ChoiceName
from t2i_router.estimator.choices import choice_costs
from t2i_router.router.budget import BudgetConfig, BudgetController
from t2i_router.router.budget_store import BudgetStore
from t2i_router.router.config import ENV_PREFIX, RouterConfig
from t2i_router.router.core import Router
from t2i_router.router.estimator import Estimator
from t2i_router.router.guard import ClientLimiter, GuardInterceptor
from t2i_router.router.metrics import RouterMetrics, serve_metrics
from t2i_router.router.overload import QueueGate, server_options
from t2i_router.router.policy import Choice, Policy, PolicyConfig
from t2i_router.router.security import AuthInterceptor, is_loopback, server_credentials
from t2i_router.router.servicer import RouterServicer
from t2i_router.router.tokens import MiniLMTokenCounter
from t2i_router.router.types import EngineClient
from t2i_router.world import ALIGNMENT_ASPECTS, sample_prompts
from t2i_router_client import SERVICE_NAME, router_pb2, router_pb2_grpc

if TYPE_CHECKING:
    from t2i_router.triton.supervisor import TritonSupervisor

__all__ = [
    "ENV_PREFIX",
    "RouterConfig",
    "RouterService",
    "budget_store",
    "build_router",
    "create_server",
    "triton_supervisor",
]

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Readiness poll period while a Triton that came back is not yet seen ready by the router, and
# for how long after it came back (its channel reconnects within ~1 s, `TritonClient`).
_FAST_POLL_S = 0.1
_FAST_POLL_WINDOW_S = 10.0


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


def budget_store(config: RouterConfig) -> BudgetStore | None:
    """The shared Redis store of ``config.budget_store``, or None for the local one."""
    if config.budget_store == "local":
        return None
    from t2i_router.router.budget_redis import RedisBudgetStore

    if config.state_dir is not None:
        log.warning("--state-dir is not used: the budget state is shared in Redis")
    return RedisBudgetStore(
        config.budget_store,
        config.budget_key_prefix,
        timeout_s=config.budget_store_timeout_s,
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
            track_every=config.track_every,
            track_window=config.track_window,
            cost_scale=policy.config.c_scale,
            edge_cost=edge.cost,
            cloud_cost=cloud.cost,
            state_dir=config.state_dir,
            persist_interval_s=config.state_flush_interval_s,
        ),
        store=budget_store(config),
    )
    counter = MiniLMTokenCounter() if config.limits.max_prompt_tokens > 0 else None
    return Router(
        estimator,
        policy,
        budget,
        engines,
        config.batcher,
        config.limits,
        metrics,
        counter,
        engine_timeout_s=config.engine_timeout_s,
    )


def triton_supervisor(config: RouterConfig) -> TritonSupervisor:
    """The managed Triton of `serve` (no ``triton_url``): ``triton_repo``, restarted with the
    configured backoff when it dies, probed every ``health_interval_s``. Not started yet."""
    from t2i_router.triton import (
        ManagedTritonServer,
        RestartPolicy,
        TritonServerConfig,
        TritonSupervisor,
    )

    server = ManagedTritonServer(
        TritonServerConfig(
            model_repository=config.triton_repo, startup_timeout_s=config.ready_timeout_s
        )
    )
    policy = RestartPolicy(
        initial_delay_s=config.triton_restart_initial_s,
        max_delay_s=config.triton_restart_max_s,
        reset_after_s=config.triton_restart_reset_s,
    )
    return TritonSupervisor(
        server,
        policy,
        probe_interval_s=config.health_interval_s,
        unhealthy_after_s=config.triton_unhealthy_s,
    )


def create_server(
    config: RouterConfig,
    router: Router,
    health_servicer: health.aio.HealthServicer | None = None,
    metrics: RouterMetrics | None = None,
    limiter: ClientLimiter | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server with the Router service, health (NOT_SERVING) and reflection.

    Args:
        limiter: Per-client concurrency (a new one from ``config.limits`` when None).

    Returns:
        The server, bound but not started, and its port (the free one picked for port 0).

    Raises:
        PortInUseError: The address cannot be bound.
        ConfigError: A TLS file or token file cannot be read.
    """
    limiter = limiter or ClientLimiter(config.limits.max_concurrent_per_client)
    credentials = (
        server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        if config.tls_cert is not None and config.tls_key is not None
        else None
    )
    server = grpc.aio.server(
        interceptors=[
            AuthInterceptor(config.tokens()),
            QueueGate(router.batcher, metrics),
            GuardInterceptor(limiter),
        ],
        options=server_options(router.batcher.config.max_queue, config.max_message_bytes),
    )
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
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
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
        self.limiter = ClientLimiter(config.limits.max_concurrent_per_client)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.serving = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._metrics_server: Any = None
        self._watcher: asyncio.Task[None] | None = None
        self._serving_state: bool | None = None
        self._wake = asyncio.Event()
        self._fast_until_s = 0.0
        self._unfollow: Callable[[], None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Binds and starts the server (health NOT_SERVING) and the readiness watcher."""
        self._server, self.port = create_server(
            self.config, self.router, self.health, self.metrics, self.limiter
        )
        await self._set_serving(False)
        await self._server.start()
        if self.metrics is not None:
            loop = asyncio.get_running_loop()
            # the view never fails on a shared store: a scrape during an outage still answers
            self.metrics.watch(
                lambda: self.router.batcher.queue_depth,
                self.router.budget.view,
                tasks=lambda: len(asyncio.all_tasks(loop)),  # safe off the loop's thread
                in_flight=self.limiter.in_flight,
            )
            if self.config.metrics_port is not None:
                self._metrics_server, self.metrics_port = serve_metrics(
                    self.metrics, self.config.metrics_port, self.config.metrics_host
                )
        c = self.config
        tokens = c.tokens()
        log.info(
            "gRPC server listening on %s:%d (%s, tokens: %s, budget store: %s)",
            c.host,
            self.port,
            "mTLS" if c.tls_client_ca else "TLS" if c.tls else "plaintext",
            ", ".join(k for k in ("generation", "admin") if getattr(tokens, k)) or "none",
            self.router.budget.store.description,
        )
        if not c.tls and not is_loopback(c.host):
            log.warning("serving plaintext on %s (--insecure): tokens travel in clear", c.host)
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

    def follow(self, supervisor: TritonSupervisor) -> None:
        """Has health follow a managed Triton's supervisor (call from the running loop).

        When the supervisor sees Triton die, health turns NOT_SERVING at once and the engines
        count as down; when it is back, readiness is checked every 0.1 s until SERVING.
        """
        loop = asyncio.get_running_loop()

        def down(reason: str) -> None:
            loop.call_soon_threadsafe(self._triton_down, reason)

        def up() -> None:
            loop.call_soon_threadsafe(self._triton_up)

        self._unfollow = supervisor.subscribe(down, up)

    async def stop(self) -> None:
        """Graceful stop: NOT_SERVING, drain in-flight calls for up to grace_s, flush state."""
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            await self.health.enter_graceful_shutdown()
            await self._server.stop(self.config.grace_s)
        await self.router.close()
        self.router.budget.close()  # flushes (a shared store: replays what an outage held back)
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

    def _triton_down(self, reason: str) -> None:
        log.warning("health NOT_SERVING: Triton is down (%s)", reason)
        for name in self.router.engine_names:
            self.router.set_engine_ready(name, False)
        task = asyncio.ensure_future(self._set_serving(False))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._wake.set()

    def _triton_up(self) -> None:
        self._fast_until_s = asyncio.get_running_loop().time() + _FAST_POLL_WINDOW_S
        self._wake.set()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                readiness = await self.router.readiness(timeout_s=self.config.health_interval_s)
                serving = readiness.serving
            except Exception as e:
                log.warning("readiness check failed: %s", e)
                serving, readiness = False, None
            if serving != self._serving_state:
                log.info("health %s: %s", "SERVING" if serving else "NOT_SERVING", readiness)
            await self._set_serving(serving)
            self.router.budget.flush_due()
            interval_s = self.config.health_interval_s
            if not serving and loop.time() < self._fast_until_s:
                interval_s = min(interval_s, _FAST_POLL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)

    async def _set_serving(self, serving: bool) -> None:
        self._serving_state = serving
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        if serving:
            self.serving.set()
