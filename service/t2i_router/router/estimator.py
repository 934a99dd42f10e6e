"""The estimator seam: prompts in, predicted quality Q (N, M, K) in [0, 1] out.

The router does not care what predicts quality, only that it answers this `Estimator` protocol:
the M choice names (``"edge_small@8"``, in the order of Q's second axis), the K metric names (Q's
last axis) and ``async predict(prompts) -> Q``. Two adapters:

- `InProcessEstimator` wraps any object with a synchronous ``predict(prompts) -> (N, M, K)``
  (the trained MoE's ``QualityEstimator``, or a tiny seeded model in tests) and runs it in a
  thread so the event loop keeps serving;
- `TritonEstimator` calls a Triton model (``quality_estimator``: PROMPT BYTES [B, 1] -> Q FP32
  [B, M, K]) through a client with ``estimate(model, prompts, timeout_s)`` (`TritonClient`).

Both check what comes back (shape, range) and raise `ModelError` for a malformed answer: a bad Q
is the model's fault, never the caller's. This module imports neither grpc nor tritonclient.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from t2i_router.errors import ModelError, NotFound, RouterError, Unavailable
from t2i_router.estimator import EstimatorNotFoundError

__all__ = [
    "DEFAULT_ESTIMATOR_DIR",
    "TRITON_ESTIMATOR_MODEL",
    "Estimator",
    "EstimatorNotFoundError",
    "InProcessEstimator",
    "TritonEstimator",
    "check_quality",
    "load_estimator",
]

log = logging.getLogger(__name__)

#: Where `t2i-router serve` looks for the trained estimator unless ``--estimator`` says otherwise.
DEFAULT_ESTIMATOR_DIR = Path("models/quality_estimator")
#: Name of the estimator model in a Triton repository.
TRITON_ESTIMATOR_MODEL = "quality_estimator"


@runtime_checkable
class Estimator(Protocol):
    """Predicts the quality of every choice on every metric, per prompt."""

    @property
    def choices(self) -> tuple[str, ...]:
        """The M choice names, in the order of Q's second axis."""
        ...

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The K metric names, in the order of Q's last axis."""
        ...

    async def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """Q (N, M, K) float in [0, 1]."""
        ...

    async def ready(self) -> bool:
        """Whether predictions can be made now (health checks)."""
        ...


def check_quality(q: Any, n: int, m: int, k: int, source: str) -> np.ndarray:
    """Returns ``q`` as float64 (N, M, K) or raises `ModelError` saying what is wrong with it."""
    try:
        array = np.asarray(q, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{source} returned {type(q).__name__}, not an array: {e}") from e
    if array.shape != (n, m, k):
        raise ModelError(f"{source} returned Q of shape {array.shape}, expected ({n}, {m}, {k})")
    bad = ~(np.isfinite(array) & (array >= 0) & (array <= 1))
    if bad.any():
        raise ModelError(f"{source} returned Q outside [0, 1]: {array[bad].flat[0]}")
    return array


class InProcessEstimator:
    """An `Estimator` over any object with a synchronous ``predict(prompts) -> (N, M, K)``.

    Args:
        model: The predictor; its exceptions become `ModelError` (a `RouterError` passes as is).
        choices: M choice names; default ``model.choices``.
        metric_names: K metric names; default ``model.metric_names`` or ``model.metrics``.
        max_workers: Threads running ``predict`` (one keeps torch's own threads to themselves).
    """

    def __init__(
        self,
        model: Any,
        choices: Sequence[str] | None = None,
        metric_names: Sequence[str] | None = None,
        max_workers: int = 1,
    ) -> None:
        self.model = model
        names = choices if choices is not None else getattr(model, "choices", None)
        metrics = metric_names
        if metrics is None:
            metrics = getattr(model, "metric_names", None) or getattr(model, "metrics", None)
        if not names or not metrics:
            raise ModelError(f"{type(model).__name__} names no choices or no metrics")
        self._choices = tuple(str(c) for c in names)
        self._metric_names = tuple(str(m) for m in metrics)
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="estimator")

    @property
    def choices(self) -> tuple[str, ...]:
        return self._choices

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self._metric_names

    async def predict(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        loop = asyncio.get_running_loop()
        try:
            q = await loop.run_in_executor(self._executor, self.model.predict, prompts)
        except RouterError:
            raise
        except Exception as e:
            raise ModelError(f"the estimator failed on {len(prompts)} prompts: {e!r}") from e
        return check_quality(
            q, len(prompts), len(self._choices), len(self._metric_names), "the estimator"
        )

    async def ready(self) -> bool:
        return True

    def close(self) -> None:
        """Stops the worker thread (after the running call, if any)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


class TritonEstimator:
    """An `Estimator` served by Triton: model ``quality_estimator``, PROMPT -> Q [M, K].

    Args:
        client: Has ``async estimate(model, prompts, timeout_s) -> (N, M, K)`` and ``async
            is_model_ready(model, timeout_s) -> bool`` (`t2i_router.triton.TritonClient`).
        choices: M choice names, in the order of the model's Q.
        metric_names: K metric names.
        model: The Triton model name.
        timeout_s: Deadline of one estimate call (a batch shared by many callers).
    """

    def __init__(
        self,
        client: Any,
        choices: Sequence[str],
        metric_names: Sequence[str],
        model: str = TRITON_ESTIMATOR_MODEL,
        timeout_s: float | None = 10.0,
    ) -> None:
        if not choices or not metric_names:
            raise ModelError(f"Triton estimator {model!r} needs choice and metric names")
        self.client = client
        self.model = model
        self.timeout_s = timeout_s
        self._choices = tuple(choices)
        self._metric_names = tuple(metric_names)

    @property
    def choices(self) -> tuple[str, ...]:
        return self._choices

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self._metric_names

    async def predict(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        q = await self.client.estimate(self.model, prompts, timeout_s=self.timeout_s)
        return check_quality(
            q, len(prompts), len(self._choices), len(self._metric_names), f"Triton {self.model}"
        )

    async def ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model, timeout_s=1.0))
        except Unavailable:
            return False

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    @classmethod
    async def connect(
        cls, client: Any, model: str = TRITON_ESTIMATOR_MODEL, timeout_s: float | None = 10.0
    ) -> TritonEstimator:
        """The estimator Triton serves as ``model``, its choice and metric names read from the
        model's config parameters (``choices``, ``metrics``; `triton build-repo --estimator`).

        Raises:
            EstimatorNotFoundError: Triton serves no such model, or it lacks those parameters.
            Unavailable: Triton cannot be reached.
        """
        try:
            params = await client.model_parameters(model, timeout_s=timeout_s)
        except NotFound as e:
            raise EstimatorNotFoundError(
                f"Triton serves no {model!r} model ({e}); build the repository with a trained "
                "estimator (`t2i-router triton build-repo --estimator DIR`) or serve it "
                "in-process (--estimator-runtime in-process)"
            ) from e
        choices = [c for c in params.get("choices", "").split(",") if c]
        metrics = [m for m in params.get("metrics", "").split(",") if m]
        if not choices or not metrics:
            raise EstimatorNotFoundError(
                f"Triton model {model!r} has no 'choices'/'metrics' parameters (got "
                f"{sorted(params)}): it was not built by `t2i-router triton build-repo`"
            )
        log.info("quality estimator served by Triton as %s: %d choices", model, len(choices))
        return cls(client, choices, metrics, model=model, timeout_s=timeout_s)


def load_estimator(folder: str | Path) -> InProcessEstimator:
    """The trained estimator in ``folder`` (``t2i-router estimator train``), in-process.

    Raises:
        EstimatorNotFoundError: The folder does not exist, or this build cannot load it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EstimatorNotFoundError(
            f"no quality estimator at {folder}: train one into that folder, or pass --estimator DIR"
        )
    from t2i_router.estimator.quality import QualityEstimator

    model = QualityEstimator.load(folder)
    log.info("loaded the quality estimator from %s", folder)
    return InProcessEstimator(model)
