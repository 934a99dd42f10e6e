"""Reading Triton's log: its tail without the options table, and the port it could not bind."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["LOG_TAIL_LINES", "PORT_IN_USE_RE", "port_in_use", "read_log_tail"]

LOG_TAIL_LINES = 30

# How Triton 2.51 reports a port it could not bind, e.g.
#   "Failed to start HTTP service: Unavailable - Socket '127.0.0.1:8000' already in use"
#   "failed to start GRPC service: Unavailable - Socket '127.0.0.1:8001' already in use"
PORT_IN_USE_RE = re.compile(r"Socket '[^']*:(\d+)' already in use")


def _without_options_table(lines: list[str]) -> list[str]:
    """Drops the wide "| Option | Value |" table Triton prints at startup and on exit."""
    kept: list[str] = []
    in_table = False
    for line in lines:
        if line.startswith("| Option "):
            in_table = True
            if kept and kept[-1].startswith("+--"):
                kept.pop()
        elif in_table and not line.strip():
            in_table = False
        elif not in_table:
            kept.append(line)
    return kept


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a Triton log, less its options table ('' if unreadable)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(_without_options_table(text.splitlines())[-lines:])


def port_in_use(log_text: str) -> int | None:
    """The port Triton's log says it could not bind, or None."""
    match = PORT_IN_USE_RE.search(log_text)
    return None if match is None else int(match.group(1))
