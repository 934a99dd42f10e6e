"""Serve the quality estimator to batched requests: validate each, run the valid ones together.

What the Triton ``quality_estimator`` model delegates to (its ``model.py`` only converts
tensors; ``t2i_router.triton.backend`` does the pb_utils side). Pure numpy + ONNX Runtime at
request time, no grpc, tritonclient or pb_utils:

- features: ``"static"`` models look their tokens up in MiniLM's word table (numpy, the
  ``tokenizers`` library); ``"contextual"`` models run MiniLM through the engines' torch
  ``TextEncoder`` (not ONNX yet: ``benchmarks/estimator_latency.py`` measures an ONNX MiniLM at
  about half the torch latency, the next step if contextual features win on quality);
- the MoE: ``model.onnx`` beside the weights in ONNX Runtime, exported from the weights by
  :func:`ensure_onnx` when missing or older than them (at ``build-repo`` time, or at load).

Each request holds one or more prompts; a bad one (no rows, empty, not UTF-8, too long) gets its
own :class:`~t2i_router.errors.InvalidRequest` while the rest of the batch is served; the
prompts of all valid requests are encoded and run once, then split back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2i_router.errors import InvalidRequest, ModelError, RouterError
from t2i_router.estimator.moe import CONFIG_FILE, WEIGHTS_FILE, EstimatorConfig
from t2i_router.estimator.quality import ONNX_FILE, OUTPUT_NAME

log = logging.getLogger(__name__)

__all__ = ["EstimatorServer", "EstimatorServingConfig", "ensure_onnx"]

MAX_PROMPT_BYTES = 2048


@dataclass(frozen=True)
class EstimatorServingConfig:
    """How one estimator is served (Triton's ``parameters {}`` of ``quality_estimator``).

    Attributes:
        model_dir: Folder with config.json and model.safetensors (model.onnx is made if missing).
        threads: ONNX Runtime intra-op threads (0 = its default).
        max_prompt_bytes: Longest prompt accepted, in UTF-8 bytes.
    """

    model_dir: str
    threads: int = 0
    max_prompt_bytes: int = MAX_PROMPT_BYTES

    @classmethod
    def from_parameters(
        cls, params: dict[str, str], base_dir: str | Path
    ) -> EstimatorServingConfig:
        """Build from Triton's string parameters; a relative ``model_dir`` is taken from
        ``base_dir`` (the model's folder in the repository)."""
        if "model_dir" not in params:
            raise InvalidRequest(f"parameter model_dir is missing from {sorted(params)}")
        model_dir = Path(os.path.expandvars(params["model_dir"]))
        if not model_dir.is_absolute():
            model_dir = Path(base_dir) / model_dir
        try:
            threads = int(params.get("threads", "0"))
            max_bytes = int(params.get("max_prompt_bytes", str(MAX_PROMPT_BYTES)))
        except ValueError as e:
            raise InvalidRequest(
                f"parameters threads/max_prompt_bytes are not integers: {e}"
            ) from e
        return cls(str(model_dir.resolve()), threads, max_bytes)


def ensure_onnx(model_dir: str | Path) -> Path:
    """The MoE's ONNX graph in ``model_dir``, exported again when missing or older than the
    weights. Written under a temporary name and renamed, so a reader never sees half a file."""
    from t2i_router.estimator.moe import EstimatorNotFoundError

    model_dir = Path(model_dir)
    onnx_path, weights = model_dir / ONNX_FILE, model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise EstimatorNotFoundError(
            f"no quality estimator at {model_dir} ({WEIGHTS_FILE} missing): run "
            "`t2i-router estimator train` first"
        )
    if onnx_path.exists() and onnx_path.stat().st_mtime >= weights.stat().st_mtime:
        return onnx_path
    from t2i_router.estimator.moe import TokenSelectionMoE
    from t2i_router.estimator.quality import export_onnx

    log.info("exporting the quality estimator in %s to ONNX", model_dir)
    partial = onnx_path.with_name(f".{ONNX_FILE}.{os.getpid()}.tmp")
    export_onnx(TokenSelectionMoE.from_pretrained(model_dir), partial)
    os.replace(partial, onnx_path)
    return onnx_path


def _decode(prompt: bytes | str, max_bytes: int) -> str:
    if isinstance(prompt, bytes):
        if len(prompt) > max_bytes:
            raise InvalidRequest(f"PROMPT is {len(prompt)} bytes, the limit is {max_bytes}")
        try:
            prompt = prompt.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequest(f"PROMPT is not UTF-8: {prompt[:40]!r}") from e
    elif not isinstance(prompt, str):
        raise InvalidRequest(f"PROMPT {prompt!r} is {type(prompt).__name__}, not bytes or str")
    elif len(prompt.encode("utf-8")) > max_bytes:
        raise InvalidRequest(f"PROMPT is {len(prompt.encode())} bytes, the limit is {max_bytes}")
    if not prompt.strip():
        raise InvalidRequest(f"PROMPT is empty: {prompt!r}")
    return prompt


class EstimatorServer:
    """Predicted quality Q (N, M, K) for batches of requests, through ONNX Runtime.

    Args:
        config: The estimator's architecture (choices, metrics, features, token length).
        session: An ONNX Runtime session of the MoE (``tokens, mask -> q``).
        features: Token features matching ``config.features`` (``TokenFeatures``).
        max_prompt_bytes: Longest prompt accepted.
    """

    def __init__(
        self, config: EstimatorConfig, session, features, max_prompt_bytes: int = MAX_PROMPT_BYTES
    ) -> None:
        self.config = config
        self.session = session
        self.features = features
        self.max_prompt_bytes = max_prompt_bytes

    @classmethod
    def load(
        cls, model_dir: str | Path, threads: int = 0, max_prompt_bytes: int = MAX_PROMPT_BYTES
    ) -> EstimatorServer:
        """Load a folder written by ``t2i-router estimator train`` (exporting its ONNX graph
        if stale).

        Raises:
            EstimatorNotFoundError: the folder holds no model.
        """
        import onnxruntime as ort

        from t2i_router.estimator.features import TokenFeatures

        onnx_path = ensure_onnx(model_dir)
        config = EstimatorConfig.from_dict(json.loads((Path(model_dir) / CONFIG_FILE).read_text()))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        features = TokenFeatures(config.features, max_tokens=config.max_tokens)
        log.info("serving %s (%s features) from %s", config.choices, config.features, model_dir)
        return cls(config, session, features, max_prompt_bytes)

    @classmethod
    def from_serving_config(cls, cfg: EstimatorServingConfig) -> EstimatorServer:
        return cls.load(cfg.model_dir, cfg.threads, cfg.max_prompt_bytes)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.config.choices

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.config.metrics

    def check_declared(self, choices: Sequence[str], metrics: Sequence[str]) -> None:
        """Fail when a repository's declared choices or metrics are not the model's (a
        config.pbtxt written for another estimator: Q's rows would be misnamed)."""
        if tuple(choices) != self.choices or tuple(metrics) != self.metrics:
            raise InvalidRequest(
                f"the model config declares choices {list(choices)} and metrics "
                f"{list(metrics)}, the estimator has {list(self.choices)} and "
                f"{list(self.metrics)}: rebuild the repository with `t2i-router triton build-repo`"
            )

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, M, K) float32 Q for valid prompts, in one ONNX Runtime run."""
        tokens, mask = self.features.encode(list(prompts))  # (N, L, D), (N, L)
        (q,) = self.session.run([OUTPUT_NAME], {"tokens": tokens, "mask": mask})  # (N, M, K)
        return np.asarray(q, np.float32)

    def _validate(self, prompts) -> list[str]:
        rows = np.asarray(prompts, dtype=object)
        if rows.ndim == 0 or rows.shape[0] == 0:
            raise InvalidRequest(f"the request has no rows (PROMPT shape {list(rows.shape)})")
        n = rows.shape[0]
        if rows.size != n:
            raise InvalidRequest(f"PROMPT has shape {list(rows.shape)}, expected [{n}, 1]")
        return [_decode(p, self.max_prompt_bytes) for p in rows.reshape(n)]

    def run(self, requests: Sequence) -> list[np.ndarray | RouterError]:
        """One result per request: Q (B, M, K) float32 for its B prompts, or its error.

        Args:
            requests: Each request's prompts, (B,) or (B, 1), as bytes or str.
        """
        results: list[np.ndarray | RouterError | None] = [None] * len(requests)
        prompts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (request, start, stop) in the joint batch
        for i, request in enumerate(requests):
            try:
                valid = self._validate(request)
            except InvalidRequest as e:
                results[i] = e
                continue
            spans.append((i, len(prompts), len(prompts) + len(valid)))
            prompts += valid
        if prompts:
            try:
                q = self.predict(prompts)  # (N, M, K)
            except Exception as e:  # a failure of the batch must still answer every request
                log.exception("quality estimator failed on a batch of %d prompts", len(prompts))
                failure = ModelError(f"quality estimator failed: {type(e).__name__}: {e}")
                return [failure if r is None else r for r in results]
            for i, start, stop in spans:
                results[i] = q[start:stop]
        return results  # type: ignore[return-value]
