"""The token-selection MoE on tiny seeded models and synthetic labels: shapes, masking, training,
save/load, ONNX parity, ablations, a learnable signal, and the `estimator` commands."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from t2i_router.cli import main
from t2i_router.errors import InvalidRequest
from t2i_router.estimator.choices import DEFAULT_CHOICES
from t2i_router.estimator.labels import LabelSet, Manifest, _part_table, _write_parquet, part_path
from t2i_router.estimator.moe import (
    EstimatorConfig,
    EstimatorNotFoundError,
    TokenSelectionMoE,
    estimator_loss,
    prs_from_q,
)
from t2i_router.estimator.quality import QualityEstimator, export_onnx
from t2i_router.estimator.training import (
    EstimatorData,
    TrainConfig,
    fit,
    metric_means,
    save_estimator,
    train_estimator,
)
from t2i_router.world import ASPECTS, pareto_relative_superiority, sample_prompts

TINY = dict(embed_dim=8, max_tokens=6, top_k=3, rank=2, hidden=4, dropout=0.0)
WORDS = ("red", "blue", "green", "big", "small", "circle", "square", "two", "three", "on")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class HashFeatures:
    """A stand-in for TokenFeatures: each word a fixed random vector, [CLS]/[SEP]-free."""

    def __init__(self, dim: int = 8, max_tokens: int = 6) -> None:
        self.dim, self.max_tokens = dim, max_tokens

    def _vector(self, word: str) -> np.ndarray:
        seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def encode(self, prompts):
        tokens = np.zeros((len(prompts), self.max_tokens, self.dim), np.float32)
        mask = np.zeros((len(prompts), self.max_tokens), np.float32)
        for i, p in enumerate(prompts):
            for j, w in enumerate(p.split()[: self.max_tokens]):
                tokens[i, j], mask[i, j] = self._vector(w), 1.0
        return tokens, mask


def _inputs(b: int = 4, lengths=(2, 6, 4, 1), config: EstimatorConfig | None = None):
    c = config or EstimatorConfig(**TINY)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(b, c.max_tokens, c.embed_dim, generator=g)  # (B, L, D)
    mask = torch.zeros(b, c.max_tokens)  # (B, L)
    for i, n in enumerate(lengths[:b]):
        mask[i, :n] = 1
    return tokens * mask[..., None], mask


def _model(**overrides) -> TokenSelectionMoE:
    torch.manual_seed(0)
    return TokenSelectionMoE(EstimatorConfig(**{**TINY, **overrides})).eval()


def _word_labels(n: int, seed: int, word: str = "red", seeds: int = 2) -> LabelSet:
    """Synthetic labels: the cloud beats the edge on every aspect iff ``word`` is in the prompt."""
    rng = np.random.default_rng(seed)
    prompts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 6))) for _ in range(n)]
    has = np.array([word in p.split() for p in prompts], np.float32)  # (N,)
    m, k = len(DEFAULT_CHOICES), len(ASPECTS)
    base = np.array([0.45, 0.5, 0.55, 0.6], np.float32)[None, :, None, None]  # (1, M, 1, 1)
    lift = np.array([0.0, 0.0, 0.25, 0.35], np.float32)[None, :, None, None]
    q = base + lift * has[:, None, None, None] + 0.05 * rng.standard_normal((n, m, seeds, k))
    q = np.clip(q, 0, 1).astype(np.float32)  # (N, M, S, K)
    q[: n // 2, :, :, ASPECTS.index("relation")] = np.nan  # half the prompts have no relation
    return LabelSet(
        prompts=np.array(prompts),
        specs=np.array(prompts),
        levels=np.array(["single"] * n),
        choices=DEFAULT_CHOICES,
        seeds=np.zeros((n, seeds), np.int64),
        quality=q,
        data_version="synthetic",
    )


def _data(labels: LabelSet, config: EstimatorConfig) -> EstimatorData:
    return EstimatorData.from_labels(labels, config, HashFeatures(), metric_means(labels, config))


def test_predicted_quality_has_one_value_per_choice_and_metric_in_unit_interval():
    tokens, mask = _inputs()
    q = _model().predict(tokens * 50, mask)  # large inputs must still give probabilities
    assert q.shape == (4, len(DEFAULT_CHOICES), len(ASPECTS))
    assert torch.all((q >= 0) & (q <= 1)) and torch.isfinite(q).all()


def test_experts_never_keep_padding_tokens():
    model = _model()
    tokens, mask = _inputs()
    index, _, keep = model.select(model.norm(tokens), mask)  # (B, k, top_k)
    at = mask[:, None, :].expand(-1, index.shape[1], -1).gather(-1, index)
    assert torch.equal(keep, at)  # kept positions are exactly the token positions picked
    lengths = mask.sum(1)
    assert torch.equal(keep.sum(-1), lengths.clamp(max=3)[:, None].expand_as(keep.sum(-1)))


def test_padding_features_do_not_change_predictions():
    model = _model()
    tokens, mask = _inputs()
    noisy = tokens + 100 * torch.randn_like(tokens) * (1 - mask[..., None])
    for m in (model, _model(token_selection=False)):
        torch.testing.assert_close(m.predict(noisy, mask), m.predict(tokens, mask))


def test_each_expert_keeps_its_top_k_tokens_by_gate():
    model = _model(max_tokens=6, top_k=3)
    tokens, mask = _inputs(lengths=(6, 6, 5, 4))
    x = model.norm(tokens)
    index, gate, _ = model.select(x, mask)
    a = (x @ model.expert_embed.T).softmax(-1).transpose(1, 2)  # (B, k, L)
    a = a.masked_fill(mask[:, None, :] == 0, -1)
    expected = a.argsort(-1, descending=True)[..., :3]
    assert torch.equal(index.sort(-1).values, expected.sort(-1).values)
    torch.testing.assert_close(gate, a.gather(-1, index))


def test_ablation_switches_change_the_architecture():
    full, no_select, single = _model(), _model(token_selection=False), _model(dual_gate=False)
    names = {m: set(dict(m.named_parameters())) for m in (full, no_select, single)}
    assert "expert_embed" in names[full] and "expert_embed" not in names[no_select]
    assert "p_neg" in names[full] and "p_neg" not in names[single]
    assert single.n_parameters() < full.n_parameters()
    tokens, mask = _inputs()
    outs = [m.predict(tokens, mask) for m in (full, no_select, single)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_config_errors_quote_the_bad_value():
    with pytest.raises(InvalidRequest, match="top_k is 30"):
        EstimatorConfig(top_k=30)
    with pytest.raises(InvalidRequest, match="'bogus'"):
        EstimatorConfig(features="bogus")
    with pytest.raises(InvalidRequest, match="'edge@1'"):
        EstimatorConfig(edge_choice="edge@1")


def test_torch_prs_matches_the_world_metric_and_nan_aspects_leave_the_loss():
    rng = np.random.default_rng(0)
    qe, qc, mu_e, mu_c = rng.random((5, 8)), rng.random((5, 8)), rng.random(8), rng.random(8)
    want = pareto_relative_superiority(qe, qc, mu_e, mu_c, gamma=0.7)
    got = prs_from_q(*(torch.tensor(a) for a in (qe, qc, mu_e, mu_c)), gamma=0.7)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    model = _model(prs_loss_weight=1.0)
    target = torch.rand(3, 4, 8)
    target[:, :, 5] = float("nan")
    logits = torch.randn(3, 4, 8)
    other = logits.clone()
    other[:, :, 5] += 5.0  # only the masked aspect changes
    prs = torch.rand(3)
    assert torch.isclose(
        estimator_loss(model, logits, target, prs)[0], estimator_loss(model, other, target, prs)[0]
    )


def test_training_lowers_the_loss_and_stops_early_on_an_unlearnable_val():
    config = EstimatorConfig(**TINY)
    train = _data(_word_labels(64, seed=1), config)
    val = _data(_word_labels(32, seed=2), config)
    torch.manual_seed(0)
    val = EstimatorData(val.tokens, val.mask, val.target[torch.randperm(32)], val.prs)  # noise
    result = fit(config, train, val, TrainConfig(epochs=200, patience=3, lr=1e-2), progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.97 * losses[0]
    assert result.stopped_early and len(result.history) < 200
    best = min(row["val_loss"] for row in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best


def test_training_is_deterministic_given_the_seed():
    config = EstimatorConfig(**{**TINY, "dropout": 0.2})
    train = _data(_word_labels(32, seed=1), config)

    def run(seed):
        tc = TrainConfig(epochs=2, batch_size=8, seed=seed)
        return fit(config, train, None, tc, progress=False).model.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_learns_which_word_makes_the_cloud_better():
    config = EstimatorConfig(**{**TINY, "hidden": 8})
    tc = TrainConfig(epochs=15, batch_size=32, lr=2e-2, patience=5)
    result = train_estimator(
        config,
        _word_labels(256, seed=1),
        _word_labels(64, seed=2),
        tc,
        features=HashFeatures(),
        progress=False,
    )
    test = _word_labels(128, seed=3)
    score = QualityEstimator(result.model, HashFeatures()).score(list(test.prompts))
    gap = np.nanmean(test.quality[:, 3, :, :6] - test.quality[:, 1, :, :6], axis=(1, 2))
    # An untrained model scores ~0.1 here; the trained one ~0.9.
    assert np.corrcoef(score, gap)[0, 1] > 0.8
    assert result.val["score_gap_correlation"] > 0.75


def test_save_load_round_trip_gives_the_same_predictions(tmp_path):
    config = EstimatorConfig(**TINY)
    train = _data(_word_labels(16, seed=1), config)
    result = fit(config, train, None, TrainConfig(epochs=1), progress=False)
    card = save_estimator(result, tmp_path / "qe", data_version="synthetic")
    assert card["parameters"] == result.model.n_parameters() and card["flops_per_prompt"]["moe"] > 0
    for name in ("config.json", "model.safetensors", "model_card.json", "MODEL_CARD.md"):
        assert (tmp_path / "qe" / name).is_file()
    loaded = TokenSelectionMoE.from_pretrained(tmp_path / "qe")
    assert loaded.config == config
    tokens, mask = _inputs()
    torch.testing.assert_close(loaded.predict(tokens, mask), result.model.predict(tokens, mask))
    torch.testing.assert_close(loaded.prs_mu, result.model.prs_mu)


@pytest.mark.parametrize("token_selection", [True, False])
def test_onnx_matches_torch(tmp_path, token_selection):
    import onnxruntime as ort

    model = _model(token_selection=token_selection)
    path = export_onnx(model, tmp_path / "model.onnx")
    tokens, mask = _inputs(b=3, lengths=(1, 6, 3))  # another batch size than the export's
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (q,) = session.run(None, {"tokens": tokens.numpy(), "mask": mask.numpy()})
    np.testing.assert_allclose(q, model.predict(tokens, mask).numpy(), atol=1e-5)


@pytest.fixture(scope="module")
def static_model_dir(tmp_path_factory):
    """A tiny untrained model over the real static MiniLM table (D = 384, L = 24)."""
    torch.manual_seed(0)
    config = EstimatorConfig(features="static", top_k=3, rank=2, hidden=4)
    folder = tmp_path_factory.mktemp("qe")
    return TokenSelectionMoE(config).save_pretrained(folder)


def test_predict_cli_prints_one_json_line_per_prompt(static_model_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\nzebra xylophone quantum\n")  # unknown words are fine
    argv = [
        "estimator",
        "predict",
        "--prompts-file",
        str(prompts),
        "--model",
        str(static_model_dir),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["a red circle", "zebra xylophone quantum"]
    for row in rows:
        assert set(row) == {"prompt", "q", "utility", "score"}
        assert list(row["q"]) == [c.name for c in DEFAULT_CHOICES]
        assert list(row["q"]["edge_small@8"]) == list(ASPECTS)
        u = row["utility"]
        assert row["score"] == pytest.approx(u["cloud_large@20"] - u["edge_small@8"], abs=2e-5)


def test_estimator_cli_names_bad_inputs(static_model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        (["predict", "--prompts-file", str(empty), "--model", str(static_model_dir)], "empty.txt"),
        (["predict", "--prompts-file", str(tmp_path / "nope.txt")], "nope.txt"),
        (
            [
                "predict",
                "--prompts-file",
                str(static_model_dir / "config.json"),
                "--model",
                str(tmp_path / "missing"),
            ],
            "missing",
        ),
        (["train", "--labels", str(tmp_path), "--train-split", "train"], "no label manifest"),
    ]
    for argv, needle in cases:
        assert main(["estimator", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    with pytest.raises(EstimatorNotFoundError):
        QualityEstimator.load(tmp_path / "missing")


def _write_label_split(root, split: str, n: int, seed: int) -> None:
    pairs = list(sample_prompts(n, seed=seed))
    rng = np.random.default_rng(seed)
    for choice in DEFAULT_CHOICES:
        scores = rng.random((n * 2, len(ASPECTS)))
        seeds = np.arange(n * 2).reshape(n, 2)
        table = _part_table(pairs, 0, choice, seeds, scores, "sha", split)
        _write_parquet(table, part_path(root / split, choice, 0))
    names = tuple(c.name for c in DEFAULT_CHOICES)
    Manifest(split, n, 2, n, names, {"edge_small": "sha", "cloud_large": "sha"}).write(root / split)


def test_train_cli_writes_a_model_folder_from_a_labels_folder(tmp_path, capsys):
    _write_label_split(tmp_path / "labels", "train", 12, seed=1)
    _write_label_split(tmp_path / "labels", "val", 6, seed=2)
    out = tmp_path / "qe"
    argv = ["estimator", "train", "--labels", str(tmp_path / "labels"), "--out", str(out),
            "--features", "static", "--epochs", "2", "--top-k", "2", "--rank", "2", "--hidden",
            "4", "--no-dual-gate", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    card = json.loads((out / "model_card.json").read_text())
    assert card["config"]["dual_gate"] is False and card["config"]["features"] == "static"
    assert summary["parameters"] == card["parameters"] and card["val"]["prompts"] == 6
    assert len(card["history"]) <= 2 and card["data_version"] != "unknown"
