"""compare_weights scores two tiny engines on the same prompts and reads committed weights."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import compare_weights
import numpy as np
import pytest
import torch

from t2i_router.engines import Denoiser, Engine, EngineConfig, save_engine
from t2i_router.engines.engine import WEIGHTS_FILE
from t2i_router.engines.prompts import tuning_prompts
from t2i_router.engines.report import per_level, score_engine
from t2i_router.engines.unet import TINY_ENGINE_UNETS
from t2i_router.world import mean_alignment


def tiny(out_dir: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["cloud_large"], default_steps=2)
    save_engine(Denoiser(config.unet).eval(), config, out_dir)
    return out_dir


def _args(candidate_models: Path, baseline: Path, out: Path, n: int = 8) -> list[str]:
    args = ["--engine", "tiny", "--baseline-dir", str(baseline), "--n", str(n), "--seeds", "1"]
    args += ["--runtime", "torch", "--models-dir", str(candidate_models)]
    return [*args, "--results-dir", str(out), "--docs-dir", str(out)]


def test_an_engine_against_its_own_weights_differs_by_exactly_zero(tmp_path: Path) -> None:
    """Both sides are scored on the same prompts, seeds and sampling: equal weights give the
    same images bit for bit (same batch, same kernels), so every difference is exactly 0."""
    tiny(tmp_path / "models" / "tiny", seed=1)
    same = tiny(tmp_path / "same", seed=1)
    result = compare_weights.main(_args(tmp_path / "models", same, tmp_path))
    base_r, cand_r = result["engines"].values()
    assert base_r["mean_alignment"] == cand_r["mean_alignment"]
    assert result["difference"]["all"] == {"mean": 0.0, "se": 0.0}
    assert all(d["mean"] == 0.0 for d in result["difference"].values())


def test_compare_two_tiny_engines(tmp_path: Path) -> None:
    candidate = tiny(tmp_path / "models" / "tiny", seed=1)
    base = tiny(tmp_path / "base", seed=2)
    result = compare_weights.main(_args(tmp_path / "models", base, tmp_path))
    # Each side is what scoring that engine alone on the tuning prompts gives, under its name,
    # and the difference is candidate minus baseline.
    pairs = tuning_prompts(8)
    levels = np.array([s.complexity for _, s in pairs])
    alone = {
        name: mean_alignment(score_engine(Engine.load(d), pairs, 1)[0])
        for name, d in (("base", base), ("candidate", candidate))
    }
    base_r = result["engines"][str(base)]
    cand_r = result["engines"][f"{candidate} now"]
    assert base_r["mean_alignment"] == per_level(alone["base"], levels)
    assert cand_r["mean_alignment"] == per_level(alone["candidate"], levels)
    want = compare_weights.paired_difference(alone["base"], alone["candidate"], levels)
    assert {lv: d["mean"] for lv, d in result["difference"].items()} == {
        lv: d["mean"] for lv, d in want.items()
    }
    assert result["difference"]["all"]["se"] == want["all"]["se"]
    assert set(cand_r["controls"]) == set(compare_weights.CONTROLS)
    assert json.loads((tmp_path / "compare_tiny.json").read_text())["n_prompts"] == 8
    doc = (tmp_path / "compare_tiny.md").read_text()
    assert "difference (+- s.e.)" in doc and "sha256" in doc


def test_paired_difference_and_its_standard_error() -> None:
    levels = np.array(
        ["single", "single", "group", "group", "pair", "pair", "relation", "relation"]
    )
    base = np.zeros(8)
    cand = np.array([0.1, 0.3, 0, 0, 0, 0, 0.2, 0.2])
    d = compare_weights.paired_difference(base, cand, levels)
    assert d["single"] == {"mean": 0.2, "se": 0.1}
    assert d["relation"] == {"mean": 0.2, "se": 0.0}
    assert d["all"]["mean"] == pytest.approx(0.1)


def test_checkout_weights_reads_a_revision(tmp_path: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    tiny(repo / "models" / "tiny", seed=1)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "w"], cwd=repo, check=True)
    committed = (repo / "models" / "tiny" / WEIGHTS_FILE).read_bytes()
    tiny(repo / "models" / "tiny", seed=2)  # trained on: the working tree differs
    out = compare_weights.checkout_weights("HEAD", "tiny", tmp_path / "out", repo=repo)
    assert (out / WEIGHTS_FILE).read_bytes() == committed
    with pytest.raises(SystemExit, match="cannot read HEAD:models/nope"):
        compare_weights.checkout_weights("HEAD", "nope", tmp_path / "x", repo=repo)
    # the whole run against a committed baseline (its files live in a scratch directory)
    monkeypatch.setattr(compare_weights, "ROOT", repo)
    args = ["--engine", "tiny", "--baseline", "HEAD", "--n", "4", "--seeds", "1"]
    args += ["--runtime", "torch", "--models-dir", str(repo / "models")]
    args += ["--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    result = compare_weights.main(args)
    base = result["engines"]["committed at HEAD"]["weights"]
    assert base.startswith("sha256 ") and base != result["engines"]["models/tiny now"]["weights"]


def test_a_baseline_samples_as_the_candidate_does(tmp_path: Path) -> None:
    base_dir = tiny(tmp_path / "base", seed=2)
    cand_dir = tiny(tmp_path / "cand", seed=1)
    config = json.loads((cand_dir / "config.json").read_text())
    config |= {"sampler": "unipc", "default_steps": 3, "default_guidance": 1.5}
    (cand_dir / "config.json").write_text(json.dumps(config))
    engines = {"base": Engine.load(base_dir), "cand": Engine.load(cand_dir)}
    assert engines["base"].config.sampler == "ddim"  # written before samplers existed
    same = compare_weights.same_sampling(engines)
    assert [e.config.sampling() for e in same.values()] == [
        {"sampler": "unipc", "steps": 3, "guidance": 1.5, "guidance_rescale": 0.0}
    ] * 2
    assert same["base"].denoise is engines["base"].denoise  # its own weights
    forced = compare_weights.same_sampling(engines, sampler="dpmpp_2m")
    assert {e.config.sampler for e in forced.values()} == {"dpmpp_2m"}
