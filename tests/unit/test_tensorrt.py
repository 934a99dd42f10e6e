"""The GPU deployment: TensorRT plans, the GPU Triton repository, BLS engines, build-gpu-repo.

Without a GPU: every generated config.pbtxt parses and matches the ONNX graph, the BLS denoiser
sends what that config declares (through a fake ``triton_python_backend_utils``), and the
command fails in one line when TensorRT is missing. With a GPU (``@pytest.mark.gpu``): plans
built from tiny seeded UNets match torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from t2i_router.cli import main
from t2i_router.engines import Denoiser, Engine, EngineConfig, TextEncoder, save_engine
from t2i_router.engines.export import ONNX_FILE, export_onnx
from t2i_router.engines.invariance import assert_same_images
from t2i_router.engines.serving import EngineRequest
from t2i_router.engines.tensorrt import (
    TensorRTDenoiser,
    TensorRTUnavailable,
    batch_profile,
    build_engine,
)
from t2i_router.engines.unet import TINY_ENGINE_UNETS
from t2i_router.triton.backend import BlsDenoiser, BlsError, load_bls_server
from t2i_router.triton.repository import (
    GPU_BLS_TEMPLATE,
    EngineModelSettings,
    build_gpu_repository,
    engine_config_pbtxt,
    onnx_batched_io,
    unet_plan_path,
)

# The repository's engine names, each backed by a tiny seeded UNet of its kind of conditioning.
TINY = TINY_ENGINE_UNETS
MAX_BATCH = 4  # images per engine execute; the UNet models take 8 rows
PROMPTS = [
    "a red circle",
    "two big blue squares left of a green triangle on black",
    "anything at all, even a dog",
    "four tiny yellow triangles",
]
NP_TYPES = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_INT32": np.int32}
DT = model_config_pb2.DataType


@dataclass
class TinyEngine:
    config: EngineConfig
    model: Denoiser
    engine_dir: Path
    onnx_path: Path


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _graph_inputs(onnx_path: Path) -> list[str]:
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return [v.name for v in graph.input if v.name not in initializers]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def tiny_engines(tmp_path_factory) -> dict[str, TinyEngine]:
    """models/<engine>/{config.json, model.safetensors, model.onnx}; two exports in all."""
    models = tmp_path_factory.mktemp("models")
    engines = {}
    for name, unet in TINY.items():
        torch.manual_seed(0)
        config = EngineConfig(name=name, unet=unet, default_steps=2, max_steps=10)
        model = Denoiser(unet).eval()
        engine_dir = save_engine(model, config, models / name)
        onnx_path = export_onnx(model, engine_dir / ONNX_FILE)
        engines[name] = TinyEngine(config, model, engine_dir, onnx_path)
    return engines


@pytest.fixture(scope="module")
def gpu_repo(tiny_engines, tmp_path_factory) -> Path:
    models_dir = next(iter(tiny_engines.values())).engine_dir.parent
    repo = tmp_path_factory.mktemp("repo") / "triton_repo_gpu"
    return build_gpu_repository(repo, models_dir, tuple(tiny_engines), MAX_BATCH)


# --- the GPU repository's configs (CPU) ------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_unet_config_is_a_tensorrt_plan_model_with_the_graphs_inputs(name, tiny_engines, gpu_repo):
    config = _parse(gpu_repo / f"{name}_unet" / "config.pbtxt")
    assert config.name == f"{name}_unet"
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 2 * MAX_BATCH  # guidance: two rows per image
    assert [i.name for i in config.input] == _graph_inputs(tiny_engines[name].onnx_path)
    declared = {i.name: i for i in config.input}
    expected = {
        "sample": (DT.TYPE_FP32, [3, 32, 32]),
        "timestep": (DT.TYPE_INT64, [1]),
        "tokens": (DT.TYPE_FP32, [24, 384]),
        "mask": (DT.TYPE_FP32, [24]),
    }
    for input_name, tensor in declared.items():
        assert (tensor.data_type, list(tensor.dims)) == expected[input_name], input_name
    # timestep is [batch] in the plan: one value per row, reshaped away from the API's [B, 1].
    assert declared["timestep"].HasField("reshape")
    assert list(declared["timestep"].reshape.shape) == []
    assert not any(declared[n].HasField("reshape") for n in declared if n != "timestep")
    (velocity,) = config.output
    assert (velocity.name, velocity.data_type, list(velocity.dims)) == (
        "velocity",
        DT.TYPE_FP32,
        [3, 32, 32],
    )
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert config.HasField("dynamic_batching")
    assert (gpu_repo / f"{name}_unet" / "1").is_dir()
    assert unet_plan_path(gpu_repo, name) == gpu_repo / f"{name}_unet" / "1" / "model.plan"


@pytest.mark.parametrize("name", list(TINY))
def test_bls_engine_model_serves_the_cpu_models_api_and_names_its_unet(
    name, tiny_engines, gpu_repo
):
    model_dir = gpu_repo / name
    config = _parse(model_dir / "config.pbtxt")
    cpu = text_format.Parse(
        engine_config_pbtxt(name, "x", EngineModelSettings(max_batch_size=MAX_BATCH)),
        model_config_pb2.ModelConfig(),
    )
    assert config.backend == "python"
    assert list(config.input) == list(cpu.input)  # the router calls both repositories alike
    assert list(config.output) == list(cpu.output)
    assert config.max_batch_size == MAX_BATCH
    params = {k: v.string_value for k, v in config.parameters.items()}
    unet = _parse(gpu_repo / params["unet_model"] / "config.pbtxt")
    assert params["unet_model"] == f"{name}_unet"
    assert params["unet_inputs"].split(",") == [i.name for i in unet.input]
    assert int(params["unet_max_batch_size"]) == unet.max_batch_size
    assert 2 * int(params["batch_size"]) <= unet.max_batch_size
    assert (model_dir / params["engine_dir"]).resolve() == tiny_engines[name].engine_dir.resolve()
    assert (model_dir / "1" / "model.py").read_text() == GPU_BLS_TEMPLATE.read_text()
    assert not (model_dir / "triton_python_backend_stub").exists()


def test_gpu_repo_leaves_out_an_input_the_graph_drops(tiny_engines, tmp_path):
    """Cross-attention graphs never read mask; exporters keep it (dynamo) or drop it
    (TorchScript). Without it in the graph, neither config may declare it."""
    source = tiny_engines["cloud_large"].onnx_path
    model = onnx.load(str(source))
    assert not any("mask" in node.input for node in model.graph.node)  # unused, so droppable
    kept = [v for v in model.graph.input if v.name != "mask"]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    onnx.checker.check_model(model)
    (tmp_path / "models" / "cloud_large").mkdir(parents=True)
    onnx.save(model, str(tmp_path / "models" / "cloud_large" / ONNX_FILE))
    stub = tmp_path / "triton_python_backend_stub"
    stub.write_bytes(b"\x7fELF stub")

    repo = build_gpu_repository(
        tmp_path / "repo", tmp_path / "models", ("cloud_large",), 8, python_stub=stub
    )
    unet = _parse(repo / "cloud_large_unet" / "config.pbtxt")
    assert [i.name for i in unet.input] == ["sample", "timestep", "tokens"]
    engine = _parse(repo / "cloud_large" / "config.pbtxt")
    assert engine.parameters["unet_inputs"].string_value == "sample,timestep,tokens"
    assert (repo / "cloud_large" / "triton_python_backend_stub").read_bytes() == b"\x7fELF stub"


def test_gpu_repo_without_an_onnx_graph_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="edge_small"):
        build_gpu_repository(tmp_path / "repo", tmp_path / "models", ("edge_small",), 8)


# --- the plan builder's profile (CPU) --------------------------------------------------------


def test_batch_profile_ranges_every_declared_input_over_the_batch(tiny_engines):
    inputs, _ = onnx_batched_io(tiny_engines["edge_small"].onnx_path)
    network_shapes = [(t.name, (-1, *t.dims)) for t in inputs]  # as TensorRT's parser reports
    profile = batch_profile(network_shapes, 1, 8, 16)
    assert list(profile) == ["sample", "timestep", "tokens", "mask"]
    assert profile["sample"] == ((1, 3, 32, 32), (8, 3, 32, 32), (16, 3, 32, 32))
    assert profile["timestep"] == ((1,), (8,), (16,))
    assert profile["tokens"] == ((1, 24, 384), (8, 24, 384), (16, 24, 384))
    assert profile["mask"] == ((1, 24), (8, 24), (16, 24))


@pytest.mark.parametrize(
    "inputs, batches, message",
    [
        ([("sample", (-1, 3, 32, 32))], (0, 1, 1), "1 <= min <= opt <= max"),
        ([("sample", (-1, 3, 32, 32))], (4, 2, 8), "min=4 opt=2 max=8"),
        ([("sample", (2, 3, 32, 32))], (1, 1, 2), "batch axis is not dynamic"),
        ([("tokens", (-1, -1, 384))], (1, 1, 2), "only the batch may be dynamic"),
    ],
)
def test_batch_profile_rejects_what_it_cannot_range(inputs, batches, message):
    with pytest.raises(ValueError, match=message):
        batch_profile(inputs, *batches)


def _fake_tensorrt(calls: dict) -> SimpleNamespace:
    """Just enough of the TensorRT 10 builder API; the 'parser' reads the real ONNX inputs."""

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            for spec in onnx_batched_io(path)[0]:
                self.network.inputs.append(SimpleNamespace(name=spec.name, shape=(-1, *spec.dims)))
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"][name] = (lo, opt, hi)

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):
            calls["flags"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles_added"] += 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"fake plan"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    return SimpleNamespace(
        __version__="10.5.0",
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace"),
        BuilderFlag=SimpleNamespace(FP16="fp16"),
    )


def test_build_engine_profiles_every_network_input_and_writes_the_plan(
    tiny_engines, tmp_path, monkeypatch
):
    calls = {"profile": {}, "flags": [], "profiles_added": 0}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(calls))
    plan = tmp_path / "unet" / "1" / "model.plan"
    out = build_engine(tiny_engines["edge_small"].onnx_path, plan, 1, 8, 16, workspace_gib=1)
    assert out == plan and plan.read_bytes() == b"fake plan"
    assert list(calls["profile"]) == ["sample", "timestep", "tokens", "mask"]
    assert calls["profile"]["mask"] == ((1, 24), (8, 24), (16, 24))
    assert calls["profiles_added"] == 1
    assert calls["flags"] == ["fp16"] and calls["workspace"] == 1 << 30
    assert calls["network_flags"] == 0  # explicit batch is implied on TensorRT 10


def test_tensorrt_missing_raises_tensorrt_unavailable_naming_it(
    tiny_engines, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(TensorRTUnavailable, match="cannot import tensorrt"):
        build_engine(tiny_engines["edge_small"].onnx_path, tmp_path / "model.plan")
    with pytest.raises(TensorRTUnavailable, match="cannot import tensorrt"):
        TensorRTDenoiser(tmp_path / "model.plan")
    assert not (tmp_path / "model.plan").exists()


# --- the BLS denoiser with a fake triton_python_backend_utils (CPU) --------------------------


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class FakeResponse:
    def __init__(self, outputs: list[FakeTensor] = (), error: str | None = None) -> None:
        self.outputs, self._error = list(outputs), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self):
        return SimpleNamespace(message=lambda: self._error)


def fake_pb_utils(handler) -> SimpleNamespace:
    """A stand-in for triton_python_backend_utils whose BLS requests go to ``handler``."""
    sent = []

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, preferred_memory=None):
            self.model_name = model_name
            self.requested_output_names = requested_output_names
            self.inputs = inputs
            self.preferred_memory = preferred_memory
            sent.append(self)

        def exec(self):
            return handler(self)

    return SimpleNamespace(
        Tensor=FakeTensor,
        InferenceRequest=InferenceRequest,
        PreferredMemory=lambda kind, device=0: (kind, device),
        TRITONSERVER_MEMORY_CPU="cpu-memory",
        get_output_tensor_by_name=lambda r, n: next((t for t in r.outputs if t.name() == n), None),
        sent=sent,
    )


def triton_unet(config: model_config_pb2.ModelConfig, model: Denoiser):
    """Serve a BLS request as Triton would serve ``config``: check names, types, shapes and batch
    against the config, apply its reshapes, run the UNet."""

    def handle(request) -> FakeResponse:
        assert request.model_name == config.name
        assert request.requested_output_names == ["velocity"]
        assert request.preferred_memory == ("cpu-memory", 0)
        got = {t.name(): t.as_numpy() for t in request.inputs}
        assert list(got) == [i.name for i in config.input]
        feeds = {}
        for spec in config.input:
            a = got[spec.name]
            dtype = NP_TYPES[model_config_pb2.DataType.Name(spec.data_type)]
            assert a.dtype == dtype, (spec.name, a.dtype)
            assert list(a.shape[1:]) == list(spec.dims), (spec.name, a.shape)
            assert 1 <= a.shape[0] <= config.max_batch_size
            if spec.HasField("reshape"):
                a = a.reshape(a.shape[0], *spec.reshape.shape)
            feeds[spec.name] = torch.from_numpy(a)
        mask = feeds.get("mask", torch.zeros(feeds["tokens"].shape[:2]))
        with torch.no_grad():
            v = model(feeds["sample"], feeds["timestep"], feeds["tokens"], mask)
        return FakeResponse([FakeTensor("velocity", v.numpy())])

    return handle


def _rows(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, 32, 32, generator=g),
        torch.randint(0, 1000, (n,), generator=g),
        torch.randn(n, 24, 384, generator=g),
        (torch.rand(n, 24, generator=g) > 0.3).float(),
    )


def test_bls_denoiser_sends_requests_with_the_names_dtypes_and_shapes_of_the_config(
    tiny_engines, gpu_repo
):
    engine = tiny_engines["edge_small"]
    unet = _parse(gpu_repo / "edge_small_unet" / "config.pbtxt")
    pb = fake_pb_utils(triton_unet(unet, engine.model))
    denoiser = BlsDenoiser("edge_small_unet", [i.name for i in unet.input], max_rows=4, pb_utils=pb)
    sample, timestep, tokens, mask = _rows(10)

    got = denoiser(sample, timestep, tokens, mask)

    assert [t.as_numpy().shape[0] for r in pb.sent for t in r.inputs[:1]] == [4, 4, 2]
    first = {t.name(): t.as_numpy() for t in pb.sent[0].inputs}
    assert {k: (v.dtype, v.shape) for k, v in first.items()} == {
        "sample": (np.float32, (4, 3, 32, 32)),
        "timestep": (np.int64, (4, 1)),
        "tokens": (np.float32, (4, 24, 384)),
        "mask": (np.float32, (4, 24)),
    }
    np.testing.assert_array_equal(first["timestep"][:, 0], timestep[:4].numpy())
    with torch.no_grad():
        want = engine.model(sample, timestep, tokens, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # rows come back in order


def test_bls_denoiser_sends_only_the_inputs_the_unet_declares():
    pb = fake_pb_utils(lambda r: FakeResponse([FakeTensor("velocity", np.zeros((2, 3, 32, 32)))]))
    denoiser = BlsDenoiser("cloud_large_unet", ["sample", "timestep", "tokens"], pb_utils=pb)
    out = denoiser(*_rows(2))
    assert [t.name() for t in pb.sent[0].inputs] == ["sample", "timestep", "tokens"]
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    "response, message",
    [
        (FakeResponse(error="out of memory"), "edge_small_unet failed: out of memory"),
        (FakeResponse([]), "returned no velocity"),
        (FakeResponse([FakeTensor("velocity", np.zeros((1, 3, 32, 32)))]), r"shape \[1, 3, 32"),
    ],
)
def test_bls_denoiser_raises_on_a_failed_or_malformed_answer(response, message):
    denoiser = BlsDenoiser("edge_small_unet", pb_utils=fake_pb_utils(lambda r: response))
    with pytest.raises(BlsError, match=message):
        denoiser(*_rows(2))


def test_bls_denoiser_rejects_unknown_inputs():
    with pytest.raises(ValueError, match="'prompt'"):
        BlsDenoiser("x_unet", ["sample", "prompt"], pb_utils=fake_pb_utils(None))


def test_bls_engine_model_generates_the_torch_engines_images(tiny_engines, gpu_repo, encoder):
    """The BLS model's whole path, from its generated parameters to images, against torch."""
    engine = tiny_engines["edge_small"]
    model_dir = gpu_repo / "edge_small"
    config = _parse(model_dir / "config.pbtxt")
    params = {k: v.string_value for k, v in config.parameters.items()}
    unet = _parse(gpu_repo / params["unet_model"] / "config.pbtxt")
    pb = fake_pb_utils(triton_unet(unet, engine.model))
    server = load_bls_server(params, model_dir, pb, encoder)

    seeds = np.arange(len(PROMPTS), dtype=np.int64).reshape(-1, 1)
    prompts = np.array([p.encode() for p in PROMPTS], dtype=object).reshape(-1, 1)
    bad = EngineRequest(
        np.array([[b"a red circle"]], dtype=object), np.array([[1]]), np.array([[0]])
    )
    (images, error) = server.run([EngineRequest(prompts, seeds), bad])

    want = Engine(engine.config, engine.model, encoder).generate(PROMPTS, seeds.ravel())
    assert isinstance(images, np.ndarray), images
    assert pb.sent, "no UNet call went through BLS"
    assert_same_images(images, want)  # the UNet model's pieces are other batches
    assert "steps is 0" in str(error)


def test_load_bls_server_names_a_missing_parameter(tmp_path):
    with pytest.raises(ValueError, match="unet_model"):
        load_bls_server({"engine_dir": str(tmp_path)}, tmp_path, fake_pb_utils(None))


# --- the command (CPU) -----------------------------------------------------------------------


def test_build_gpu_repo_without_tensorrt_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "triton_repo_gpu"
    code = main(
        ["triton", "build-gpu-repo", "--out", str(out), "--models-dir", str(tmp_path / "none")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err, err
    assert err.startswith("t2i-router: error: TensorRT is not available")
    assert "NGC Triton container" in err and "nvcr.io/nvidia/tritonserver" in err
    assert not out.exists()  # it stops before exporting or writing anything


# --- TensorRT on a GPU -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def plans(tiny_engines, tmp_path_factory):
    """Builds each tiny engine's plan on first use (rows 1..16, tuned for 8)."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install tensorrt-cu12)")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA (a CUDA build of torch is needed)")
    root = tmp_path_factory.mktemp("plans")
    built: dict[str, Path] = {}

    def plan(name: str) -> Path:
        if name not in built:
            built[name] = build_engine(
                tiny_engines[name].onnx_path, root / name / "model.plan", 1, 8, 16
            )
        return built[name]

    return plan


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TINY))
def test_tensorrt_denoiser_matches_torch_within_fp16_tolerance(name, tiny_engines, plans):
    denoiser = TensorRTDenoiser(plans(name))
    assert denoiser.max_batch == 16
    sample, timestep, tokens, mask = _rows(20)  # more rows than the profile: two pieces
    got = denoiser(sample, timestep, tokens, mask)
    with torch.no_grad():
        want = tiny_engines[name].model(sample, timestep, tokens, mask)
    assert got.shape == want.shape and got.dtype == torch.float32
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2 * max(1.0, scale))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TINY))
def test_tensorrt_engine_images_agree_with_torch(name, tiny_engines, plans, encoder):
    engine = tiny_engines[name]
    seeds = list(range(len(PROMPTS)))
    want = Engine(engine.config, engine.model, encoder).generate(PROMPTS, seeds, steps=3)
    got = Engine(engine.config, TensorRTDenoiser(plans(name)), encoder).generate(
        PROMPTS, seeds, steps=3
    )
    close = np.abs(got.astype(int) - want.astype(int)) <= 2
    assert close.mean() >= 0.98, close.mean()


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(TINY))
def test_plan_io_matches_the_generated_triton_config(name, plans, gpu_repo):
    """What Triton checks when it loads the plan: names, types and per-row shapes."""
    import tensorrt as trt

    types = {trt.float32: DT.TYPE_FP32, trt.int32: DT.TYPE_INT32}
    if hasattr(trt, "int64"):
        types[trt.int64] = DT.TYPE_INT64
    engine = TensorRTDenoiser(plans(name)).engine
    config = _parse(gpu_repo / f"{name}_unet" / "config.pbtxt")
    for spec in [*config.input, *config.output]:
        shape = list(engine.get_tensor_shape(spec.name))
        assert shape[0] == -1, (spec.name, shape)
        per_row = list(spec.reshape.shape) if spec.HasField("reshape") else list(spec.dims)
        assert shape[1:] == per_row, (spec.name, shape)
        assert types.get(engine.get_tensor_dtype(spec.name)) == spec.data_type, spec.name
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    assert sorted(names) == sorted([*(i.name for i in config.input), "velocity"])


def test_gpu_repo_holds_an_engine_model_and_a_unet_model_per_engine(gpu_repo):
    assert sorted(p.name for p in gpu_repo.iterdir()) == [
        "cloud_large",
        "cloud_large_unet",
        "edge_small",
        "edge_small_unet",
    ]
