"""The batch-invariance measurement runs on a tiny engine and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import batch_invariance
import torch

from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.unet import TINY_ENGINE_UNETS


def test_batch_invariance_tiny_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["cloud_large"], default_steps=3)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "tiny")
    args = ["--engine", "tiny", "--sampler", "ddim", "unipc", "--n", "6"]
    args += ["--models-dir", str(tmp_path / "models"), "--results-dir", str(tmp_path)]
    rows = batch_invariance.main(args)
    saved = json.loads((tmp_path / "batch_invariance.json").read_text())
    assert saved["rows"] == rows and 0 < saved["n_prompts"] <= 6  # the training pool excluded
    assert [r["sampler"] for r in rows] == ["ddim", "unipc"]
    for r in rows:
        assert r["values"] == saved["n_prompts"] * 32 * 32 * 3
        assert r["within_claim"], r  # t2i_router.engines.invariance: <= 1 level on <= 0.1%
        assert 0.0 <= r["unet_max_abs_difference"] < 1e-4
