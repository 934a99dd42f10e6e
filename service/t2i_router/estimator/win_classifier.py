"""A RouteLLM-BERT-style win classifier: MiniLM fine-tuned end to end to predict P(cloud wins).

RouteLLM's BERT router (lm-sys/RouteLLM, ``routellm/routers/routers.py``, ``BERTRouter``) is a
sequence classifier over the prompt whose output is the probability that the strong model's
answer beats the weak one's. Here the label of a train prompt is whether the cloud default's mean
quality over its seeds beats the edge default's; the head is a linear layer on the masked mean
of MiniLM's last hidden states (the pooling MiniLM was trained with). Kept CPU-feasible: 24
tokens, few epochs, and the lower layers can be frozen.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.estimator.baselines import MethodBase, prompt_quality
from t2i_router.estimator.labels import LabelSet

log = logging.getLogger(__name__)

__all__ = ["WinClassifierConfig", "WinClassifierMethod"]


@dataclass(frozen=True)
class WinClassifierConfig:
    """How the win classifier is fine-tuned.

    Attributes:
        epochs: Passes over the train prompts; the epoch with the best val loss is kept.
        batch_size: Prompts per step.
        lr: AdamW learning rate of the encoder layers being tuned.
        head_lr: AdamW learning rate of the classification head.
        weight_decay: AdamW weight decay.
        max_tokens: Prompts are padded or cut to this many tokens.
        freeze_layers: Lower transformer layers kept frozen (with the embeddings when > 0);
            MiniLM-L6 has 6, so 5 tunes only the last layer and the head.
        max_train_prompts: Use at most this many train prompts (None = all), a CPU-time cap.
        model_path: Local MiniLM folder; None = the packaged one.
        seed: torch seed of the head's initialisation, dropout and batch order.
    """

    epochs: int = 2
    batch_size: int = 32
    lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    max_tokens: int = 24
    freeze_layers: int = 0
    max_train_prompts: int | None = None
    model_path: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_tokens"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} is {getattr(self, name)}, must be >= 1")
        if self.freeze_layers < 0:
            raise InvalidRequest(f"freeze_layers is {self.freeze_layers}, must be >= 0")


class WinClassifierMethod(MethodBase):
    """Fine-tuned MiniLM + linear head; score = P(cloud default better than edge default)."""

    name = "win"

    def __init__(self, config: WinClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or WinClassifierConfig()
        self.history: list[float] = []

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from t2i_router.engines.text_encoder import default_encoder_path

        path = self.config.model_path or str(default_encoder_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        n_layers = len(self.encoder.encoder.layer)
        if self.config.freeze_layers > n_layers:
            raise InvalidRequest(
                f"freeze_layers is {self.config.freeze_layers}, the encoder has {n_layers} layers"
            )
        if self.config.freeze_layers > 0:
            frozen = [
                self.encoder.embeddings,
                *self.encoder.encoder.layer[: self.config.freeze_layers],
            ]
            for module in frozen:
                module.requires_grad_(False)
        self.head = torch.nn.Sequential(
            torch.nn.Dropout(0.1), torch.nn.Linear(self.encoder.config.hidden_size, 1)
        )

    def _logits(self, prompts: Sequence[str]):

        tok = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.config.max_tokens,
            return_tensors="pt",
        )
        hidden = self.encoder(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).last_hidden_state  # (B, L, D)
        mask = tok["attention_mask"].to(hidden.dtype)[..., None]  # (B, L, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        return self.head(pooled).squeeze(-1)  # (B,)

    @staticmethod
    def _wins(labels: LabelSet, pair: tuple[int, int]) -> np.ndarray:
        q = prompt_quality(labels)
        return (q[:, pair[1]] > q[:, pair[0]]).astype(np.float32)

    def _loss(self, prompts: Sequence[str], wins: np.ndarray) -> float:
        import torch

        self.encoder.eval()
        self.head.eval()
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(prompts), 128):
                logits = self._logits(prompts[i : i + 128])
                target = torch.from_numpy(wins[i : i + 128])
                total += float(
                    torch.nn.functional.binary_cross_entropy_with_logits(
                        logits, target, reduction="sum"
                    )
                )
        return total / max(len(prompts), 1)

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        import torch

        self._set_pair(train)
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self._load()
        prompts = list(train.prompts)[: cfg.max_train_prompts]
        wins = self._wins(train, self.pair)[: len(prompts)]
        tuned = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": self.head.parameters(), "lr": cfg.head_lr}]
        if tuned:
            groups.append({"params": tuned, "lr": cfg.lr})
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        val_data = None if val is None else (list(val.prompts), self._wins(val, self.pair))
        best, best_state = float("inf"), None
        for epoch in range(cfg.epochs):
            self.encoder.train()
            self.head.train()
            for idx in torch.randperm(len(prompts), generator=gen).split(cfg.batch_size):
                opt.zero_grad()
                logits = self._logits([prompts[i] for i in idx.tolist()])
                target = torch.from_numpy(wins[idx.numpy()])
                torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
                opt.step()
            loss = self._loss(*(val_data or (prompts, wins)))
            self.history.append(loss)
            log.info(
                "win classifier epoch %d: %s loss %.4f", epoch + 1, "val" if val else "train", loss
            )
            if val_data is not None and loss < best:
                best = loss
                best_state = copy.deepcopy((self.encoder.state_dict(), self.head.state_dict()))
        if best_state is not None:
            self.encoder.load_state_dict(best_state[0])
            self.head.load_state_dict(best_state[1])
        self.encoder.eval()
        self.head.eval()

    def score(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        self._fitted()
        with torch.no_grad():
            out = [
                torch.sigmoid(self._logits(prompts[i : i + 256])).numpy()
                for i in range(0, len(prompts), 256)
            ]
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
