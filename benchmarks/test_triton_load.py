"""Keeps benchmarks/triton_load.py from rotting: a small run against tiny engines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.unet import tiny_unet_config

pytestmark = pytest.mark.integration


def _load_script():
    path = Path(__file__).with_name("triton_load.py")
    spec = importlib.util.spec_from_file_location("triton_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_load_generator_reports_every_variant(tmp_path):
    torch.manual_seed(0)
    unet = tiny_unet_config("pooled")
    config = EngineConfig(name="edge_small", unet=unet, default_steps=2, max_steps=4)
    save_engine(Denoiser(unet).eval(), config, tmp_path / "models" / "edge_small")
    out = tmp_path / "load.json"
    result = _load_script().main(
        [
            "--models", "edge_small", "--models-dir", str(tmp_path / "models"),
            "--concurrency", "1", "4", "--queue-delays-us", "5000", "--requests", "8",
            "--repeats", "2", "--out", str(out), "--table", str(tmp_path / "t.md"),
        ]
    )  # fmt: skip
    assert out.exists() and (tmp_path / "t.md").exists()
    variants = result["triton"]["edge_small"]
    assert set(variants) == {
        "batching_delay_5000us",
        "batching_delay_5000us_bls_encoder",
        "no_batching",
    }
    for rows in variants.values():
        assert [r["concurrency"] for r in rows] == [1, 4]
        assert all(r["images_per_s"] > 0 and r["p99_latency_s"] >= r["p50_latency_s"] for r in rows)
    summary = result["summary"]["edge_small"]
    assert summary["batching_speedup_at_c4"] > 0
    assert summary["bls_encoder_over_inline_throughput_at_c4"] > 0
