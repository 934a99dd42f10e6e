"""The router's gRPC channel to Triton: message sizes, reconnection backoff and keepalive.

Keepalive pings go out with calls in flight or not, so that a Triton that stops answering
altogether (frozen, its host gone, a silent network) is found and its calls fail UNAVAILABLE
instead of waiting forever. Triton must accept pings that often: start it with
`server_keepalive_flags` (the managed one is; docs/operations.md tells it for an external one).
"""

from __future__ import annotations

from typing import Any

import tritonclient.grpc as grpcclient

__all__ = ["channel_args", "default_keepalive", "server_keepalive_flags"]

_INT32_MAX = 2**31 - 1


def default_keepalive() -> grpcclient.KeepAliveOptions:
    """A ping every 10 s, with calls or without; a ping unanswered for 20 s closes the
    connection and fails its calls UNAVAILABLE. A Triton that answers nothing is found within
    30 s of its last answer, and a long quiet call (a cloud image under load: p99 up to 26 s
    in benchmarks/results/triton_load.json) is not taken for a dead peer while pings are
    acknowledged."""
    return grpcclient.KeepAliveOptions(
        keepalive_time_ms=10_000,
        keepalive_timeout_ms=20_000,
        keepalive_permit_without_calls=True,
        http2_max_pings_without_data=0,  # go on pinging an idle channel, not twice only
    )


def server_keepalive_flags(keepalive: grpcclient.KeepAliveOptions | None = None) -> list[str]:
    """tritonserver flags that accept ``keepalive``'s pings (`default_keepalive` when None).

    Triton's defaults take a ping without calls, or one less than 5 min after the last while it
    sends nothing, as abuse; after two of them it sends GOAWAY "too_many_pings" and drops the
    connection (Triton 2.51, measured: a client pinging every second while idle was cut off
    after 3 s). These flags accept pings at half the client's interval.
    """
    keepalive = keepalive or default_keepalive()
    return [
        f"--grpc-keepalive-permit-without-calls={int(keepalive.keepalive_permit_without_calls)}",
        f"--grpc-http2-min-recv-ping-interval-without-data={keepalive.keepalive_time_ms // 2}",
    ]


def channel_args(
    max_reconnect_backoff_ms: int, keepalive: grpcclient.KeepAliveOptions
) -> list[tuple[str, Any]]:
    """grpc channel arguments of `TritonClient` (tritonclient ignores its ``keepalive_options``
    when ``channel_args`` are given, so keepalive is passed here too).

    The ping timeout is set to the keepalive timeout: with grpcio 1.85 an unanswered keepalive
    ping waited for ``grpc.http2.ping_timeout_ms`` (60 s by default), not for
    ``keepalive_timeout_ms`` (seen here: a call to a SIGSTOPped server failed after 60.5 s with
    1 s keepalive settings, after 1.0 s with this; tests/unit/test_triton_client.py).
    """
    return [
        ("grpc.max_send_message_length", _INT32_MAX),
        ("grpc.max_receive_message_length", _INT32_MAX),
        ("grpc.initial_reconnect_backoff_ms", min(1000, max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(keepalive.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.http2.ping_timeout_ms", keepalive.keepalive_timeout_ms),
    ]
