"""The Triton Python-backend side of t2i-router's models: pb_utils requests <-> pure servers.

Only this module (and the thin ``model.py`` templates in ``templates/``) touches
``triton_python_backend_utils``, which exists only inside Triton's Python backend; it is passed
in as ``pb_utils`` (tests pass a fake one). The servers it delegates to
(:class:`t2i_router.engines.serving.EngineServer`) are pure and tested without Triton: each is
injected here with its denoiser (ONNX Runtime, torch, or :class:`BlsDenoiser`) and its text
encoder (inline MiniLM, or :class:`BlsTextEncoder`).

Sections: shared helpers; engines (``execute_engine`` and the loaders of the CPU and GPU
repositories' engine models); BLS calls to other models (:class:`BlsDenoiser`,
:class:`BlsTextEncoder`); the shared text encoder model (``encode_triton``); the quality
estimator (``load_estimator``, ``execute_estimator``; its server is
:class:`t2i_router.estimator.serving.EstimatorServer`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from t2i_router.engines.config import EngineConfig
from t2i_router.engines.engine import CONFIG_FILE, Engine
from t2i_router.engines.export import INPUT_DTYPES, INPUT_NAMES, OUTPUT_NAME
from t2i_router.engines.serving import EngineRequest, EngineServer, ServingConfig, load_engine
from t2i_router.engines.text_encoder import TextEncoder, TextEncoderConfig
from t2i_router.errors import ConfigError, InvalidRequest, MissingFileError, ModelError, RouterError

log = logging.getLogger(__name__)

__all__ = [
    "ESTIMATOR_INPUT",
    "ESTIMATOR_OUTPUT",
    "BlsDenoiser",
    "BlsError",
    "BlsTextEncoder",
    "encode_triton",
    "execute_engine",
    "execute_estimator",
    "load_bls_server",
    "load_engine_server",
    "load_estimator",
    "model_parameters",
    "triton_error",
]


# --- shared: pb_utils, parameters -------------------------------------------------------------


def _pb_utils(pb_utils: ModuleType | None) -> ModuleType:
    if pb_utils is not None:
        return pb_utils
    import triton_python_backend_utils

    return triton_python_backend_utils


def model_parameters(args: dict) -> dict[str, str]:
    """A Python model's ``parameters {}`` as strings, from ``initialize(args)``."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def _to_torch(tensor: Any) -> torch.Tensor:
    """A pb_utils.Tensor (CPU or GPU memory) as a CPU torch tensor that owns its memory."""
    if hasattr(tensor, "is_cpu") and not tensor.is_cpu():
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).cpu()
    # A copy: the response's buffer is released once the response object goes.
    return torch.from_numpy(np.array(tensor.as_numpy(), copy=True))


# --- engines: edge_small, cloud_large (CPU and GPU repositories) ------------------------------


def load_engine_server(args: dict, pb_utils: ModuleType | None = None) -> EngineServer:
    """The server of a CPU-repository engine model, from its ``initialize(args)``.

    Parameters are :class:`~t2i_router.engines.serving.ServingConfig`'s; with
    ``text_encoder`` other than ``inline`` the prompts are encoded by that Triton model (BLS).
    """
    settings = ServingConfig.from_parameters(model_parameters(args), args["model_repository"])
    encoder = None
    if settings.text_encoder != "inline":
        encoder = BlsTextEncoder(settings.text_encoder, pb_utils=pb_utils)
    return EngineServer(load_engine(settings, encoder), settings.batch_size)  # type: ignore[arg-type]


def execute_engine(server: EngineServer, requests: list, pb_utils) -> list:
    """An engine model's ``execute``: pb_utils requests in, one response per request out."""

    def read(request, name: str) -> np.ndarray | None:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    parsed = [
        EngineRequest(read(r, "PROMPT"), read(r, "SEED"), read(r, "STEPS"), read(r, "GUIDANCE"))
        for r in requests
    ]
    responses = []
    for result in server.run(parsed):
        if isinstance(result, Exception):
            code = getattr(pb_utils.TritonError, result.triton_code)
            responses.append(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(str(result), code))
            )
        else:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("IMAGE", result)]))
    return responses


def load_bls_server(
    params: Mapping[str, str],
    base_dir: str | Path,
    pb_utils: ModuleType | None = None,
    encoder: TextEncoder | None = None,
) -> EngineServer:
    """The engine server of a GPU-repository engine model, from its Triton ``parameters``.

    Parameters: ``engine_dir`` (config.json of the engine, relative to ``base_dir``),
    ``batch_size`` (images per UNet call), ``unet_model``, ``unet_inputs`` (comma-separated) and
    ``unet_max_batch_size``. The engine's weights are not loaded: the UNet model holds them.

    Raises:
        ConfigError: a parameter is missing or bad, quoting it (a ``ValueError`` too).
        MissingFileError: the engine's config.json is missing (a ``FileNotFoundError`` too).
    """
    for key in ("engine_dir", "unet_model", "unet_inputs", "unet_max_batch_size"):
        if key not in params:
            raise ConfigError(f"parameter {key} is missing")
    settings = ServingConfig.from_parameters(dict(params), base_dir)
    config_path = Path(settings.engine_dir) / CONFIG_FILE
    if not config_path.exists():
        raise MissingFileError(f"engine config missing: {config_path} does not exist")
    config = EngineConfig.from_dict(json.loads(config_path.read_text()))
    denoiser = BlsDenoiser(
        params["unet_model"],
        [n.strip() for n in params["unet_inputs"].split(",") if n.strip()],
        int(params["unet_max_batch_size"]),
        pb_utils,
    )
    log.info("engine %s samples through %s", config.name, denoiser.model_name)
    engine = Engine(config, denoiser, encoder or TextEncoder(TextEncoderConfig()))
    return EngineServer(engine, settings.batch_size)


# --- BLS: calls from one Python model to another ----------------------------------------------

# timestep is one value per row: the Triton config declares it as dims [1] reshaped to [] for the
# plan, so a request sends it as (B, 1). The dtypes are the ONNX graph's (engines.export).
ROW_INPUTS = frozenset({"timestep"})


class BlsError(ModelError, RuntimeError):
    """The UNet model failed a BLS request or answered with something unusable."""


class BlsDenoiser:
    """Denoise callable (torch in, torch out) that runs the UNet in another Triton model.

    In the GPU repository (:func:`t2i_router.triton.repository.build_gpu_repository`) each
    engine is a Python model that validates, encodes prompts and samples exactly as on the CPU,
    but whose denoiser sends each UNet call to the ``<engine>_unet`` TensorRT model with
    ``pb_utils.InferenceRequest(...).exec()``.

    Args:
        model_name: the UNet model (``<engine>_unet``).
        input_names: the inputs that model declares (its ONNX graph's; ``mask`` may be absent).
        max_rows: the model's ``max_batch_size``; larger calls are sent in pieces.
        pb_utils: ``triton_python_backend_utils`` (imported when None).
    """

    def __init__(
        self,
        model_name: str,
        input_names: Sequence[str] = INPUT_NAMES,
        max_rows: int = 128,
        pb_utils: ModuleType | None = None,
    ) -> None:
        unknown = [n for n in input_names if n not in INPUT_DTYPES]
        if unknown or not input_names:
            raise ConfigError(
                f"UNet inputs are {list(input_names)}; expected names from {list(INPUT_NAMES)}"
            )
        if max_rows < 1:
            raise ConfigError(f"max_rows is {max_rows}, must be >= 1")
        self.model_name = model_name
        self.input_names = tuple(input_names)
        self.max_rows = max_rows
        self.pb = _pb_utils(pb_utils)

    def arrays(
        self,
        sample: torch.Tensor,  # (B, 3, 32, 32)
        timestep: torch.Tensor,  # (B,)
        tokens: torch.Tensor,  # (B, L, D)
        mask: torch.Tensor,  # (B, L)
    ) -> dict[str, np.ndarray]:
        """The numpy arrays one request sends, in the UNet model's dtypes and shapes."""
        given = {"sample": sample, "timestep": timestep, "tokens": tokens, "mask": mask}
        out = {}
        for name in self.input_names:
            a = given[name].detach().cpu().numpy().astype(INPUT_DTYPES[name], copy=False)
            if name in ROW_INPUTS:
                a = a.reshape(-1, 1)  # (B,) -> (B, 1)
            out[name] = np.ascontiguousarray(a)
        return out

    def build_request(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
    ) -> Any:
        """One ``pb_utils.InferenceRequest`` for these rows (at most ``max_rows``)."""
        pb = self.pb
        arrays = self.arrays(sample, timestep, tokens, mask)
        kwargs: dict[str, Any] = {
            "model_name": self.model_name,
            "requested_output_names": [OUTPUT_NAME],
            "inputs": [pb.Tensor(name, a) for name, a in arrays.items()],
        }
        if hasattr(pb, "PreferredMemory"):  # Triton >= 23.04: have the output put in CPU memory
            kwargs["preferred_memory"] = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0)
        return pb.InferenceRequest(**kwargs)

    def __call__(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:  # (B, 3, 32, 32) float32
        b = sample.shape[0]
        pieces = []
        for start in range(0, b, self.max_rows):
            rows = slice(start, start + self.max_rows)
            pieces.append(
                self._exec(sample[rows], timestep[rows], tokens[rows], mask[rows], sample.shape)
            )
        return torch.cat(pieces) if pieces else torch.zeros((0, *sample.shape[1:]))

    def _exec(self, sample, timestep, tokens, mask, full_shape) -> torch.Tensor:
        response = self.build_request(sample, timestep, tokens, mask).exec()
        if response.has_error():
            raise BlsError(f"{self.model_name} failed: {response.error().message()}")
        tensor = self.pb.get_output_tensor_by_name(response, OUTPUT_NAME)
        if tensor is None:
            raise BlsError(f"{self.model_name} returned no {OUTPUT_NAME}")
        velocity = _to_torch(tensor).float()
        want = (sample.shape[0], *full_shape[1:])
        if tuple(velocity.shape) != want:
            raise BlsError(
                f"{self.model_name} returned {OUTPUT_NAME} of shape {list(velocity.shape)}, "
                f"expected {list(want)}"
            )
        return velocity


class BlsTextEncoder:
    """A :class:`TextEncoder` stand-in that encodes through the ``text_encoder`` Triton model.

    With it, the engines share one MiniLM instance (one copy in memory, one batch for the
    prompts of both engines) instead of each holding its own; ``benchmarks/triton_load.py``
    measures both set-ups.
    """

    def __init__(
        self, model_name: str = "text_encoder", max_batch_size: int = 128, pb_utils=None
    ) -> None:
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.pb = _pb_utils(pb_utils)

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings (B, L, 384) float32 and mask (B, L) float32, as TextEncoder."""
        tokens, masks = [], []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = np.array(
                [p.encode("utf-8") for p in prompts[start : start + self.max_batch_size]],
                dtype=object,
            ).reshape(-1, 1)
            request = self.pb.InferenceRequest(
                model_name=self.model_name,
                requested_output_names=["TOKENS", "MASK"],
                inputs=[self.pb.Tensor("PROMPT", chunk)],
            )
            response = request.exec()
            if response.has_error():
                raise BlsError(f"{self.model_name} failed: {response.error().message()}")
            tokens.append(_to_torch(self.pb.get_output_tensor_by_name(response, "TOKENS")).numpy())
            masks.append(_to_torch(self.pb.get_output_tensor_by_name(response, "MASK")).numpy())
        return np.concatenate(tokens), np.concatenate(masks)


# --- text_encoder: the shared MiniLM model ----------------------------------------------------


def encode_triton(encoder: TextEncoder, requests: list, pb_utils) -> list:
    """The ``text_encoder`` model's ``execute``: all requests' prompts encoded in one batch."""
    prompts, sizes = [], []
    for request in requests:
        rows = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)
        prompts += [
            p.decode("utf-8", errors="replace") if isinstance(p, bytes) else p for p in rows
        ]
        sizes.append(len(rows))
    tokens, mask = encoder.encode(prompts)
    responses, start = [], 0
    for n in sizes:
        outputs = [
            pb_utils.Tensor("TOKENS", tokens[start : start + n]),
            pb_utils.Tensor("MASK", mask[start : start + n]),
        ]
        responses.append(pb_utils.InferenceResponse(outputs))
        start += n
    return responses


# --- the quality estimator --------------------------------------------------------------------

ESTIMATOR_INPUT = "PROMPT"
ESTIMATOR_OUTPUT = "Q"
# Our errors -> pb_utils.TritonError codes (a request's fault vs the model's).
_TRITON_CODES = {InvalidRequest: "INVALID_ARG"}


def triton_error(error: RouterError, pb_utils):
    """``pb_utils.TritonError`` for one of our errors, with its message and code."""
    name = next((c for t, c in _TRITON_CODES.items() if isinstance(error, t)), "INTERNAL")
    return pb_utils.TritonError(str(error), getattr(pb_utils.TritonError, name))


def load_estimator(args: dict):
    """The :class:`~t2i_router.estimator.serving.EstimatorServer` of a ``quality_estimator``
    model's ``initialize(args)``: settings from its parameters, model_dir relative to its
    folder; fails when the declared choices or metrics are not the model's."""
    from t2i_router.estimator.serving import EstimatorServer, EstimatorServingConfig

    params = model_parameters(args)
    base = f"{args['model_repository']}"
    server = EstimatorServer.from_serving_config(
        EstimatorServingConfig.from_parameters(params, base)
    )
    if "choices" in params or "metrics" in params:
        server.check_declared(
            params.get("choices", "").split(","), params.get("metrics", "").split(",")
        )
    return server


def execute_estimator(server, requests: list, pb_utils) -> list:
    """``execute`` of ``quality_estimator``: PROMPT (B, 1) bytes in, Q (B, M, K) FP32 out, one
    response per request, a bad request answered with its own error."""
    prompts = []
    for request in requests:
        tensor = pb_utils.get_input_tensor_by_name(request, ESTIMATOR_INPUT)
        prompts.append(np.empty((0, 1), object) if tensor is None else tensor.as_numpy())
    responses = []
    for result in server.run(prompts):
        if isinstance(result, RouterError):
            responses.append(pb_utils.InferenceResponse(error=triton_error(result, pb_utils)))
        else:
            q = np.ascontiguousarray(result, np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(ESTIMATOR_OUTPUT, q)]))
    return responses
