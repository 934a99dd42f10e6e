"""Prometheus metrics of one router, in a registry of its own (no process-wide state).

Exported (prefix ``t2i_router_``):
- ``requests_total{rpc, choice, status}``: finished requests per rpc, chosen choice ("" when
  none was chosen) and gRPC status name;
- ``stage_seconds{stage}``: latency histograms per stage (queue, estimate, decide, generate,
  encode) and ``request_seconds{rpc}`` per whole rpc;
- ``queue_depth``: prompts waiting in the micro-batcher; ``batch_size``: histogram of batches;
- ``lambda``, ``lambda_correction`` (kappa, `budget.BudgetSnapshot.correction`),
  ``running_rate``, ``target_rate``, ``running_cost``, ``counted_decisions``,
  ``budget_persisted``, ``budget_pending_decisions``: the budget controller as this router sees
  it, read when scraped (with a shared store: its last view, refreshed at every decision batch);
- ``asyncio_tasks``: unfinished tasks on the serving event loop, and ``calls_in_flight``: calls
  holding a per-client concurrency slot, read when scraped (both return to their idle values
  when a load ends: a leak shows as growth, `benchmarks/router_soak.py`);
- ``process_resident_memory_bytes``, ``process_open_fds``, ``process_cpu_seconds_total``, ...:
  the process itself (prometheus_client's process collector, Linux only).

`serve_metrics` exposes the registry over HTTP (on loopback unless told otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

from t2i_router.router.budget import BudgetSnapshot

__all__ = ["RouterMetrics", "serve_metrics"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class RouterMetrics:
    """The router's Prometheus metrics.

    Args:
        registry: Where they are registered; None makes a new registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "t2i_router_requests",
            "Finished requests by rpc, chosen choice and status",
            ("rpc", "choice", "status"),
            registry=r,
        )
        self.stages = Histogram(
            "t2i_router_stage_seconds",
            "Time per stage of a request",
            ("stage",),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.request_seconds = Histogram(
            "t2i_router_request_seconds",
            "Time per rpc",
            ("rpc",),
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_sizes = Histogram(
            "t2i_router_batch_size",
            "Prompts per estimator batch",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "t2i_router_queue_depth", "Prompts waiting in the micro-batcher", registry=r
        )
        self.asyncio_tasks = Gauge(
            "t2i_router_asyncio_tasks", "Unfinished asyncio tasks on the serving loop", registry=r
        )
        self.calls_in_flight = Gauge(
            "t2i_router_calls_in_flight",
            "Calls holding a per-client concurrency slot",
            registry=r,
        )
        ProcessCollector(registry=r)
        self._budget = {
            name: Gauge(f"t2i_router_{name}", text, registry=r)
            for name, text in (
                ("lambda", "The budget multiplier lambda"),
                (
                    "lambda_correction",
                    "kappa = lambda - lambda_1: the dual steps' correction since the target "
                    "changed (eta times the excess); the rest of lambda is tracking's lambda*",
                ),
                ("running_rate", "Share of counted decisions that went to the cloud"),
                ("target_rate", "Target share of cloud decisions"),
                ("running_cost", "Average cost of counted decisions"),
                ("counted_decisions", "Counted decisions since the budget's start"),
                (
                    "budget_persisted",
                    "1 while the budget state reaches its file or shared store, else 0",
                ),
                (
                    "budget_pending_decisions",
                    "Decisions of this replica not yet in the shared budget store",
                ),
            )
        }

    def stage(self, stage: str, seconds: float) -> None:
        self.stages.labels(stage).observe(seconds)

    def batch(self, size: int) -> None:
        self.batch_sizes.observe(size)

    def request(self, rpc: str, choice: str, status: str, seconds: float | None = None) -> None:
        self.requests.labels(rpc, choice, status).inc()
        if seconds is not None:
            self.request_seconds.labels(rpc).observe(seconds)

    def watch(
        self,
        queue_depth: Callable[[], int],
        budget: Callable[[], BudgetSnapshot],
        tasks: Callable[[], int] | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """Reads the queue depth, the budget, the loop's tasks and the calls in flight when
        scraped (from the HTTP server's thread: each callable must be safe to call there)."""
        self.queue_depth.set_function(queue_depth)
        if tasks is not None:
            self.asyncio_tasks.set_function(tasks)
        if in_flight is not None:
            self.calls_in_flight.set_function(in_flight)
        fields = {
            "lambda": "multiplier",
            "lambda_correction": "correction",
            "running_rate": "running_rate",
            "target_rate": "target_rate",
            "running_cost": "running_cost",
            "counted_decisions": "decisions",
            "budget_persisted": "persisted",
            "budget_pending_decisions": "pending_decisions",
        }
        for name, attribute in fields.items():
            self._budget[name].set_function(
                lambda attribute=attribute: float(getattr(budget(), attribute))
            )


def serve_metrics(metrics: RouterMetrics, port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Serves ``/metrics`` on ``host:port`` (0 = a free port) in a thread.

    Returns:
        The HTTP server (call ``shutdown()`` to stop it) and the port it listens on.
    """
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
