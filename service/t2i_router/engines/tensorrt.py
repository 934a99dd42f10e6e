"""Compile a denoiser's ONNX graph to a TensorRT plan, and run a plan in-process (GPU only).

On a GPU the engines' UNets are served by Triton as ``tensorrt_plan`` models
(:func:`t2i_router.triton.repository.build_gpu_repository`); :func:`build_engine` writes their
``model.plan``. :class:`TensorRTDenoiser` runs a plan behind the denoiser signature (torch in,
torch out) so that a GPU session can check plans against torch before serving them.

TensorRT is not a dependency of this project: it is imported inside the functions that need it,
and its absence raises :class:`TensorRTUnavailable` naming what is missing. Plans are specific to
the TensorRT version and the GPU that built them, so build them where they are served (inside the
NGC Triton container; README, "GPU deployment (TensorRT)").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from t2i_router.engines.export import INPUT_NAMES, OUTPUT_NAME
from t2i_router.errors import FailedPrecondition, MissingFileError, ModelError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


class TensorRTUnavailable(FailedPrecondition, RuntimeError):
    """TensorRT (its Python package or libraries), or a CUDA device, is missing here."""


class TensorRTError(ModelError, RuntimeError):
    """TensorRT could not parse a graph, build a plan, or load or run one."""


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module.

    Raises:
        TensorRTUnavailable: it cannot be imported; the message names what is missing.
    """
    try:
        import tensorrt
    except ImportError as e:  # no package, or its native libraries (libnvinfer) are missing
        raise TensorRTUnavailable(f"TensorRT is not available: cannot import tensorrt ({e})") from e
    return tensorrt


def batch_profile(
    inputs: Sequence[tuple[str, Shape]], min_batch: int, opt_batch: int, max_batch: int
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes for every input, varying only the leading (batch) axis.

    Args:
        inputs: name and shape of each network input, ``-1`` marking a dynamic axis.
        min_batch, opt_batch, max_batch: the batch range the plan serves and the size it is
            tuned for; ``1 <= min_batch <= opt_batch <= max_batch``.

    Raises:
        ValueError: a bad batch range, or an input whose batch axis is static or whose other
            axes are dynamic (this builder only knows how to range over the batch).
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(
            f"batch profile min={min_batch} opt={opt_batch} max={max_batch} "
            "must satisfy 1 <= min <= opt <= max"
        )
    profile = {}
    for name, shape in inputs:
        shape = tuple(int(d) for d in shape)
        if not shape or shape[0] != -1:
            raise ValueError(f"input {name} has shape {list(shape)}: its batch axis is not dynamic")
        if any(d < 0 for d in shape[1:]):
            raise ValueError(f"input {name} has shape {list(shape)}: only the batch may be dynamic")
        rest = shape[1:]
        profile[name] = ((min_batch, *rest), (opt_batch, *rest), (max_batch, *rest))
    return profile


def _network_flags(trt: ModuleType) -> int:
    # TensorRT 10 networks are always explicit-batch (the flag is deprecated); 8.x needs it.
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    min_batch: int = 1,
    opt_batch: int = 16,
    max_batch: int = 64,
    fp16: bool = True,
    workspace_gib: float = 2,
) -> Path:
    """Compile an ONNX denoiser to a serialized TensorRT plan at ``plan_path`` (GPU only).

    The optimization profile ranges the batch axis of every input the graph declares (read from
    the parsed network: a graph may keep or drop the unused ``mask``), so the plan accepts any
    batch in ``min_batch..max_batch``. The plan file is replaced atomically.

    Args:
        onnx_path: the graph written by :func:`t2i_router.engines.export.export_onnx`.
        plan_path: where to write the plan (Triton: ``<model>/1/model.plan``).
        min_batch, opt_batch, max_batch: rows per call (a guided step has 2 per image).
        fp16: let TensorRT choose FP16 kernels (inputs and outputs stay FP32).
        workspace_gib: the builder's scratch memory limit.

    Returns:
        ``plan_path``.

    Raises:
        TensorRTUnavailable: TensorRT cannot be imported.
        TensorRTError: the graph does not parse or the plan does not build.
        ValueError: a bad batch range, or an input with a static batch axis.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    batch_profile([], min_batch, opt_batch, max_batch)  # validate before the slow work
    if not onnx_path.exists():
        raise MissingFileError(f"no ONNX graph at {onnx_path}")
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT cannot parse {onnx_path}: {errors or 'no details'}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    shapes = batch_profile(
        [(t.name, tuple(t.shape)) for t in inputs], min_batch, opt_batch, max_batch
    )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    log.info(
        "building %s from %s: inputs %s, batch %d/%d/%d, fp16=%s",
        plan_path,
        onnx_path,
        {name: list(s[2]) for name, s in shapes.items()},
        min_batch,
        opt_batch,
        max_batch,
        fp16,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT failed to build a plan from {onnx_path}; see its log")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_name(plan_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)  # Triton never sees half a plan
    return plan_path


def _torch_dtypes(trt: ModuleType) -> dict:
    import torch

    names = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int32": torch.int32,
        "int64": torch.int64,  # TensorRT >= 10
        "int8": torch.int8,
        "bool": torch.bool,
    }
    return {getattr(trt, k): v for k, v in names.items() if hasattr(trt, k)}


class TensorRTDenoiser:
    """A TensorRT plan behind the denoiser signature: torch in (any device), torch out (CPU).

    GPU only: needs TensorRT and a CUDA build of torch with a visible device. Inputs are copied to
    the GPU in the dtype the plan declares (e.g. ``timestep`` as int32 on TensorRT 8), shapes are
    set per call, and batches larger than the plan's profile are run in pieces. For parity checks
    in-process; serving goes through Triton.
    """

    def __init__(self, plan_path: str | Path, device: str | int = "cuda") -> None:
        import torch

        trt = require_tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTUnavailable(
                "torch sees no CUDA device (torch.cuda.is_available() is False); "
                "TensorRTDenoiser needs an NVIDIA GPU and a CUDA build of torch"
            )
        plan_path = Path(plan_path)
        if not plan_path.exists():
            raise MissingFileError(f"no TensorRT plan at {plan_path}")
        self.path = plan_path
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self.engine is None:
                raise TensorRTError(
                    f"TensorRT {trt.__version__} cannot load {plan_path} "
                    "(built by another TensorRT version or for another GPU?)"
                )
            self.context = self.engine.create_execution_context()
            # Its own stream: TensorRT syncs extra around the default (legacy) stream.
            self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = tuple(
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        )
        unknown = set(self.input_names) - set(INPUT_NAMES)
        if unknown or OUTPUT_NAME not in names:
            raise TensorRTError(
                f"{plan_path} has tensors {names}; expected inputs from {list(INPUT_NAMES)} "
                f"and output {OUTPUT_NAME!r}"
            )
        dtypes = _torch_dtypes(trt)
        self.dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        # Profile 0's largest batch: [min, opt, max] shapes per input.
        self.max_batch = min(
            int(self.engine.get_tensor_profile_shape(n, 0)[2][0]) for n in self.input_names
        )

    def __call__(
        self,
        sample: torch.Tensor,  # (B, 3, 32, 32)
        timestep: torch.Tensor,  # (B,)
        tokens: torch.Tensor,  # (B, L, D)
        mask: torch.Tensor,  # (B, L)
    ) -> torch.Tensor:  # (B, 3, 32, 32) float32 on the CPU
        import torch

        feeds = {"sample": sample, "timestep": timestep, "tokens": tokens, "mask": mask}
        b = sample.shape[0]
        pieces = [
            self._run({n: feeds[n][start : start + self.max_batch] for n in self.input_names})
            for start in range(0, b, self.max_batch)
        ]
        return torch.cat(pieces) if pieces else torch.zeros((0, *sample.shape[1:]))

    def _run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        import torch

        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            on_gpu = {}  # kept alive until the stream is done with them
            for name, value in feeds.items():
                t = value.to(self.device, self.dtypes[name]).contiguous()
                on_gpu[name] = t
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"{name} has shape {list(t.shape)}, outside {self.path}")
                self.context.set_tensor_address(name, t.data_ptr())
            shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
            out = torch.empty(shape, dtype=self.dtypes[OUTPUT_NAME], device=self.device)
            self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise TensorRTError(f"TensorRT failed to run {self.path}")
            self.stream.synchronize()
        return out.float().cpu()
