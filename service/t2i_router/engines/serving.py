"""Serve an engine to batched requests: validate each, run the valid ones together, split back.

This is what a Triton ``model.py`` delegates to, through :mod:`t2i_router.triton.backend`
(which alone converts ``pb_utils`` tensors): each request is one or more rows of PROMPT/SEED
and optional STEPS/GUIDANCE; a bad request gets its own error while the rest of its batch is
served; prompts of all valid requests are encoded once and images that share a step count
share UNet calls.

Nothing here knows Triton: :class:`EngineServer` runs an :class:`Engine` injected with its
denoiser (torch, ONNX Runtime, or the backend's BLS denoiser) and its text encoder (inline
MiniLM, or the backend's BLS encoder), so it is tested in-process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2i_router.engines.engine import Engine, load_denoiser
from t2i_router.engines.export import ONNX_FILE, OnnxDenoiser, export_onnx
from t2i_router.engines.sampler import SamplingError
from t2i_router.engines.text_encoder import TextEncoder, TextEncoderConfig
from t2i_router.errors import ConfigError, InvalidRequest, ModelError

log = logging.getLogger(__name__)

MAX_PROMPT_BYTES = 2048


class BadRequest(InvalidRequest, ValueError):
    """One request is malformed; the message names the bad value."""

    triton_code = "INVALID_ARG"


class EngineFailure(ModelError, RuntimeError):
    """The engine failed on a batch (a bug or a resource problem, not the request's fault)."""

    triton_code = "INTERNAL"


@dataclass
class EngineRequest:
    """One request's rows, as numpy arrays of shape (B, 1) (optional inputs may be None)."""

    prompts: np.ndarray  # bytes or str
    seeds: np.ndarray
    steps: np.ndarray | None = None
    guidance: np.ndarray | None = None


@dataclass(frozen=True)
class ServingConfig:
    """Per-model settings, from Triton's ``parameters {}``.

    Attributes:
        engine_dir: folder with config.json, model.safetensors (and model.onnx, made if missing).
        runtime: ``onnxruntime`` (default) or ``torch``.
        threads: intra-op threads for the UNet (0 = the runtime's default).
        batch_size: images per UNet call.
        text_encoder: ``inline`` (the engine holds its own MiniLM) or the name of a Triton
            model to call through BLS (``text_encoder``).
    """

    engine_dir: str
    runtime: str = "onnxruntime"
    threads: int = 0
    batch_size: int = 64
    text_encoder: str = "inline"

    @classmethod
    def from_parameters(cls, params: dict[str, str], base_dir: str | Path) -> ServingConfig:
        """Build from Triton string parameters; ``engine_dir`` is relative to ``base_dir``."""
        if "engine_dir" not in params:
            raise ConfigError("parameter engine_dir is missing")
        engine_dir = Path(os.path.expandvars(params["engine_dir"]))
        if not engine_dir.is_absolute():
            engine_dir = Path(base_dir) / engine_dir
        runtime = params.get("runtime", "onnxruntime")
        if runtime not in ("onnxruntime", "torch"):
            raise ConfigError(f"parameter runtime is {runtime!r}, expected onnxruntime or torch")
        return cls(
            engine_dir=str(engine_dir.resolve()),
            runtime=runtime,
            threads=int(params.get("threads", "0")),
            batch_size=int(params.get("batch_size", "64")),
            text_encoder=params.get("text_encoder", "inline"),
        )


def ensure_onnx(engine_dir: str | Path) -> Path:
    """The engine's ONNX graph, exported again when missing or older than its weights."""
    engine_dir = Path(engine_dir)
    onnx_path = engine_dir / ONNX_FILE
    weights = engine_dir / "model.safetensors"
    if not onnx_path.exists() or onnx_path.stat().st_mtime < weights.stat().st_mtime:
        model, _ = load_denoiser(engine_dir)
        log.info("exporting %s to ONNX", engine_dir)
        export_onnx(model, onnx_path)
    return onnx_path


def load_engine(cfg: ServingConfig, encoder: TextEncoder | None = None) -> Engine:
    """The engine a Triton model serves, with the given text encoder (inline MiniLM if None).

    With the torch runtime, a nonzero ``cfg.threads`` calls ``torch.set_num_threads``, which is
    process-wide: every torch call in the process runs on that many threads from then on (one
    engine per Triton model process, so there it is the engine's own setting).

    Raises:
        ConfigError: ``cfg.text_encoder`` names a Triton model but no encoder was passed (the
            backend builds the one that calls it).
    """
    if encoder is None and cfg.text_encoder != "inline":
        raise ConfigError(
            f"text_encoder is {cfg.text_encoder!r}: pass the encoder that calls that model"
        )
    model, config = load_denoiser(cfg.engine_dir)
    encoder = encoder or TextEncoder(TextEncoderConfig())
    if cfg.runtime == "torch":
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        return Engine(config, model, encoder)
    return Engine(config, OnnxDenoiser(ensure_onnx(cfg.engine_dir), cfg.threads), encoder)


def _rows(name: str, value: np.ndarray | None, n: int) -> np.ndarray | None:
    if value is None:
        return None
    value = np.asarray(value)
    if value.shape[0] != n or value.size != n:
        raise BadRequest(f"{name} has shape {list(value.shape)}, expected [{n}, 1]")
    return value.reshape(n)


def _decode(prompt: bytes | str) -> str:
    if isinstance(prompt, bytes):
        if len(prompt) > MAX_PROMPT_BYTES:
            raise BadRequest(f"PROMPT is {len(prompt)} bytes, the limit is {MAX_PROMPT_BYTES}")
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"PROMPT is not UTF-8: {prompt[:40]!r}") from e
    if not prompt.strip():
        raise BadRequest("PROMPT is empty")
    return prompt


class EngineServer:
    """Validate and run batches of :class:`EngineRequest` on one engine.

    Args:
        engine: the engine, already holding its denoiser and text encoder (any callable
            ``(sample, timestep, tokens, mask) -> velocity`` and anything with ``encode``).
        batch_size: images per UNet call.
    """

    def __init__(self, engine: Engine, batch_size: int = 64) -> None:
        self.engine = engine
        self.batch_size = batch_size

    def _validate(self, request: EngineRequest):
        n = int(np.asarray(request.prompts).shape[0])
        if n == 0:
            raise BadRequest("the request has no rows")
        prompts = [_decode(p) for p in np.asarray(request.prompts).reshape(n)]
        seeds = _rows("SEED", request.seeds, n)
        if seeds is None:
            raise BadRequest("SEED is missing")
        steps = _rows("STEPS", request.steps, n)
        guidance = _rows("GUIDANCE", request.guidance, n)
        try:
            steps_v, guidance_v = self.engine.resolve(n, steps, guidance)
        except SamplingError as e:
            raise BadRequest(str(e)) from e
        return prompts, seeds.astype(np.int64), steps_v, guidance_v

    def run(self, requests: list[EngineRequest]) -> list[np.ndarray | BadRequest | EngineFailure]:
        """One result per request: images (B, 32, 32, 3) uint8, or the request's error."""
        results: list[np.ndarray | BadRequest | EngineFailure | None] = [None] * len(requests)
        prompts, seeds, steps, guidance, owners = [], [], [], [], []
        for i, request in enumerate(requests):
            try:
                p, s, st, g = self._validate(request)
            except BadRequest as e:
                results[i] = e
                continue
            prompts += p
            seeds.append(s)
            steps.append(st)
            guidance.append(g)
            owners += [i] * len(p)
        if prompts:
            try:
                images = self.engine.generate(
                    prompts,
                    np.concatenate(seeds),
                    np.concatenate(steps),
                    np.concatenate(guidance),
                    batch_size=self.batch_size,
                )
            except Exception as e:  # a failure of the batch must still answer every request
                log.exception("engine failed on a batch of %d images", len(prompts))
                failure = EngineFailure(f"engine failed: {type(e).__name__}: {e}")
                return [failure if r is None else r for r in results]
            owners_a = np.asarray(owners)
            for i in set(owners):
                results[i] = images[owners_a == i]
        return results  # type: ignore[return-value]
