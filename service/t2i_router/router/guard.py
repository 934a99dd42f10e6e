"""Per-call guards on the Router service: malformed bytes and per-client concurrency.

`GuardInterceptor` wraps every ``t2i_router.v1.Router`` handler:

- a request whose bytes do not parse as its message answers INVALID_ARGUMENT (grpc's default
  would be INTERNAL, which tells the caller nothing about whose fault it was);
- each client may have at most ``max_concurrent_per_client`` calls in flight (a GenerateBatch
  stream is one call); one more answers RESOURCE_EXHAUSTED at once, quoting the limit. The slot
  is freed when the call ends, however it ends (answer, error, deadline, cancellation).

A client is the subject of its TLS client certificate under mTLS, else its peer address without
the port (``ipv4:10.0.0.7``): every connection from one host shares its slots. Health and
reflection are not guarded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from t2i_router.errors import InvalidRequest, ResourceExhausted
from t2i_router_client import SERVICE_NAME

__all__ = ["ClientLimiter", "GuardInterceptor", "client_of"]

log = logging.getLogger(__name__)

_GUARDED_PREFIX = f"/{SERVICE_NAME}/"


class ClientLimiter:
    """Counts calls in flight per client; refuses one beyond ``limit`` (no waiting).

    Args:
        limit: Most calls one client may have in flight (>= 1).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise InvalidRequest(f"max_concurrent_per_client is {limit}, must be >= 1")
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def in_flight(self, client: str | None = None) -> int:
        """Calls in flight for ``client``, or for every client when None."""
        if client is None:  # list() copies in one step, so a scrape's thread may call this
            return sum(list(self._in_flight.values()))
        return self._in_flight.get(client, 0)

    def acquire(self, client: str) -> None:
        n = self._in_flight.get(client, 0)
        if n >= self.limit:
            raise ResourceExhausted(
                f"client {client} has {n} calls in flight, the limit is "
                f"max_concurrent_per_client={self.limit}"
            )
        self._in_flight[client] = n + 1

    def release(self, client: str) -> None:
        n = self._in_flight.get(client, 0) - 1
        if n > 0:
            self._in_flight[client] = n
        else:  # no entry kept for an idle client, so the table does not grow with peers
            self._in_flight.pop(client, None)


def client_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's identity: its certificate's subject under mTLS, else its host."""
    auth = context.auth_context() or {}
    for key in ("x509_common_name", "x509_subject"):
        values = auth.get(key)
        if values:
            return f"cert:{values[0].decode('utf-8', 'replace')}"
    peer = context.peer() or "unknown"
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


@dataclass(frozen=True)
class _Malformed:
    message: str


def _safe(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception as e:  # protobuf's DecodeError, or anything a parser raises
            return _Malformed(
                f"the request to {method} ({len(data)} bytes) is not a valid message: "
                f"{type(e).__name__}"
            )

    return parse


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Malformed requests -> INVALID_ARGUMENT; per-client concurrency -> RESOURCE_EXHAUSTED."""

    def __init__(self, limiter: ClientLimiter) -> None:
        self.limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_GUARDED_PREFIX):
            return handler
        parse = _safe(handler.request_deserializer, details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return handler  # the Router service has no client-streaming methods

    async def _admit(self, request: Any, context: grpc.aio.ServicerContext) -> str:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        client = client_of(context)
        try:
            self.limiter.acquire(client)
        except ResourceExhausted as e:
            log.info("refused a call: %s", e)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return client

    def _unary(self, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            client = await self._admit(request, context)
            try:
                return await inner(request, context)
            finally:
                self.limiter.release(client)

        return behavior

    def _stream(
        self, inner: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            client = await self._admit(request, context)
            try:
                async for response in inner(request, context):
                    yield response
            finally:
                self.limiter.release(client)

        return behavior
