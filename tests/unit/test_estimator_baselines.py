"""Routing baselines and `estimator evaluate` on tiny synthetic labels with a planted signal.

The cloud gains only on prompts that mention triangles, so a method that reads the prompt can
recover most of the cloud's gain at half the calls, and random recovers half of it.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.engines.text_encoder import TextEncoder
from t2i_router.errors import InvalidRequest, RouterError
from t2i_router.estimator import evaluate as evaluate_module
from t2i_router.estimator import evaluation as ev
from t2i_router.estimator.baselines import (
    EmbeddingCache,
    KnnMethod,
    LengthMethod,
    LevelMethod,
    OracleMethod,
    RandomMethod,
    default_pair,
    prompt_quality,
    utilities_from_q,
)
from t2i_router.estimator.choices import DEFAULT_CHOICES, Choice
from t2i_router.estimator.evaluate import MoeMethod, evaluate, load_moe
from t2i_router.estimator.labels import LabelSet, Manifest, _part_table, _write_parquet, part_path
from t2i_router.estimator.pooled_models import CemsMethod, MlpConfig, MlpMethod
from t2i_router.estimator.win_classifier import WinClassifierConfig, WinClassifierMethod
from t2i_router.world import ASPECTS, sample_prompts

REPO = Path(__file__).resolve().parents[2]
EDGE, CLOUD = 1, 3  # edge_small@8, cloud_large@20 in DEFAULT_CHOICES
FAST_MLP = MlpConfig(hidden=32, max_epochs=60, patience=5, batch_size=64, lr=3e-3)


def _planted(n: int, seeds: int, seed: int, noise: float = 0.05):
    """Prompts, specs and (N, M, S, K) qualities; the cloud gains 0.3 on triangle prompts."""
    pairs = sample_prompts(n, seed=seed)
    rng = np.random.default_rng(seed)
    gap = np.array([0.3 if "triangle" in t.lower() else 0.0 for t, _ in pairs])  # (N,)
    base = rng.uniform(0.4, 0.6, n)  # (N,)
    lift = np.array([-0.05, 0.0, 0.8, 1.0])  # each choice's share of the gap; edge@4 is worse
    mean = base[:, None] + np.where(lift > 0, lift * gap[:, None], lift)  # (N, M)
    q = mean[:, :, None, None] + rng.normal(0, noise, (n, 4, seeds, len(ASPECTS)))
    q = np.clip(q, 0, 1).astype(np.float32)
    no_relation = np.array([s.complexity != "relation" for _, s in pairs])
    q[no_relation, ..., ASPECTS.index("relation")] = np.nan
    return pairs, q


def _labelset(n: int, seeds: int, seed: int) -> LabelSet:
    pairs, q = _planted(n, seeds, seed)
    return LabelSet(
        prompts=np.array([t for t, _ in pairs]),
        specs=np.array([s.to_text() for _, s in pairs]),
        levels=np.array([s.complexity for _, s in pairs]),
        choices=DEFAULT_CHOICES,
        seeds=np.arange(n * seeds).reshape(n, seeds),
        quality=q,
        data_version=f"synthetic-{seed}",
    )


@pytest.fixture(scope="module")
def splits():
    return _labelset(160, 2, 11), _labelset(48, 2, 12), _labelset(80, 4, 13)


@pytest.fixture(scope="module")
def encoder():
    torch.set_num_threads(1)
    return TextEncoder()


@pytest.fixture(scope="module")
def cache(encoder):
    return EmbeddingCache(encoder)


def _apgr(method, test: LabelSet) -> float:
    q = prompt_quality(test)
    return ev.deferral_curve(q[:, EDGE], q[:, CLOUD], method.score(list(test.prompts))).metrics[
        "apgr"
    ]


def test_default_pair_is_each_engines_most_steps_and_needs_two_engines():
    assert default_pair(DEFAULT_CHOICES) == (EDGE, CLOUD)
    with pytest.raises(InvalidRequest, match="two different engines"):
        default_pair((Choice("edge_small", 4), Choice("edge_small", 8)))


def test_embedding_methods_recover_a_planted_word_signal_far_beyond_random(splits, cache):
    train, val, test = splits
    methods = [KnnMethod(cache), MlpMethod(cache, FAST_MLP), CemsMethod(cache, FAST_MLP)]
    for method in methods:
        method.fit(train, val)
        u = method.utilities(list(test.prompts))
        assert u.shape == (80, 4) and np.isfinite(u).all()
        assert _apgr(method, test) > 0.7, method.name  # random: 0.5, oracle ~0.8
    assert methods[0].k in methods[0].k_val_mse  # k was picked on val


def test_mlp_predicts_qualities_in_unit_interval_and_learns_which_aspects_apply(splits, cache):
    train, val, test = splits
    mlp = MlpMethod(cache, FAST_MLP)
    mlp.fit(train, val)
    q, applies = mlp.predict(list(test.prompts))
    assert q.shape == (80, 4, len(ASPECTS)) and (q >= 0).all() and (q <= 1).all()
    relation = applies[:, ASPECTS.index("relation")]
    truth = test.levels == "relation"
    assert np.mean((relation > 0.5) == truth) > 0.8


def test_level_and_length_fit_from_train(splits):
    train, _, test = splits
    level = LevelMethod()
    level.fit(train)
    u = level.utilities(list(test.prompts))
    relation = test.levels == "relation"
    want = prompt_quality(train)[train.levels == "relation"].mean(0)
    np.testing.assert_allclose(u[relation], np.broadcast_to(want, u[relation].shape))
    length = LengthMethod()
    flipped = LabelSet(**{**train.__dict__, "quality": train.quality[:, ::-1]})
    length.fit(train)
    sign = length.sign
    length.fit(flipped)  # cloud and edge swapped: the gap's relation to length reverses
    assert length.sign == -sign
    assert length.score(["a b c"])[0] == -sign * 3


def test_random_is_seeded_order_independent_and_the_oracle_is_the_true_gap(splits):
    train, _, test = splits
    rnd = RandomMethod(seed=3)
    rnd.fit(train)
    prompts = list(test.prompts)
    a = rnd.score(prompts)
    np.testing.assert_array_equal(rnd.score(prompts[::-1]), a[::-1])
    assert not np.array_equal(RandomMethod(seed=4).score(prompts), a)
    assert ((a >= 0) & (a < 1)).all()
    oracle = OracleMethod(test)
    q = prompt_quality(test)
    np.testing.assert_allclose(oracle.score(prompts), q[:, CLOUD] - q[:, EDGE])
    with pytest.raises(InvalidRequest, match="no labels for 1 prompts: 'unseen'"):
        oracle.score(["unseen"])


def test_an_unfitted_method_says_so(cache):
    with pytest.raises(InvalidRequest, match="'knn' is not fitted"):
        KnnMethod(cache).score(["one red circle on white"])


def test_utilities_average_only_the_alignment_aspects_that_apply():
    q = np.zeros((1, 2, len(ASPECTS)))
    q[0, :, :5] = 0.5
    q[0, :, ASPECTS.index("relation")] = [np.nan, 1.0]
    q[0, :, 6:] = 0.0  # sharpness, cleanliness: not alignment
    u = utilities_from_q(q)
    np.testing.assert_allclose(u, [[0.5, 0.5 * 5 / 6 + 1 / 6]])
    applies = np.ones((1, len(ASPECTS)))
    applies[0, ASPECTS.index("relation")] = 0.0
    np.testing.assert_allclose(utilities_from_q(q, applies), [[0.5, 0.5]])


def test_win_classifier_tunes_only_the_unfrozen_top_layer_and_head(splits, encoder):
    train, val, _ = splits
    cfg = WinClassifierConfig(epochs=1, batch_size=16, freeze_layers=5, max_train_prompts=32)
    win = WinClassifierMethod(cfg)
    before = encoder.model  # the same pretrained MiniLM, untouched by the fine-tuning
    small_val = LabelSet(
        **{k: v[:16] if isinstance(v, np.ndarray) else v for k, v in val.__dict__.items()}
    )
    win.fit(train, small_val)
    after = win.encoder
    assert torch.equal(
        after.encoder.layer[4].output.dense.weight, before.encoder.layer[4].output.dense.weight
    )
    assert torch.equal(
        after.embeddings.word_embeddings.weight, before.embeddings.word_embeddings.weight
    )
    assert not torch.equal(
        after.encoder.layer[5].output.dense.weight, before.encoder.layer[5].output.dense.weight
    )
    p = win.score(list(val.prompts[:8]))
    assert p.shape == (8,) and ((p > 0) & (p < 1)).all() and len(win.history) == 1
    with pytest.raises(InvalidRequest, match="freeze_layers is -1"):
        WinClassifierConfig(freeze_layers=-1)


class _FakeMoe:
    choices = ("cloud_large@20", "edge_small@4", "edge_small@8", "cloud_large@10")

    def predict(self, prompts):
        q = np.zeros((len(prompts), 4, len(ASPECTS)))
        q[:, 0, :6] = 0.9  # cloud_large@20 in its own order
        return q


def test_the_moe_is_one_more_method_with_choices_aligned_by_name(splits, monkeypatch):
    train, _, test = splits
    moe = MoeMethod(_FakeMoe(), _FakeMoe.choices)
    moe.fit(train)
    u = moe.utilities(list(test.prompts[:3]))
    np.testing.assert_allclose(u[:, CLOUD], 0.9)
    np.testing.assert_allclose(moe.score(list(test.prompts[:3])), 0.9)
    monkeypatch.setitem(sys.modules, "t2i_router.estimator.quality", None)
    with pytest.raises(RouterError, match=r"needs t2i_router\.estimator\.quality"):
        load_moe("models/quality_estimator", [c.name for c in DEFAULT_CHOICES])


def _write_split(root: Path, split: str, labels: LabelSet) -> None:
    n, _, s, _ = labels.quality.shape
    pairs = [(t, sp) for t, sp in zip(labels.prompts.tolist(), labels.scene_specs())]
    for m, choice in enumerate(labels.choices):
        scores = labels.quality[:, m].reshape(n * s, -1)
        table = _part_table(pairs, 0, choice, labels.seeds, scores, "sha", split)
        _write_parquet(table, part_path(root / split, choice, 0))
    names = tuple(c.name for c in labels.choices)
    Manifest(split, n, s, n, names, {"edge_small": "sha", "cloud_large": "sha"}).write(root / split)


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory, splits):
    root = tmp_path_factory.mktemp("labels")
    for name, labels in zip(("train", "val", "test"), splits):
        _write_split(root, name, labels)
    return root


def test_evaluate_command_writes_json_markdown_and_plots(
    tmp_path, label_dir, cache, monkeypatch, capsys
):
    monkeypatch.setattr(evaluate_module, "EmbeddingCache", lambda: cache)  # MiniLM loaded once
    out = tmp_path / "eval"
    # the engines' cards (choice costs) without the committed estimator, which the command
    # would otherwise add as "moe"
    models = tmp_path / "models"
    for engine in ("edge_small", "cloud_large"):
        (models / engine).mkdir(parents=True)
        shutil.copy(REPO / "models" / engine / "model_card.json", models / engine)
    methods = "random,length,level,knn,mlp,cems,oracle"
    argv = ["estimator", "evaluate", "--labels", str(label_dir), "--out", str(out)]
    argv += ["--methods", methods, "--n-boot", "50", "--models-dir", str(models)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["apgr"]["knn"] > 0.7
    payload = json.loads((out / "evaluation.json").read_text())
    assert set(payload) >= {"bootstrap", "noise_ceiling", "cost_quality", "methods", "reference"}
    metrics = payload["bootstrap"]["metrics"]
    assert set(metrics) == {
        "random_seeded",
        "length",
        "level",
        "knn",
        "mlp",
        "cems",
        "oracle",
        "random",
    }
    assert set(metrics["knn"]) == set(ev.METRIC_NAMES)
    assert payload["reference"] in {"knn", "mlp", "cems", "level", "length"}
    assert "apgr" in payload["bootstrap"]["difference_from_reference"]["random"]
    assert set(payload["cost_quality"]) == {"level", "knn", "mlp", "cems", "oracle"}
    assert payload["noise_ceiling"]["split_half_oracle"]["pgr@50"]["estimate"] > 0.7
    assert payload["n_prompts"] == {"train": 160, "val": 48, "test": 80}
    for name in ("evaluation.md", "pgr_curves.png", "cost_quality.png"):
        assert (out / name).stat().st_size > 0
    assert "Paired difference from" in (out / "evaluation.md").read_text()
    assert main([*argv[:-4], "--methods", "knn,bogus"]) == 2


def test_evaluate_finds_the_moe_in_the_models_folder_and_compares_every_method_to_it(
    tmp_path, label_dir, monkeypatch
):
    models = tmp_path / "models"
    for engine in ("edge_small", "cloud_large"):
        (models / engine).mkdir(parents=True)
        shutil.copy(REPO / "models" / engine / "model_card.json", models / engine)
    (models / "quality_estimator").mkdir()
    fake = types.SimpleNamespace(QualityEstimator=types.SimpleNamespace(load=lambda d: _FakeMoe()))
    monkeypatch.setitem(sys.modules, "t2i_router.estimator.quality", fake)
    payload = evaluate(label_dir, tmp_path / "eval", ["level", "oracle"], models_dir=models)
    assert payload["reference"] == "moe"
    assert set(payload["bootstrap"]["difference_from_reference"]) == {"level", "oracle", "random"}
    assert set(payload["cost_quality"]) == {"moe", "level", "oracle"}
    # The fake MoE always picks cloud_large@20: its routed curve never beats that choice.
    assert payload["cost_quality"]["moe"]["vs_fixed"][-1]["margin"] == pytest.approx(0, abs=1e-9)


class _FakeEdgeMoe(_FakeMoe):
    def predict(self, prompts):
        q = np.zeros((len(prompts), 4, len(ASPECTS)))
        q[:, 2, :6] = 0.9  # edge_small@8 in its own order
        return q


def test_evaluate_compares_named_moe_variants_to_the_moe(tmp_path, label_dir, monkeypatch):
    models = tmp_path / "models"
    for engine in ("edge_small", "cloud_large"):
        (models / engine).mkdir(parents=True)
        shutil.copy(REPO / "models" / engine / "model_card.json", models / engine)
    loads = {"main": _FakeMoe(), "ablated": _FakeEdgeMoe()}
    fake = types.SimpleNamespace(
        QualityEstimator=types.SimpleNamespace(load=lambda d: loads[Path(d).name])
    )
    monkeypatch.setitem(sys.modules, "t2i_router.estimator.quality", fake)
    payload = evaluate(
        label_dir,
        tmp_path / "eval",
        ["level"],
        model_dir=tmp_path / "main",
        models_dir=models,
        variants={"no_gate": tmp_path / "ablated"},
    )
    assert payload["reference"] == "moe"
    assert set(payload["bootstrap"]["difference_from_reference"]) == {"level", "no_gate", "random"}
    assert "no_gate" in (tmp_path / "eval" / "evaluation.md").read_text()
    with pytest.raises(InvalidRequest, match="variant name 'knn' is taken"):
        evaluate(label_dir, tmp_path / "e2", ["level"], models_dir=models,
                 variants={"knn": tmp_path / "ablated"})  # fmt: skip
