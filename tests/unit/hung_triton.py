"""A gRPC server speaking Triton's inference service that never answers: a hung tritonserver.

`HungTriton` takes ServerReady and ModelInfer calls and holds them (ModelReady answers ready, or
is held too), as a Triton whose process lives but whose models or threads are stuck does: the
connection is up, HTTP/2 pings are acknowledged, no reply comes. Run as a script
(``python hung_triton.py``: prints its port, serves until killed) it is a process of its own that
a test can freeze with SIGSTOP, which silences the connection itself: pings go unanswered too.
"""

from __future__ import annotations

import collections
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from tritonclient.grpc import service_pb2

_SERVICE = "inference.GRPCInferenceService"


class HungTriton:
    """A server on ``port`` (0: a free one, then `port`) holding every call it takes.

    Args:
        port: Loopback port to bind.
        models_ready: Answer ModelReady with ready=True (a router then counts as SERVING);
            False holds those calls too.
        min_ping_interval_ms: Least time between client pings it accepts, with calls or
            without, as Triton started with `t2i_router.triton.channel.server_keepalive_flags`
            (grpc's server default refuses pings closer than 5 min apart).
    """

    def __init__(
        self, port: int = 0, models_ready: bool = False, min_ping_interval_ms: int = 5000
    ) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.cancelled = 0  # held calls whose client went away (deadline, cancellation, drop)
        self.release = threading.Event()
        self._lock = threading.Lock()

        def hold(method: str):
            def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
                with self._lock:
                    self.calls[method] += 1
                while context.is_active() and not self.release.wait(0.01):
                    pass
                if not context.is_active():
                    with self._lock:
                        self.cancelled += 1
                return b""

            return grpc.unary_unary_rpc_method_handler(handler)

        def model_ready(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.calls["ModelReady"] += 1
            return service_pb2.ModelReadyResponse(ready=True).SerializeToString()

        methods = {name: hold(name) for name in ("ServerReady", "ModelInfer", "ModelReady")}
        if models_ready:
            methods["ModelReady"] = grpc.unary_unary_rpc_method_handler(model_ready)
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=16),
            handlers=[grpc.method_handlers_generic_handler(_SERVICE, methods)],
            options=[
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", min_ping_interval_ms),
            ],
        )
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port and (port == 0 or self.port == port), (port, self.port)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> HungTriton:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.stop(0)


if __name__ == "__main__":  # a process of its own, to be frozen (SIGSTOP) and killed by a test
    with HungTriton(0, models_ready=True, min_ping_interval_ms=int(sys.argv[1])) as hung:
        print(hung.port, flush=True)
        hung.server.wait_for_termination()  # until SIGTERM or SIGKILL
