"""The trained estimator in-process: prompts -> Q, utilities and the routing score.

Pure torch and numpy (no grpc, no tritonclient): the router's policy and the Triton model both
delegate here. :func:`export_onnx` writes the MoE alone (features in, Q out) for Triton's ONNX
Runtime; the features stay outside it so that the contextual or static encoder can be swapped.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE
from t2i_router.world import ALIGNMENT_ASPECTS

log = logging.getLogger(__name__)

__all__ = ["ONNX_FILE", "QualityEstimator", "export_onnx"]

ONNX_FILE = "model.onnx"
INPUT_NAMES = ("tokens", "mask")
OUTPUT_NAME = "q"
OPSET = 18


class QualityEstimator:
    """Predicted quality of every choice for prompts.

    Args:
        model: The trained MoE.
        features: Token features matching ``model.config.features``; default: built from it.
    """

    def __init__(self, model: TokenSelectionMoE, features=None) -> None:
        self.model = model.eval()
        self.config: EstimatorConfig = model.config
        if features is None:
            from t2i_router.estimator.features import TokenFeatures

            features = TokenFeatures(self.config.features, max_tokens=self.config.max_tokens)
        self.features = features

    @classmethod
    def load(cls, folder: str | Path, features=None) -> QualityEstimator:
        """Load a folder written by ``t2i-router estimator train``.

        Raises:
            EstimatorNotFoundError: the folder holds no model.
        """
        return cls(TokenSelectionMoE.from_pretrained(folder), features)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.config.choices

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.config.metrics

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, M, K) predicted quality in [0, 1] for every prompt, choice and metric."""
        if isinstance(prompts, str):
            raise InvalidRequest(f"prompts must be a list of strings, got one string {prompts!r}")
        tokens, mask = self.features.encode(list(prompts))  # (N, L, D), (N, L)
        q = self.model.predict(torch.from_numpy(tokens), torch.from_numpy(mask))  # (N, M, K)
        return q.numpy()

    def default_weights(self) -> np.ndarray:
        """(K,) equal weights on the alignment aspects (all metrics if none is one)."""
        w = np.array([m in ALIGNMENT_ASPECTS for m in self.metrics], np.float64)
        return w if w.sum() else np.ones(len(self.metrics))

    def _weights(self, weights: Sequence[float] | np.ndarray | None) -> np.ndarray:
        w = self.default_weights() if weights is None else np.asarray(weights, np.float64)
        if w.shape != (len(self.metrics),) or (w < 0).any() or not w.sum() > 0:
            raise InvalidRequest(
                f"weights {np.asarray(weights).tolist()} must be {len(self.metrics)} "
                "non-negative numbers with a positive sum"
            )
        return w / w.sum()

    def utilities(
        self, prompts: Sequence[str], weights: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """(N, M) utility u_m = sum_k w_k Q[m, k] (weights normalised to sum 1)."""
        return self.utilities_from_q(self.predict(prompts), weights)

    def utilities_from_q(
        self, q: np.ndarray, weights: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """(N, M, K) -> (N, M) utilities, for callers that already hold Q."""
        return np.asarray(q, np.float64) @ self._weights(weights)

    def score(
        self, prompts: Sequence[str], weights: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """(N,) routing score: utility of the cloud default minus the edge default's."""
        return self.score_from_utilities(self.utilities(prompts, weights))

    def score_from_utilities(self, utilities: np.ndarray) -> np.ndarray:
        c = self.config
        u = np.asarray(utilities)
        return u[:, c.choices.index(c.cloud_choice)] - u[:, c.choices.index(c.edge_choice)]


class _QOutput(torch.nn.Module):
    """The exported graph: features -> Q (sigmoid of the logits)."""

    def __init__(self, model: TokenSelectionMoE) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(tokens, mask))  # (B, M, K)


def export_onnx(model: TokenSelectionMoE, path: str | Path) -> Path:
    """Write the MoE as ONNX: ``tokens (B, L, D) f32, mask (B, L) f32 -> q (B, M, K) f32``.

    Dynamic batch axis; uses the TorchScript exporter like the engines' export (fast, and its
    graphs match torch to 1e-6 here).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = model.config
    example = (torch.randn(2, c.max_tokens, c.embed_dim), torch.ones(2, c.max_tokens))
    dynamic_axes = {name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and tracer warnings of the exporter
        torch.onnx.export(
            _QOutput(model.eval()),
            example,
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    log.info("exported %s", path)
    return path
