"""benchmarks/triton_load.py in one small run against a tiny engine: what dynamic batching buys.

The script's goal (issue 4) is >= 2.5x images/s with dynamic batching at concurrency 32 on the
trained engines; that applies to the full run only (``.venv/bin/python
benchmarks/triton_load.py``, minutes, docs/triton_benchmark.md). Here, at concurrency 4, at
most 4 requests can share an execution, so batching can gain at most about 4x, and a tiny UNet
leaves gRPC, the Python backend and the text encoder a larger share of each request. This test
asserts the mechanism (requests shared executions with batching, never without) and a weaker
speedup, 1.25x at concurrency 4, with a wide margin: 3.03x was measured on a 2-core host at a
load average of 8-10 (16 requests, 5 ms queue delay).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch

from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.engine import WEIGHTS_FILE
from t2i_router.engines.unet import tiny_unet_config

pytestmark = pytest.mark.integration

MIN_SPEEDUP_AT_C4 = 1.25


def _load_script():
    path = Path(__file__).with_name("triton_load.py")
    spec = importlib.util.spec_from_file_location("triton_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows_per_execution(rows: list[dict]) -> float:
    """Requests per model execution during the concurrency-4 load (the counters are totals)."""
    c1, c4 = rows
    inferences = c4["inferences_total"] - c1["inferences_total"]
    return inferences / (c4["executions_total"] - c1["executions_total"])


def test_dynamic_batching_shares_executions_and_raises_throughput(tmp_path):
    torch.manual_seed(0)
    unet = tiny_unet_config("pooled")
    config = EngineConfig(name="edge_small", unet=unet, default_steps=2, max_steps=4)
    engine_dir = save_engine(Denoiser(unet).eval(), config, tmp_path / "models" / "edge_small")
    out = tmp_path / "load.json"
    result = _load_script().main(
        [
            "--models", "edge_small", "--models-dir", str(tmp_path / "models"),
            "--concurrency", "1", "4", "--queue-delays-us", "5000", "--requests", "16",
            "--repeats", "2", "--out", str(out), "--table", str(tmp_path / "t.md"),
        ]
    )  # fmt: skip
    assert out.exists() and (tmp_path / "t.md").exists()
    # what was measured: these weights, sampled as the engine's config says
    weights = hashlib.sha256((engine_dir / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert result["engines"]["edge_small"] == {"weights_sha256": weights, **config.sampling()}
    assert weights[:16] in (tmp_path / "t.md").read_text()
    variants = result["triton"]["edge_small"]
    assert set(variants) == {
        "batching_delay_5000us",
        "batching_delay_5000us_bls_encoder",
        "no_batching",
    }
    for rows in variants.values():
        assert [r["concurrency"] for r in rows] == [1, 4]
        assert all(r["images_per_s"] > 0 and r["p99_latency_s"] >= r["p50_latency_s"] for r in rows)
    # the mechanism: with batching, concurrent requests shared executions; without, never
    assert _rows_per_execution(variants["no_batching"]) == 1.0
    for label in ("batching_delay_5000us", "batching_delay_5000us_bls_encoder"):
        assert _rows_per_execution(variants[label]) >= 1.5, (label, variants[label])
    summary = result["summary"]["edge_small"]
    assert summary["batching_speedup_at_c4"] >= MIN_SPEEDUP_AT_C4, summary
    assert summary["bls_encoder_over_inline_throughput_at_c4"] > 0
