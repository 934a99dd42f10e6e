"""How the router sheds a burst larger than its queue: RESOURCE_EXHAUSTED, never CANCELLED.

The router's own bound is ``max_queue`` prompts waiting for the estimator (`router.batching`).
In front of it sits a second, hidden one: grpc's C core holds the calls it has received but the
Python server has not yet taken in (one per turn of the event loop and method), and beyond
``grpc.server.max_pending_requests`` (default 1,000, dropping at random up to the hard limit of
3,000) it drops them as CANCELLED before the router sees them. A burst of 10 x 1,024 calls lost
two thirds of itself that way (docs/operations.md, "Overload and soak"). Two parts fix it:

- `server_options`: grpc's pending limits raised in proportion to the router's bound
  (`PENDING_CALLS_PER_QUEUE_SLOT` x ``max_queue``, never below grpc's defaults), so a burst of
  that size waits whole in grpc and reaches the router, which answers each call;
- `QueueGate`: an interceptor that refuses Route and Generate with RESOURCE_EXHAUSTED, quoting
  the bound exactly as the queue does, while the queue is full, before the request is parsed,
  guarded or tokenized, so a burst's excess costs the router little next to the calls it
  accepts.

grpc still cancels a call it has held unrequested for 30 s
(``grpc.server_max_unrequested_time_in_server``, left at its default): a burst the router cannot
take in within that time is shed partly as CANCELLED.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from t2i_router_client import SERVICE_NAME

if TYPE_CHECKING:
    from t2i_router.router.batching import MicroBatcher
    from t2i_router.router.metrics import RouterMetrics

__all__ = ["GRPC_PENDING_DEFAULTS", "PENDING_CALLS_PER_QUEUE_SLOT", "QueueGate", "server_options"]

#: Calls grpc may hold for the router per prompt of ``max_queue``: a burst of 16 x the queue
#: bound arriving at once reaches the router whole (issue 22 asks for 10 x).
PENDING_CALLS_PER_QUEUE_SLOT = 16
#: grpc's own soft and hard limits of pending calls; the router never sets them lower.
GRPC_PENDING_DEFAULTS = (1000, 3000)
#: Rpcs whose every prompt waits in the queue (GenerateBatch answers each item on its own).
_GATED = frozenset(f"/{SERVICE_NAME}/{rpc}" for rpc in ("Route", "Generate"))


def server_options(max_queue: int, max_message_bytes: int) -> list[tuple[str, int]]:
    """The grpc.aio server's channel arguments: the message size limit both ways, and grpc's
    pending-call limits (soft and hard) at `PENDING_CALLS_PER_QUEUE_SLOT` x ``max_queue`` (the
    router's queue bound), or grpc's defaults where those are higher."""
    pending = PENDING_CALLS_PER_QUEUE_SLOT * max_queue
    soft, hard = (max(pending, default) for default in GRPC_PENDING_DEFAULTS)
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.server.max_pending_requests", soft),
        ("grpc.server.max_pending_requests_hard_limit", hard),
    ]


class QueueGate(grpc.aio.ServerInterceptor):
    """Refuses Route and Generate while the queue is full (see the module docstring).

    Args:
        batcher: The router's micro-batcher, whose ``queue_full`` message a refusal quotes.
        metrics: Counts a refusal as the servicer would (rpc, status RESOURCE_EXHAUSTED).
    """

    def __init__(self, batcher: MicroBatcher, metrics: RouterMetrics | None = None) -> None:
        self.batcher = batcher
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method not in _GATED:
            return await continuation(details)
        full = self.batcher.queue_full()
        if full is None:
            return await continuation(details)
        return self._refusal(details.method.rsplit("/", 1)[1], str(full))

    def _refusal(self, rpc: str, message: str) -> grpc.RpcMethodHandler:
        start_s = time.perf_counter()

        # No deserializer: the request's bytes are never parsed for a refused call.
        async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
            if self.metrics is not None:
                self.metrics.request(rpc, "", "RESOURCE_EXHAUSTED", time.perf_counter() - start_s)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        return grpc.unary_unary_rpc_method_handler(refuse)
