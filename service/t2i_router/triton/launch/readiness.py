"""Polling a Triton until it reports ready (gRPC) and its HTTP pages answer."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Sequence

__all__ = ["ReadinessProbe", "wait_until_ready"]

_POLL_INTERVAL_S = 0.2

# A fresh gRPC channel backs off exponentially between failed connection attempts (1 s, 1.6 s,
# 2.6 s, ... by default), which would notice a server that became ready seconds late. Readiness
# polls use their own subchannel pool and a short backoff instead.
_READINESS_CHANNEL_ARGS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def _server_ready(client: object, timeout_s: float) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return bool(client.is_server_ready(client_timeout=timeout_s))  # type: ignore[attr-defined]
    except InferenceServerException:
        return False


class ReadinessProbe:
    """Asks one Triton, again and again over one channel, whether it is ready (gRPC).

    Args:
        grpc_url: ``host:port`` of its gRPC service.
    """

    def __init__(self, grpc_url: str) -> None:
        import tritonclient.grpc

        self.grpc_url = grpc_url
        self._client = tritonclient.grpc.InferenceServerClient(
            grpc_url, channel_args=_READINESS_CHANNEL_ARGS
        )

    def ready(self, timeout_s: float) -> bool:
        """True when the server answered ready within ``timeout_s``."""
        return _server_ready(self._client, timeout_s)

    def close(self) -> None:
        self._client.close()


def _http_ok(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def wait_until_ready(
    grpc_url: str,
    timeout_s: float,
    is_alive: Callable[[], bool] | None = None,
    http_probe_urls: Sequence[str] = (),
) -> bool:
    """Polls a Triton until it is ready, ``is_alive`` fails, or time runs out.

    Args:
        grpc_url: ``host:port`` of the gRPC service, asked for server readiness.
        timeout_s: The longest to wait.
        is_alive: Checked between polls; when it turns False, waiting stops.
        http_probe_urls: URLs that must also answer 200 (the HTTP health and metrics pages).

    Returns:
        True when the server reported ready.
    """
    import tritonclient.grpc

    deadline = time.monotonic() + timeout_s
    client = tritonclient.grpc.InferenceServerClient(grpc_url, channel_args=_READINESS_CHANNEL_ARGS)
    try:
        while True:
            probe_timeout_s = max(0.1, min(1.0, deadline - time.monotonic()))
            if _server_ready(client, probe_timeout_s) and all(
                _http_ok(url, probe_timeout_s) for url in http_probe_urls
            ):
                return True
            if (is_alive is not None and not is_alive()) or time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL_S)
    finally:
        client.close()
