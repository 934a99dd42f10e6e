"""Ports for a tritonserver: free ones picked, requested ones checked before start."""

from __future__ import annotations

import contextlib
import errno
import socket

from t2i_router.errors import PortInUseError, TritonStartError

__all__ = ["check_port_free", "pick_free_ports"]


def pick_free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports on ``host`` that were free a moment ago."""
    # The sockets are closed before tritonserver binds, so another process can take a port in
    # between (a race). It is rare, and then startup fails with PortInUseError naming the port.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def check_port_free(host: str, port: int) -> None:
    """Raises PortInUseError when something listens on ``host:port`` already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so a port left in TIME_WAIT by an earlier server still counts as free, as
        # it does for tritonserver; an active listener still makes bind fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(port, f"port {port} on {host} is already in use") from e
            raise TritonStartError(f"cannot bind {host}:{port}: {e}") from e
