"""estimator_serving runs small (a real tritonserver included), writes every key, and batching
lowers the per-prompt latency in the same run."""

from __future__ import annotations

import json

import estimator_serving
import pytest

pytestmark = pytest.mark.integration


def test_small_run_writes_every_key_and_batch_64_beats_batch_1(tmp_path) -> None:
    out = tmp_path / "estimator_serving.json"
    estimator_serving.main(["--repeats", "5", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report) >= {
        "command",
        "threads",
        "repeats",
        "host",
        "cpu_count",
        "load_average_1m",
        "features",
        "choices",
        "metrics",
        "model",
        "ms_per_prompt",
        "engine_costs",
    }
    ms = report["ms_per_prompt"]
    assert set(ms) == set(estimator_serving.PATHS)
    ratio = {}
    for path, figures in ms.items():
        assert set(figures) == {"batch_1_ms_per_prompt", "batch_64_ms_per_prompt"}, path
        b1, b64 = figures["batch_1_ms_per_prompt"], figures["batch_64_ms_per_prompt"]
        assert b1 > 0 and b64 > 0
        ratio[path] = b64 / b1
    # Ratios within one run (batch sizes take turns), so that the host's load cancels. Through
    # Triton a batch of 64 shares one round trip (~4 ms here): measured 0.09. In-process it
    # shares the tokenizer and ORT calls' overhead: measured 0.4-0.6 on the loaded 2-core host.
    assert ratio["triton"] < 0.5, ms
    assert ratio["in_process"] < 1.0, ms
    costs = report["engine_costs"]
    assert set(costs["engines"]) == {"edge_small", "cloud_large"}
    assert set(costs["choices"]) == set(report["choices"])
    for engine in costs["engines"].values():
        assert engine["gflops_per_image"] > 0 and engine["batch_1_ms_per_image"] > 0
