"""The estimator's serving core without Triton: ONNX parity, batching, per-request errors."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from t2i_router.errors import InvalidRequest, ModelError
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.estimator.quality import ONNX_FILE, QualityEstimator
from t2i_router.estimator.serving import EstimatorServer, EstimatorServingConfig, ensure_onnx

PROMPTS = [
    "a red circle",
    "two big blue squares left of a green triangle on black",
    "a small yellow star above a purple heart",
    "three circles",
    "a cat",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny seeded static-feature estimator (the real MiniLM table, a 4-wide MoE)."""
    torch.manual_seed(0)
    config = EstimatorConfig(features="static", top_k=3, rank=2, hidden=4)
    return TokenSelectionMoE(config).eval().save_pretrained(tmp_path_factory.mktemp("est"))


@pytest.fixture(scope="module")
def server(model_dir) -> EstimatorServer:
    return EstimatorServer.load(model_dir, threads=1)


def _rows(*prompts) -> np.ndarray:
    return np.array([[p] for p in prompts], dtype=object)  # (B, 1), as Triton hands them


def test_onnx_server_matches_in_process_estimator(server, model_dir):
    ref = QualityEstimator.load(model_dir, features=server.features).predict(PROMPTS)
    got = server.predict(PROMPTS)
    assert got.shape == ref.shape == (5, 4, len(server.metrics)) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_requests_are_batched_once_and_split_back_in_order(server, monkeypatch):
    calls = []
    predict = server.predict
    monkeypatch.setattr(server, "predict", lambda p: calls.append(list(p)) or predict(p))
    requests = [_rows(PROMPTS[0].encode()), _rows(*PROMPTS[1:4]), np.array([PROMPTS[4]])]
    results = server.run(requests)
    assert calls == [PROMPTS]  # one joint run
    ref = predict(PROMPTS)
    assert [r.shape[0] for r in results] == [1, 3, 1]
    np.testing.assert_allclose(np.concatenate(results), ref, atol=1e-6)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (_rows(b""), "PROMPT is empty"),
        (_rows("   "), "PROMPT is empty"),
        (_rows(b"\xff\xfe red"), "not UTF-8"),
        (_rows(b"x" * 3000), "3000 bytes"),
        (np.empty((0, 1), object), "no rows"),
        (np.array([["a", "b"]], object), "expected [1, 1]"),
    ],
)
def test_a_bad_request_gets_its_own_error_and_the_rest_are_served(server, bad, message):
    results = server.run([_rows(PROMPTS[0]), bad, _rows(PROMPTS[1], PROMPTS[2])])
    assert isinstance(results[1], InvalidRequest) and message in str(results[1]), results[1]
    np.testing.assert_allclose(results[0], server.predict(PROMPTS[:1]), atol=1e-6)
    np.testing.assert_allclose(results[2], server.predict(PROMPTS[1:3]), atol=1e-6)


def test_a_failing_run_answers_every_request(server, monkeypatch):
    def boom(prompts):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(server, "predict", boom)
    results = server.run([_rows("a red circle"), _rows(""), _rows("a cat")])
    assert isinstance(results[1], InvalidRequest)
    for r in (results[0], results[2]):
        assert isinstance(r, ModelError) and "out of memory" in str(r)


def test_declared_choices_must_be_the_models(server):
    server.check_declared(server.choices, server.metrics)
    with pytest.raises(InvalidRequest, match="rebuild the repository"):
        server.check_declared(server.choices[::-1], server.metrics)


def test_onnx_is_exported_again_only_when_the_weights_are_newer(model_dir):
    path = ensure_onnx(model_dir)
    first = path.stat().st_mtime_ns
    assert ensure_onnx(model_dir).stat().st_mtime_ns == first
    weights = model_dir / "model.safetensors"
    later = time.time() + 5
    os.utime(weights, (later, later))
    assert ensure_onnx(model_dir).stat().st_mtime_ns != first
    assert sorted(p.name for p in model_dir.iterdir() if "onnx" in p.name) == [ONNX_FILE]


def test_serving_config_from_parameters(tmp_path):
    cfg = EstimatorServingConfig.from_parameters({"model_dir": "m", "threads": "2"}, tmp_path)
    assert cfg.model_dir == str((tmp_path / "m").resolve()) and cfg.threads == 2
    with pytest.raises(InvalidRequest, match="model_dir is missing"):
        EstimatorServingConfig.from_parameters({}, tmp_path)
    with pytest.raises(InvalidRequest, match="not integers"):
        EstimatorServingConfig.from_parameters({"model_dir": "m", "threads": "two"}, tmp_path)


def test_contextual_features_fall_back_to_torch_minilm_and_match(tmp_path):
    torch.manual_seed(1)
    config = EstimatorConfig(features="contextual", top_k=3, rank=2, hidden=4)
    folder = TokenSelectionMoE(config).eval().save_pretrained(tmp_path / "ctx")
    server = EstimatorServer.load(folder, threads=1)
    ref = QualityEstimator.load(folder, features=server.features).predict(PROMPTS[:3])
    np.testing.assert_allclose(server.predict(PROMPTS[:3]), ref, atol=1e-4)
    assert server.features.kind == "contextual"
