"""An asyncio client for Triton image engines, raising only `t2i_router.errors` types.

The engine contract (edge_small, cloud_large, and the test model echo_image), batch first:

    PROMPT    BYTES  [B, 1]  UTF-8 prompt text
    SEED      INT64  [B, 1]
    STEPS     INT32  [B, 1]  optional, sampler steps
    GUIDANCE  FP32   [B, 1]  optional, classifier-free guidance scale
    IMAGE     UINT8  [B, H, W, 3]  output (32x32 in the miniature world)

Errors from tritonclient are translated where they enter, by their gRPC status code (never by
message text): see `translate_error`. The channel pings Triton to find one that stopped
answering (`triton.channel`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aio_grpcclient
from tritonclient.utils import InferenceServerException

from t2i_router.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    NotFound,
    ResourceExhausted,
    RouterError,
    Unavailable,
)
from t2i_router.triton.channel import channel_args, default_keepalive

__all__ = ["ModelState", "ModelStatistics", "TritonClient", "translate_error"]

log = logging.getLogger(__name__)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MAX = 2**31 - 1

# gRPC status code name -> our error. Anything else (INTERNAL, UNKNOWN, no status at all) means
# the model or server failed while handling a well-formed request: ModelError.
_ERROR_BY_STATUS: dict[str, type[RouterError]] = {
    "UNAVAILABLE": Unavailable,
    # Triton answers NOT_FOUND for a model that is not in the repository or not loaded; for a
    # router that is an engine it cannot use right now, not a bad request from its caller.
    "NOT_FOUND": Unavailable,
    "CANCELLED": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
}


def translate_error(error: InferenceServerException, context: str) -> RouterError:
    """Maps a tritonclient exception to the `RouterError` for its gRPC status.

    Args:
        error: What tritonclient raised; its ``status()`` is ``"StatusCode.<NAME>"`` for errors
            that came over gRPC and None for errors raised inside tritonclient.
        context: What was being done, for the message (``"echo_image at 127.0.0.1:8001"``).

    Returns:
        The translated error, to be raised ``from error``.
    """
    status = error.status() or ""
    code = status.removeprefix("StatusCode.")
    error_type = _ERROR_BY_STATUS.get(code, ModelError)
    return error_type(f"{context}: {code or 'error'}: {error.message()}")


@dataclass(frozen=True)
class ModelStatistics:
    """Cumulative counters of one model (summed over its versions) since it was loaded.

    Attributes:
        inference_count: Rows inferred (a request of batch 4 counts 4).
        execution_count: Model executions; requests merged by the dynamic batcher count once.
        success_count: Requests the model answered. A Python-backend model's per-request error
            response counts here too (measured on Triton 2.51), so this is not "no error".
        failure_count: Requests that failed in Triton itself (cancelled, timed out in queue).
    """

    inference_count: int
    execution_count: int
    success_count: int
    failure_count: int

    @classmethod
    def from_json(cls, stats: dict[str, Any]) -> ModelStatistics:
        """Parses ``get_inference_statistics(as_json=True)`` output for one model.

        Protobuf's JSON leaves out fields that are zero and writes 64-bit integers as strings.
        """
        totals = dict.fromkeys(("inference", "execution", "success", "failure"), 0)
        for version in stats.get("model_stats", []):
            totals["inference"] += int(version.get("inference_count", 0))
            totals["execution"] += int(version.get("execution_count", 0))
            inference_stats = version.get("inference_stats", {})
            totals["success"] += int(inference_stats.get("success", {}).get("count", 0))
            totals["failure"] += int(inference_stats.get("fail", {}).get("count", 0))
        return cls(
            inference_count=totals["inference"],
            execution_count=totals["execution"],
            success_count=totals["success"],
            failure_count=totals["failure"],
        )


@dataclass(frozen=True)
class ModelState:
    """One entry of the model repository index.

    Attributes:
        name: Model name (its folder in the repository).
        version: Version folder, '' when the model was never loaded.
        state: ``READY``, ``UNAVAILABLE``, ``LOADING``, ... ('' when never loaded).
        reason: Why it is not ready, when Triton says.
    """

    name: str
    version: str
    state: str
    reason: str

    @property
    def ready(self) -> bool:
        """True when the model serves requests."""
        return self.state == "READY"


def _column(name: str, values: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


def _per_row(values: float | Sequence[float] | np.ndarray, batch: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        return np.full(batch, array)
    if array.shape != (batch,):
        raise InvalidRequest(f"{name} has shape {array.shape}, expected a scalar or ({batch},)")
    return array


class TritonClient:
    """Async client for one Triton server's image engines.

    Create it inside the event loop that uses it (grpc.aio channels belong to a loop)::

        async with TritonClient("127.0.0.1:8001") as client:
            images = await client.generate("edge_small", ["a red circle"], [0])

    Args:
        grpc_url: ``host:port`` of Triton's gRPC service.
        max_reconnect_backoff_ms: Upper bound on gRPC's wait between reconnection attempts, so
            that a restarted Triton is noticed within about this long (gRPC's default is 120 s).
        keepalive: The channel's pings; None: `channel.default_keepalive`.
    """

    def __init__(
        self,
        grpc_url: str,
        max_reconnect_backoff_ms: int = 1000,
        keepalive: grpcclient.KeepAliveOptions | None = None,
    ) -> None:
        self.grpc_url = grpc_url
        self.keepalive = keepalive or default_keepalive()
        self._client = aio_grpcclient.InferenceServerClient(
            grpc_url, channel_args=channel_args(max_reconnect_backoff_ms, self.keepalive)
        )

    async def generate(
        self,
        model: str,
        prompts: Sequence[str],
        seeds: Sequence[int] | np.ndarray,
        steps: int | Sequence[int] | None = None,
        guidance: float | Sequence[float] | None = None,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        """Generates one image per prompt in a single request.

        Args:
            model: Engine model name in the repository.
            prompts: B prompts.
            seeds: B seeds (int64).
            steps: Sampler steps, one for all rows or one per row; None leaves the input out
                (the model's default).
            guidance: Guidance scale, one for all rows or one per row; None leaves it out.
            timeout_s: Deadline for the whole call; None waits indefinitely.

        Returns:
            Images, (B, H, W, 3) uint8.

        Raises:
            InvalidRequest: Bad arguments (checked before sending) or the model rejected them.
            Unavailable: The server or model cannot be reached or is not loaded.
            DeadlineExceeded: ``timeout_s`` passed first.
            ResourceExhausted: The model's queue is full.
            ModelError: The model failed, or answered with a malformed IMAGE.
        """
        inputs = self._engine_inputs(prompts, seeds, steps, guidance)
        batch = len(prompts)
        context = f"{model} at {self.grpc_url}"
        try:
            result = await self._client.infer(
                model,
                inputs,
                outputs=[grpcclient.InferRequestedOutput("IMAGE")],
                client_timeout=timeout_s,
            )
            image = result.as_numpy("IMAGE")
        except InferenceServerException as e:
            raise translate_error(e, context) from e
        if image is None or image.dtype != np.uint8 or image.ndim != 4 or image.shape[0] != batch:
            got = "nothing" if image is None else f"{image.dtype} {image.shape}"
            raise ModelError(f"{context}: IMAGE is {got}, expected uint8 ({batch}, H, W, 3)")
        if image.shape[3] != 3:
            raise ModelError(f"{context}: IMAGE has shape {image.shape}, expected 3 channels")
        return image

    async def estimate(
        self, model: str, prompts: Sequence[str], timeout_s: float | None = None
    ) -> np.ndarray:
        """Predicted quality from an estimator model (PROMPT BYTES [B, 1] -> Q FP32 [B, M, K]).

        Args:
            model: The estimator's model name (``quality_estimator``).
            prompts: B prompts.
            timeout_s: Deadline for the call; None waits indefinitely.

        Returns:
            Q, (B, M, K) float32.

        Raises:
            InvalidRequest, Unavailable, DeadlineExceeded, ResourceExhausted: as `generate`.
            ModelError: The model failed, or Q is not a (B, M, K) array.
        """
        if isinstance(prompts, str) or not prompts:
            raise InvalidRequest(f"prompts must be a non-empty list of strings, got {prompts!r}")
        column = np.array([[p.encode("utf-8")] for p in prompts], dtype=np.object_)
        context = f"{model} at {self.grpc_url}"
        try:
            result = await self._client.infer(
                model,
                [_column("PROMPT", column, "BYTES")],
                outputs=[grpcclient.InferRequestedOutput("Q")],
                client_timeout=timeout_s,
            )
            q = result.as_numpy("Q")
        except InferenceServerException as e:
            raise translate_error(e, context) from e
        if q is None or q.ndim != 3 or q.shape[0] != len(prompts):
            got = "nothing" if q is None else f"{q.dtype} {q.shape}"
            raise ModelError(f"{context}: Q is {got}, expected ({len(prompts)}, M, K)")
        return q

    @staticmethod
    def _engine_inputs(
        prompts: Sequence[str],
        seeds: Sequence[int] | np.ndarray,
        steps: int | Sequence[int] | None,
        guidance: float | Sequence[float] | None,
    ) -> list[grpcclient.InferInput]:
        if isinstance(prompts, str):
            raise InvalidRequest("prompts must be a sequence of strings, got one string")
        batch = len(prompts)
        if batch == 0:
            raise InvalidRequest("prompts is empty")
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise InvalidRequest(f"prompt {prompt!r} is {type(prompt).__name__}, not str")
        seed_array = np.asarray(seeds)
        if seed_array.shape != (batch,):
            raise InvalidRequest(f"seeds has shape {seed_array.shape}, expected ({batch},)")
        if not np.issubdtype(seed_array.dtype, np.integer):
            raise InvalidRequest(f"seeds has dtype {seed_array.dtype}, expected integers")
        if seed_array.size and (seed_array.min() < _INT64_MIN or seed_array.max() > _INT64_MAX):
            raise InvalidRequest(f"a seed is outside int64: {seed_array.tolist()}")
        # (B, 1) columns: the engines take one value per row.
        prompt_column = np.array([[p.encode("utf-8")] for p in prompts], dtype=np.object_)
        inputs = [
            _column("PROMPT", prompt_column, "BYTES"),
            _column("SEED", seed_array.astype(np.int64).reshape(batch, 1), "INT64"),
        ]
        if steps is not None:
            steps_array = _per_row(steps, batch, "steps")
            if not np.issubdtype(steps_array.dtype, np.integer) or steps_array.min() < 1:
                raise InvalidRequest(f"steps must be integers >= 1, got {steps!r}")
            if steps_array.max() > _INT32_MAX:
                raise InvalidRequest(f"steps must fit int32, got {steps!r}")
            inputs.append(_column("STEPS", steps_array.astype(np.int32).reshape(batch, 1), "INT32"))
        if guidance is not None:
            guidance_array = _per_row(guidance, batch, "guidance").astype(np.float32)
            if not all(math.isfinite(g) for g in guidance_array):
                raise InvalidRequest(f"guidance must be finite, got {guidance!r}")
            inputs.append(_column("GUIDANCE", guidance_array.reshape(batch, 1), "FP32"))
        return inputs

    async def is_server_ready(self, timeout_s: float | None = None) -> bool:
        """True when the server is ready; False when it is not or cannot be reached."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def is_model_ready(self, model: str, timeout_s: float | None = None) -> bool:
        """True when ``model`` is loaded and ready.

        Raises:
            Unavailable: The server cannot be reached.
        """
        try:
            return bool(await self._client.is_model_ready(model, client_timeout=timeout_s))
        except InferenceServerException as e:
            raise translate_error(e, f"readiness of {model} at {self.grpc_url}") from e

    async def model_parameters(self, model: str, timeout_s: float | None = None) -> dict[str, str]:
        """The string parameters of ``model``'s config (``parameters { key: ... }``).

        Raises:
            NotFound: The server has no such model loaded.
            Unavailable: The server cannot be reached.
        """
        try:
            response = await self._client.get_model_config(
                model, as_json=True, client_timeout=timeout_s
            )
        except InferenceServerException as e:
            context = f"config of {model} at {self.grpc_url}"
            if (e.status() or "").endswith("NOT_FOUND"):
                raise NotFound(f"{context}: no such model is loaded: {e.message()}") from e
            raise translate_error(e, context) from e
        params = response.get("config", {}).get("parameters", {})
        return {k: str(v.get("string_value", "")) for k, v in params.items()}

    async def repository_index(self, timeout_s: float | None = None) -> list[ModelState]:
        """Every model in the server's repository with its state, sorted by name.

        Raises:
            Unavailable: The server cannot be reached.
        """
        try:
            index = await self._client.get_model_repository_index(
                as_json=True, client_timeout=timeout_s
            )
        except InferenceServerException as e:
            raise translate_error(e, f"repository index at {self.grpc_url}") from e
        states = [
            ModelState(
                name=entry["name"],
                version=entry.get("version", ""),
                state=entry.get("state", ""),
                reason=entry.get("reason", ""),
            )
            for entry in index.get("models", [])
        ]
        return sorted(states, key=lambda s: (s.name, s.version))

    async def statistics(self, model: str, timeout_s: float | None = None) -> ModelStatistics:
        """Cumulative inference counters of ``model`` since it was loaded.

        Raises:
            Unavailable: The server cannot be reached, or the model is unknown.
        """
        try:
            stats = await self._client.get_inference_statistics(
                model, as_json=True, client_timeout=timeout_s
            )
        except InferenceServerException as e:
            raise translate_error(e, f"statistics of {model} at {self.grpc_url}") from e
        return ModelStatistics.from_json(stats)

    async def close(self) -> None:
        """Closes the channel; pending calls are cancelled."""
        await self._client.close()

    async def __aenter__(self) -> TritonClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
