"""gap_candidate draws a candidate edge with the labels' own seeds and measures it."""

from __future__ import annotations

import gap_candidate
import numpy as np
import pytest
import torch
from test_gap_structure import _write_labels

from t2i_router.engines import Denoiser, Engine, EngineConfig, save_engine
from t2i_router.engines.unet import tiny_unet_config
from t2i_router.estimator.evaluation import gap_structure
from t2i_router.estimator.labels import load_labels
from t2i_router.world import mean_alignment, parse_prompt, score_images


def test_candidate_images_use_the_labels_seeds_and_are_measured_against_the_cloud(tmp_path):
    _write_labels(tmp_path / "labels")
    torch.manual_seed(0)
    config = EngineConfig(name="edge_small", unet=tiny_unet_config("pooled"), default_steps=2)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "models" / "edge_small")
    out = tmp_path / "cand"
    argv = ["--models-dir", str(tmp_path / "models"), "--labels", str(tmp_path / "labels")]
    argv += ["--prompts", "6", "--seeds", "4", "--steps", "2,3", "--out", str(out)]
    report = gap_candidate.main(argv)
    assert set(report["choices"]) == {"edge_small@2", "edge_small@3"}
    # the same statistics from images drawn here with the labels' seeds
    labels = load_labels(tmp_path / "labels", "test", ["cloud_large@20"])
    engine = Engine.load(tmp_path / "models" / "edge_small")
    texts = [t for t in labels.prompts[:6] for _ in range(4)]
    images = engine.generate(texts, labels.seeds[:6, :4].ravel().tolist(), steps=2)
    specs = [parse_prompt(s) for s in labels.specs[:6] for _ in range(4)]
    edge = mean_alignment(score_images(images, specs)).reshape(6, 4)
    cloud = labels.alignment[:6, 0, :4].astype(np.float64)
    expected = gap_structure(edge, cloud, labels.levels[:6])["all"]
    got = report["choices"]["edge_small@2"]["all"]
    assert got["n_prompts"] == 6 and got["n_seeds"] == 4
    assert got["mean_gap"] == pytest.approx(expected["mean_gap"], abs=0.01)
    concepts = report["choices"]["edge_small@2"]["by_concept"]
    assert sum(concepts[s]["n_prompts"] for s in ("small", "medium", "large")) >= 6
    assert "## edge_small@3" in out.with_suffix(".md").read_text()
