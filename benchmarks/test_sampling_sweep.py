"""The sampling sweep runs on a tiny engine and writes its JSON and table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


def test_sampling_sweep_resume_keeps_finished_settings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["edge_small"], default_steps=2)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "tiny")
    common = ["--engine", "tiny", "--guidance", "2", "--n", "4", "--seeds", "1"]
    common += ["--models-dir", str(tmp_path / "models")]
    common += ["--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    sampling_sweep.main([*common, "--steps", "1"])
    results = tmp_path / "sampling_tiny.json"
    saved = json.loads(results.read_text())
    assert saved["prompt_seed"] == sampling_sweep.TUNING_SEED
    saved["rows"][0]["seconds_per_image"] = -1.0  # a mark: a rerun setting would overwrite it
    results.write_text(json.dumps(saved))
    rows = sampling_sweep.main([*common, "--steps", "1", "2", "--resume"])
    assert [(r["steps"], r["seconds_per_image"] == -1.0) for r in rows] == [(1, True), (2, False)]
    assert len(json.loads(results.read_text())["rows"]) == 2
    doc = (tmp_path / "sampling_tiny.md").read_text()
    assert doc.count(".venv/bin/python benchmarks/sampling_sweep.py") == 2
    assert "--steps 1\n" in doc and "--steps 1 2 --resume\n" in doc  # both runs
    assert doc.index("| 1 | 2.0 | 0.0 |") < doc.index("| 2 | 2.0 | 0.0 |")
    with pytest.raises(SystemExit):  # other prompts than the saved rows were measured on
        sampling_sweep.main([*common[:5], "8", *common[6:], "--steps", "1", "--resume"])
    assert saved["weights"].startswith("sha256 ") and f"Weights: {saved['weights']}." in doc
    torch.manual_seed(1)  # other weights: their rows cannot be mixed with the saved ones
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "tiny")
    with pytest.raises(SystemExit):
        sampling_sweep.main([*common, "--steps", "1", "--resume"])


def test_sampling_sweep_compares_samplers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["edge_small"], default_steps=2)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "tiny")
    args = ["--engine", "tiny", "--steps", "3", "--guidance", "1", "--n", "4", "--seeds", "1"]
    args += ["--sampler", "ddim", "unipc", "--models-dir", str(tmp_path / "models")]
    args += ["--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    rows = sampling_sweep.main(args)
    assert [r["sampler"] for r in rows] == ["ddim", "unipc"]
    assert rows[0]["mean_alignment"] != rows[1]["mean_alignment"]  # the sampler is used
    doc = (tmp_path / "sampling_tiny.md").read_text()
    assert "| ddim | 3 | 1.0 | 0.0 |" in doc and "| unipc | 3 | 1.0 | 0.0 |" in doc
    with pytest.raises(SystemExit):
        sampling_sweep.main([*args, "--sampler", "euler"])
