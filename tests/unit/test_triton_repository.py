"""Every config.pbtxt the builders write parses back with text_format and says what it should."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from t2i_router.estimator.choices import choice_costs, parse_choices
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.triton.model_config import TensorSpec
from t2i_router.triton.repository import (
    ESTIMATOR_MODEL,
    EngineModelSettings,
    EstimatorModelSettings,
    build_repository,
    unet_config_pbtxt,
)

ROOT = Path(__file__).resolve().parents[2]
DTYPE = model_config_pb2.DataType.Name


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(tensors) -> dict:
    """name -> (type, dims, optional); outputs have no ``optional`` (always False)."""
    return {
        t.name: (DTYPE(t.data_type), list(t.dims), getattr(t, "optional", False)) for t in tensors
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A CPU repository with the engines, the BLS text encoder and a tiny estimator, built
    against the checkout's model cards (the estimator's costs come from them)."""
    root = tmp_path_factory.mktemp("build")
    torch.manual_seed(0)
    config = EstimatorConfig(features="static", top_k=3, rank=2, hidden=4)
    estimator = TokenSelectionMoE(config).save_pretrained(root / "estimator")
    settings = EngineModelSettings(max_batch_size=16, text_encoder="bls", threads=2)
    return build_repository(
        root / "repo",
        ROOT / "models",
        settings=settings,
        estimator_dir=estimator,
        estimator_settings=EstimatorModelSettings(max_batch_size=32, max_queue_delay_us=500),
    )


def test_every_written_config_parses_and_names_its_folder(repo):
    names = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    assert names == ["cloud_large", "edge_small", ESTIMATOR_MODEL, "text_encoder"]
    for name in names:
        config = _parse(repo / name / "config.pbtxt")
        assert config.name == name and config.backend == "python"
        assert (repo / name / "1" / "model.py").is_file()
        [group] = config.instance_group
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"
        assert config.HasField("dynamic_batching")


def test_engine_config_has_the_engine_contract_and_its_settings(repo):
    config = _parse(repo / "edge_small" / "config.pbtxt")
    assert _io(config.input) == {
        "PROMPT": ("TYPE_STRING", [1], False),
        "SEED": ("TYPE_INT64", [1], False),
        "STEPS": ("TYPE_INT32", [1], True),
        "GUIDANCE": ("TYPE_FP32", [1], True),
    }
    assert _io(config.output) == {"IMAGE": ("TYPE_UINT8", [32, 32, 3], False)}
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {
        "engine_dir": params["engine_dir"],  # checked below: it must lead to the engine
        "runtime": "onnxruntime",
        "threads": "2",
        "batch_size": "16",
        "text_encoder": "text_encoder",
    }
    assert (repo / "edge_small" / params["engine_dir"]).resolve() == ROOT / "models/edge_small"


def test_text_encoder_config_declares_tokens_and_mask(repo):
    config = _parse(repo / "text_encoder" / "config.pbtxt")
    assert _io(config.input) == {"PROMPT": ("TYPE_STRING", [1], False)}
    assert _io(config.output) == {
        "TOKENS": ("TYPE_FP32", [24, 384], False),
        "MASK": ("TYPE_FP32", [24], False),
    }


def test_estimator_config_carries_choices_metrics_and_costs(repo):
    config = _parse(repo / ESTIMATOR_MODEL / "config.pbtxt")
    estimator = EstimatorConfig(features="static", top_k=3, rank=2, hidden=4)
    m, k = len(estimator.choices), len(estimator.metrics)
    assert _io(config.input) == {"PROMPT": ("TYPE_STRING", [1], False)}
    assert _io(config.output) == {"Q": ("TYPE_FP32", [m, k], False)}
    assert config.max_batch_size == 32
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["choices"].split(",") == list(estimator.choices)
    assert params["metrics"].split(",") == list(estimator.metrics)
    assert params["features"] == "static" and params["threads"] == "0"
    costs = choice_costs(parse_choices(estimator.choices), ROOT / "models")
    gflops = [float(x) for x in params["cost_gflops"].split(",")]
    assert gflops == pytest.approx([costs[c].gflops for c in estimator.choices], rel=1e-5)
    assert gflops == sorted(gflops) and gflops[0] > 0  # DEFAULT_CHOICES ascend in cost
    seconds = [float(x) for x in params["cost_seconds"].split(",")]
    assert seconds == pytest.approx([costs[c].seconds for c in estimator.choices], rel=1e-5)
    model_dir = (repo / ESTIMATOR_MODEL / params["model_dir"]).resolve()
    assert (model_dir / "config.json").is_file()


def test_unet_config_reshapes_a_per_row_scalar():
    inputs = [TensorSpec("sample", "TYPE_FP32", (3, 32, 32)), TensorSpec("t", "TYPE_INT64", ())]
    outputs = [TensorSpec("out", "TYPE_FP16", (3, -1, 32))]
    text = unet_config_pbtxt("edge_small_unet", inputs, outputs, 8)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    declared = {t.name: t for t in config.input}
    assert list(declared["t"].dims) == [1] and declared["t"].HasField("reshape")
    assert list(declared["t"].reshape.shape) == []
    assert not declared["sample"].HasField("reshape")
    assert _io(config.output) == {"out": ("TYPE_FP16", [3, -1, 32], False)}
    [group] = config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"


def test_parameter_values_are_quoted_by_protobuf():
    from t2i_router.triton.repository import engine_config_pbtxt

    odd = 'dir with "quotes" and \\ backslash'
    text = engine_config_pbtxt("edge_small", odd, EngineModelSettings())
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.parameters["engine_dir"].string_value == odd


def test_build_repo_command_adds_the_estimator_or_says_it_skipped_it(
    repo, tmp_path, monkeypatch, capsys
):
    import t2i_router.engines.serving
    from t2i_router.cli import main

    # The engines' ONNX export is not what this test is about (a minute on this host).
    monkeypatch.setattr(t2i_router.engines.serving, "ensure_onnx", lambda d: Path(d))
    estimator = repo.parent / "estimator"  # the fixture's tiny estimator
    models = str(ROOT / "models")
    args = ["triton", "build-repo", "--models-dir", models, "--out"]
    assert main([*args, str(tmp_path / "with"), "--estimator", str(estimator)]) == 0
    assert _parse(tmp_path / "with" / ESTIMATOR_MODEL / "config.pbtxt").name == ESTIMATOR_MODEL
    assert (estimator / "model.onnx").is_file()

    missing = tmp_path / "no_estimator"
    assert main([*args, str(tmp_path / "without"), "--estimator", str(missing)]) == 0
    assert f"skipped quality_estimator: no estimator at {missing}" in capsys.readouterr().err
    assert not (tmp_path / "without" / ESTIMATOR_MODEL).exists()
