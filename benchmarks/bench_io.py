"""What the router benchmarks share: the host they ran on and where their JSON goes.

Every result names the command that made it and the host's load (the shared 2-core hosts this
project measures on inflate every latency, so a figure without its load average means little).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

__all__ = ["host_info", "write_result"]


def host_info() -> dict:
    """Machine, CPU count and the 1-minute load average now."""
    return {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def write_result(result: dict, out: str | Path | None, name: str) -> Path:
    """Writes ``result`` as indented JSON to ``out`` (default:
    ``benchmarks/results/<name>-<time>.json``), prints it, and returns the path."""
    path = Path(out or f"benchmarks/results/{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
