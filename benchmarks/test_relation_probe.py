"""relation_probe measures where two groups stand, and runs a tiny engine end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import relation_probe
import torch

from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.unet import TINY_ENGINE_UNETS
from t2i_router.world import render
from t2i_router.world.spec import opposite_relation


def test_offsets_follow_the_rendered_relation_and_flip_with_it() -> None:
    pairs = relation_probe.relation_pairs(120)
    assert pairs and all(s.relation for _, s in pairs)
    specs = [s for _, s in pairs]
    images = np.stack([render(s, i) for i, s in enumerate(specs)]).astype(np.float64)
    right = relation_probe.group_offsets(images, specs)
    assert (right[:, 0] > 0).mean() > 0.95 and right[:, 0].mean() > 8
    reversed_ = relation_probe.group_offsets(images, [opposite_relation(s) for s in specs])
    np.testing.assert_allclose(reversed_[:, 0], -right[:, 0])
    flat = np.full_like(images, 128.0)  # nothing placed anywhere: no offset
    np.testing.assert_allclose(relation_probe.group_offsets(flat, specs)[:, 0], 0, atol=1e-6)
    with pytest.raises(ValueError, match="needs a relation"):
        relation_probe.group_offsets(images[:1], [specs[0].__class__(groups=specs[0].groups[:1])])


def test_the_relation_is_worth_something_at_pure_noise() -> None:
    specs = [s for _, s in relation_probe.relation_pairs(60)][:4]
    worth = relation_probe.relation_worth(specs, layouts=30)
    assert worth["x0_mse_given_relation"] < worth["x0_mse_without_relation"]
    assert worth["mean_image_along"] > 2  # the mean image already puts the groups apart
    # signed by each prompt's own relation: the reversed prompts stand apart the other way round
    flipped = relation_probe.relation_worth([opposite_relation(s) for s in specs], layouts=30)
    assert flipped["mean_image_along"] > 2


def test_probe_runs_a_tiny_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = EngineConfig(name="tiny", unet=TINY_ENGINE_UNETS["cloud_large"], default_steps=3)
    save_engine(Denoiser(config.unet).eval(), config, tmp_path / "tiny")
    args = ["--engine", f"tiny={tmp_path / 'tiny'}", "--n", "40", "--seeds", "1", "--at", "0", "-1"]
    args += ["--results-dir", str(tmp_path), "--docs-dir", str(tmp_path)]
    result = relation_probe.main(args)
    tiny, truth = result["engines"]["tiny"], result["engines"]["ground truth"]
    assert list(tiny["offsets"]) == ["1", "3"]  # after the first and the last of 3 steps
    assert truth["final_relation_aspect"] > 0.9 and truth["offsets"]["final"]["along"] > 8
    assert (
        json.loads((tmp_path / "relation_probe.json").read_text())["n_prompts"]
        == result["n_prompts"]
    )
    assert "| tiny | 1: " in (tmp_path / "relation_probe.md").read_text()
    attention = tiny["attention"]  # a cross-attention engine is looked inside
    assert list(attention) == [str(t) for t in relation_probe.ATTENTION_TIMESTEPS]
    for r in attention.values():
        assert np.isfinite(r["attention_along"]) and 0 <= r["grounding_loss"] <= 1
    assert "| tiny | " in (tmp_path / "relation_probe.md").read_text().split("Inside the UNet")[1]
    worth = result["relation_worth"]
    assert worth["gain_share"] > 0.02 and worth["mean_image_along"] > 2
    doc = (tmp_path / "relation_probe.md").read_text()
    assert "lowers the final image's squared error by" in doc
    sim = result["token_similarity"]  # MiniLM hardly tells subject from object
    assert 0.8 < sim["subject_vs_object"] < 1 and 0.9 < sim["relation_vs_opposite"] < 1
