"""`t2i-router demo`, run tiny as a user would (a subprocess) with an untrained seeded estimator
in a temporary folder: it writes its three files and a complete summary, and leaves no process
behind. Its processes are found by a marker in their environment, which Triton and its Python
backend stubs inherit; the test first sees a tritonserver carry it, so the final check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = 16
MARKER = "T2I_ROUTER_DEMO_TEST"


def marked_processes(token: str) -> dict[int, str]:
    """pid -> name of every process whose environment holds ``MARKER=token``."""
    needle = f"{MARKER}={token}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:  # gone, or not ours
            continue
    return found


@pytest.fixture(scope="module")
def untrained_estimator(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = TokenSelectionMoE(EstimatorConfig(features="static"))
    return model.save_pretrained(tmp_path_factory.mktemp("estimator"))


def test_demo_writes_figures_and_summary_and_leaves_no_process(untrained_estimator, tmp_path):
    out = tmp_path / "demo"
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        MARKER: token,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "service"), str(ROOT / "clients/python"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    command = [sys.executable, "-m", "t2i_router.cli", "demo", "--estimator",
               str(untrained_estimator), "--prompts", str(PROMPTS), "--concurrency", "4",
               "--baseline-prompts", "8", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: set[str] = set()
    while process.poll() is None:
        seen |= set(marked_processes(token).values())
        time.sleep(0.5)
    output = process.stdout.read()
    assert process.returncode == 0, output[-3000:]
    assert "tritonserver" in seen, seen
    assert marked_processes(token) == {}

    assert {p.name for p in out.iterdir()} == {"rate_lambda.png", "grid.png", "summary.json"}
    for name in ("rate_lambda.png", "grid.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert {"command", "estimator", "rate", "quality", "latency_ms", "wall_s"} <= set(summary)
    assert summary["requests"] == PROMPTS and summary["errors"] == 0
    assert summary["estimator"]["dir"] == str(untrained_estimator)
    assert summary["command"].startswith("t2i-router demo --estimator")
    rate = summary["rate"]
    assert rate["target_rate"] == 0.3 and rate["counted_decisions"] == PROMPTS
    assert 0 <= rate["final_rate"] <= 1 and rate["max_rate_error_after_warmup"] >= 0
    quality = summary["quality"]
    for block in ("all", "before", "after"):
        q = quality[block]
        assert {"routed", "all_edge", "all_cloud", "random_same_rate"} <= set(q)
        low, high = sorted((q["all_edge"], q["all_cloud"]))
        assert low - 1e-9 <= q["random_same_rate"] <= high + 1e-9
    assert quality["before"]["prompts"] == quality["after"]["prompts"] == 4  # of 8 compared
    for stage in ("queue_ms", "estimate_ms", "generate_ms", "total_ms", "client_ms"):
        assert 0 <= summary["latency_ms"][stage]["p50"] <= summary["latency_ms"][stage]["p99"]
