"""Labels on tiny seeded engines: splits, round trip, resume after a kill, stale parts, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.engines import Denoiser, EngineConfig, save_engine
from t2i_router.engines.unet import tiny_unet_config
from t2i_router.errors import InvalidRequest
from t2i_router.estimator.choices import Choice, choice_costs, parse_choices
from t2i_router.estimator.labeling import (
    engine_prompt_texts,
    label_split,
    split_of,
    split_prompts,
)
from t2i_router.estimator.labels import load_labels, part_path
from t2i_router.world import ASPECTS, COMPLEXITY_LEVELS, parse_prompt

CHOICES = parse_choices("edge_small@2,cloud_large@3")


def _save_tiny(models, name: str, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = EngineConfig(
        name=name, unet=tiny_unet_config("cross_attention"), default_steps=3, max_steps=10
    )
    save_engine(Denoiser(cfg.unet).eval(), cfg, models / name)


@pytest.fixture
def models(tmp_path):
    out = tmp_path / "models"
    _save_tiny(out, "edge_small", 0)
    _save_tiny(out, "cloud_large", 1)
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A test split of 4 prompts x 2 seeds x 2 choices, drawn once; tests copy it."""
    root = tmp_path_factory.mktemp("labelled")
    models = root / "models"
    _save_tiny(models, "edge_small", 0)
    _save_tiny(models, "cloud_large", 1)
    manifest = _label(root / "labels", models)
    return root, manifest


@pytest.fixture
def copy(labelled, tmp_path):
    """(labels dir, models dir, manifest) of a private copy of the labelled split."""
    root, manifest = labelled
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy" / "labels", tmp_path / "copy" / "models", manifest


def _label(out, models, **kw):
    args = dict(prompts=4, seeds=2, choices=CHOICES, chunk=2, models_dir=models, runtime="torch")
    args.update(kw)
    return label_split(out, "test", progress=False, **args)


def test_splits_are_disjoint_by_scene_and_avoid_the_engines_prompts():
    seen = engine_prompt_texts()
    by_split = {s: split_prompts(s, 40) for s in ("train", "val", "test")}
    for split, pairs in by_split.items():
        assert len(pairs) == 40 and len({t for t, _ in pairs}) == 40
        assert all(split_of(spec) == split and text not in seen for text, spec in pairs)
        assert [p.complexity for _, p in pairs[:4]] == list(COMPLEXITY_LEVELS)
    specs = {s: {p.to_text() for _, p in pairs} for s, pairs in by_split.items()}
    assert not specs["train"] & specs["test"] and not specs["val"] & specs["test"]
    # The first n prompts are the same for any larger n (runs grow by whole chunks).
    assert split_prompts("test", 12) == by_split["test"][:12]


def test_labels_round_trip_with_one_seed_grid_for_every_choice(labelled):
    root, manifest = labelled
    labels = load_labels(root / "labels", "test")
    assert labels.quality.shape == (4, 2, 2, len(ASPECTS))
    assert [c.name for c in labels.choices] == ["edge_small@2", "cloud_large@3"]
    assert labels.data_version == manifest.data_version
    assert list(labels.prompts) == [t for t, _ in split_prompts("test", 4)]
    assert [parse_prompt(s).complexity for s in labels.specs] == list(labels.levels)
    assert len(np.unique(labels.seeds)) == 8
    q = labels.quality
    finite = q[~np.isnan(q)]
    assert finite.min() >= 0 and finite.max() <= 1
    # relation is NaN exactly where the prompt has none
    has_relation = labels.levels == "relation"
    assert np.isnan(q[~has_relation][..., ASPECTS.index("relation")]).all()
    assert not np.isnan(q[has_relation][..., ASPECTS.index("relation")]).any()
    assert labels.alignment.shape == (4, 2, 2)


def test_resume_draws_only_missing_parts_and_gives_the_same_labels(copy):
    labels_dir, models, _ = copy
    first = load_labels(labels_dir, "test")
    folder = labels_dir / "test"
    lost = part_path(folder, CHOICES[1], 1)
    kept = part_path(folder, CHOICES[0], 1)
    lost.unlink()  # as if the run had been killed before writing it
    before = kept.stat().st_mtime_ns
    # Without the lost part, only whole prompts load.
    assert len(load_labels(labels_dir, "test").prompts) == 2
    _label(labels_dir, models, resume=True)
    assert lost.exists() and kept.stat().st_mtime_ns == before
    again = load_labels(labels_dir, "test")
    np.testing.assert_array_equal(again.quality, first.quality)


def test_resume_extends_prompts_and_redraws_parts_of_changed_weights(tmp_path, models):
    _label(tmp_path, models)
    edge_part = part_path(tmp_path / "test", CHOICES[0], 0)
    cloud_part = part_path(tmp_path / "test", CHOICES[1], 0)
    cloud_mtime = cloud_part.stat().st_mtime_ns
    _save_tiny(models, "edge_small", 7)  # new edge weights: its parts are stale
    manifest = _label(tmp_path, models, resume=True, prompts=6)
    assert manifest.prompts == 6
    assert cloud_part.stat().st_mtime_ns == cloud_mtime
    assert edge_part.stat().st_mtime_ns != cloud_mtime
    labels = load_labels(tmp_path, "test")
    assert labels.quality.shape[0] == 6
    assert manifest.engines["edge_small"] != json.loads(json.dumps(manifest.engines))["cloud_large"]


def test_existing_labels_need_resume_and_the_same_seeds(copy):
    labels_dir, models, _ = copy
    with pytest.raises(InvalidRequest, match="--resume"):
        _label(labels_dir, models)
    with pytest.raises(InvalidRequest, match="--seeds 2"):
        _label(labels_dir, models, seeds=3, resume=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": 0}, "prompts is 0"),
        ({"seeds": -1}, "seeds is -1"),
        ({"runtime": "tensorflow"}, "tensorflow"),
    ],
)
def test_bad_label_arguments_are_named(tmp_path, models, kwargs, match):
    with pytest.raises(InvalidRequest, match=match):
        _label(tmp_path, models, **kwargs)


def test_bad_choices_and_splits_are_named(tmp_path):
    for text in ("edge_small", "edge_small@0", "edge_small@x", "a@1,a@1"):
        with pytest.raises(InvalidRequest, match=r"edge_small|a@1"):
            parse_choices(text)
    with pytest.raises(InvalidRequest, match="'dev'"):
        split_prompts("dev", 3)
    with pytest.raises(InvalidRequest, match="no labels for"):
        (tmp_path / "test").mkdir()
        (tmp_path / "test" / "dataset.json").write_text(
            json.dumps(
                {
                    "split": "test",
                    "prompts": 1,
                    "seeds": 1,
                    "chunk": 1,
                    "choices": ["a@1"],
                    "engines": {},
                    "format_version": 1,
                }
            )
        )
        load_labels(tmp_path, "test", ["b@2"])


def test_choice_costs_scale_with_steps_from_the_model_cards():
    costs = choice_costs([Choice("cloud_large", 20), Choice("cloud_large", 10)])
    assert costs["cloud_large@20"].gflops == pytest.approx(2 * costs["cloud_large@10"].gflops)
    edge = choice_costs([Choice("edge_small", 8)])["edge_small@8"]
    assert edge.gflops < 1.0 < costs["cloud_large@20"].gflops


def test_label_command_prints_the_manifest_and_exits_2_on_a_bad_split(tmp_path, models, capsys):
    out = tmp_path / "labels"
    code = main(
        [
            "label",
            "--split",
            "test",
            "--prompts",
            "2",
            "--seeds",
            "1",
            "--chunk",
            "2",
            "--out",
            str(out),
            "--choices",
            "edge_small@2",
            "--models-dir",
            str(models),
            "--runtime",
            "torch",
            "--no-progress",
        ]
    )
    assert code == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["choices"] == ["edge_small@2"] and manifest["prompts"] == 2
    assert (out / "test" / "edge_small@2" / "part-00000.parquet").exists()
    code = main(
        [
            "label",
            "--split",
            "test",
            "--prompts",
            "2",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--choices",
            "edge_small",
            "--models-dir",
            str(models),
        ]
    )
    assert code == 2
    assert "'edge_small'" in capsys.readouterr().err


def test_filled_quality_makes_the_equal_weight_alignment_the_image_alignment(labelled):
    root, _ = labelled
    labels = load_labels(root / "labels", "test")
    filled = labels.quality_filled
    n_align = ASPECTS.index("relation") + 1
    assert not np.isnan(filled[..., :n_align]).any()
    np.testing.assert_allclose(filled[..., :n_align].mean(-1), labels.alignment, rtol=1e-6)
    # applicable values are untouched
    applicable = ~np.isnan(labels.quality)
    np.testing.assert_array_equal(filled[applicable], labels.quality[applicable])
