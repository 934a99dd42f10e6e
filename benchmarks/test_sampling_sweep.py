"""The sampling sweep runs on a tiny engine and writes its JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import sampling_sweep
import torch

from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.unet import TINY_ENGINE_UNETS


def test_sampling_sweep_tiny_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["edge_small"], default_steps=2)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "tiny")
    args = ["--engine", "tiny", "--steps", "1", "2", "--guidance", "0", "2", "--n", "4"]
    args += ["--seeds", "1", "--models-dir", str(tmp_path / "models")]
    args += ["--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    rows = sampling_sweep.main(args)
    assert [(r["steps"], r["guidance"]) for r in rows] == [(1, 0.0), (1, 2.0), (2, 0.0), (2, 2.0)]
    assert all(0.0 <= r["mean_alignment"]["all"] <= 1.0 for r in rows)
    assert len({r["mean_alignment"]["all"] for r in rows}) > 1  # the settings reach the sampler
    saved = json.loads((tmp_path / "sampling_tiny.json").read_text())
    assert saved["rows"] == rows
    assert "| 2 | 2.0 |" in (tmp_path / "sampling_tiny.md").read_text()
