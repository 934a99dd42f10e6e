"""Token features for the quality estimator: contextual MiniLM outputs or its static table.

Both kinds share one interface, :meth:`TokenFeatures.encode`, and the same tokenizer, length and
width, so the MoE above them does not know which it gets:

- ``"contextual"``: the frozen MiniLM's last hidden states (the six transformer layers run);
- ``"static"``: MiniLM's input word embeddings looked up by token id, no transformer, no
  position embeddings. A table lookup: ~1,000x cheaper, but a token no longer sees its
  neighbours ("red circle" and "red square" give the same "red").

Padding positions are zero in both, and the mask says which positions are tokens.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from t2i_router.engines.text_encoder import (
    EMBED_DIM,
    MAX_TOKENS,
    EncoderNotFoundError,
    TextEncoder,
    TextEncoderConfig,
    default_encoder_path,
)
from t2i_router.errors import InvalidRequest, Unavailable

log = logging.getLogger(__name__)

__all__ = ["FEATURE_KINDS", "FeatureKind", "TokenFeatures"]

FeatureKind = Literal["contextual", "static"]
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)
WORD_TABLE_KEY = "embeddings.word_embeddings.weight"


class TokenFeatures:
    """Encode prompts to frozen token features ``(B, L, D)`` and a mask ``(B, L)``.

    Args:
        kind: ``"contextual"`` (MiniLM outputs) or ``"static"`` (MiniLM's word-embedding table).
        model_path: a local MiniLM-like folder; None = the packaged all-MiniLM-L6-v2.
        max_tokens: fixed length L (prompts padded or truncated to it).
        cache_size: prompts whose features are kept (least recently used dropped); 0 = none.
            Training encodes each prompt once per epoch, so a cache the size of the split makes
            every epoch after the first free.

    Raises:
        InvalidRequest: an unknown ``kind`` or a bad ``max_tokens``.
        Unavailable: no encoder at ``model_path``.
    """

    def __init__(
        self,
        kind: FeatureKind = "contextual",
        model_path: str | None = None,
        max_tokens: int = MAX_TOKENS,
        cache_size: int = 0,
    ) -> None:
        if kind not in FEATURE_KINDS:
            raise InvalidRequest(f"features {kind!r} is not one of {list(FEATURE_KINDS)}")
        if max_tokens < 2:
            raise InvalidRequest(f"max_tokens is {max_tokens}, must be >= 2")
        self.kind = kind
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        config = TextEncoderConfig(model_path=model_path, max_tokens=max_tokens)
        path = Path(model_path) if model_path else default_encoder_path()
        try:
            if kind == "contextual":
                self._encoder: TextEncoder | None = TextEncoder(config)
            else:
                self._encoder = None
                self._tokenizer, self.table = _load_static(path, max_tokens)
        except EncoderNotFoundError as e:
            raise Unavailable(str(e)) from e

    @property
    def dim(self) -> int:
        """Feature width D."""
        return EMBED_DIM if self._encoder is not None else int(self.table.shape[1])

    def encode(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Features (B, L, D) float32 (zero at padding) and mask (B, L) float32 (1 = token).

        Repeated prompts are encoded once; cached prompts are not encoded again.
        """
        prompts = [str(p) for p in prompts]
        unique = list(dict.fromkeys(prompts))
        todo = [p for p in unique if p not in self._cache]
        fresh = dict(zip(todo, zip(*self._encode(todo)))) if todo else {}
        found = {}
        for p in unique:
            if p in fresh:
                found[p] = fresh[p]
            else:
                self._cache.move_to_end(p)
                found[p] = self._cache[p]
        if self.cache_size:
            for p, value in fresh.items():
                self._cache[p] = value
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        if not prompts:
            shape = (0, self.max_tokens)
            return np.zeros((*shape, self.dim), np.float32), np.zeros(shape, np.float32)
        tokens = np.stack([found[p][0] for p in prompts])  # (B, L, D)
        mask = np.stack([found[p][1] for p in prompts])  # (B, L)
        return tokens, mask

    def _encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._encoder is not None:
            return self._encoder.encode(prompts)
        encoded = self._tokenizer.encode_batch(prompts)
        ids = np.array([e.ids for e in encoded], np.int64)  # (B, L)
        mask = np.array([e.attention_mask for e in encoded], np.float32)  # (B, L)
        tokens = self.table[ids] * mask[..., None]  # (B, L, D)
        return tokens.astype(np.float32), mask


def _load_static(path: Path, max_tokens: int):
    """The fast tokenizer and the (V, D) word-embedding table, without building the model.

    The ``tokenizers`` library alone gives the same ids as transformers' AutoTokenizer on the
    same ``tokenizer.json`` and loads in a fraction of the time (no transformers import).
    """
    from safetensors import safe_open
    from tokenizers import Tokenizer

    weights, vocab = path / "model.safetensors", path / "tokenizer.json"
    for needed in (weights, vocab):
        if not needed.exists():
            raise EncoderNotFoundError(f"no text encoder file at {needed}")
    tokenizer = Tokenizer.from_file(str(vocab))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(length=max_tokens)
    with safe_open(str(weights), "np") as f:
        keys = [k for k in f.keys() if k.endswith(WORD_TABLE_KEY)]  # noqa: SIM118
        if not keys:
            raise EncoderNotFoundError(f"{weights} holds no {WORD_TABLE_KEY}")
        table = np.ascontiguousarray(f.get_tensor(keys[0]), dtype=np.float32)  # (V, D)
    log.debug("loaded static token table %s from %s", table.shape, weights)
    return tokenizer, table
