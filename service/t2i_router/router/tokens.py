"""Counting a prompt's tokens the way the engines' text encoder sees them.

The engines encode prompts with the MiniLM tokenizer to a fixed ``MAX_TOKENS`` (24) positions,
[CLS] and [SEP] included, and silently truncate anything longer
(`t2i_router.engines.text_encoder`). The router refuses such a prompt instead
(`Limits.max_prompt_tokens`), so the image a caller gets is always of the whole prompt.
`MiniLMTokenCounter` loads only the tokenizer (``tokenizer.json`` of the same MiniLM folder,
through the ``tokenizers`` library: no model weights, no transformers import) and counts with
the special tokens, without truncation or padding.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from t2i_router.engines.text_encoder import EncoderNotFoundError, default_encoder_path

__all__ = ["MiniLMTokenCounter"]


class MiniLMTokenCounter:
    """``counter(prompt) -> int``: tokens with [CLS]/[SEP], as the engines' encoder counts them.

    Args:
        model_path: The MiniLM folder; None is the engines' default
            (`default_encoder_path`). The tokenizer loads on first use.
    """

    def __init__(self, model_path: Path | None = None) -> None:
        self.model_path = model_path
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        from tokenizers import Tokenizer

        path = Path(self.model_path or default_encoder_path()) / "tokenizer.json"
        if not path.exists():
            raise EncoderNotFoundError(f"no tokenizer at {path}")
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    def __call__(self, prompt: str) -> int:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = self._load()
        return len(self._tokenizer.encode(prompt, add_special_tokens=True).ids)
