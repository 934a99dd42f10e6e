"""Small torch models on mean-pooled MiniLM embeddings: CATImage's MLP and the CEMS classifier.

Both train on standardised pooled embeddings (`EmbeddingCache`) with AdamW, keeping the weights
of the best val loss. See `t2i_router.estimator.baselines` for the interface they implement.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from t2i_router.estimator.baselines import (
    EmbeddingCache,
    MethodBase,
    prompt_quality,
    utilities_from_q,
)
from t2i_router.estimator.labels import LabelSet

__all__ = ["CemsMethod", "MlpConfig", "MlpMethod"]


@dataclass(frozen=True)
class MlpConfig:
    """Training of the small torch models on pooled embeddings (MLP and CEMS).

    Attributes:
        hidden: Hidden width (0 = a linear model).
        max_epochs: Epochs at most; val stops earlier.
        patience: Epochs without a better val loss before stopping.
        batch_size: Prompts per step.
        lr: Adam learning rate.
        weight_decay: AdamW weight decay.
        dropout: Dropout on the hidden layer.
        seed: torch seed of the initialisation and batch order.
    """

    hidden: int = 128
    max_epochs: int = 100
    patience: int = 8
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    seed: int = 0


def _net(d_in: int, d_out: int, cfg: MlpConfig):
    import torch.nn as nn

    if cfg.hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(
        nn.Linear(d_in, cfg.hidden),
        nn.GELU(),
        nn.Dropout(cfg.dropout),
        nn.Linear(cfg.hidden, d_out),
    )


def _train(net, loss_fn, x, y, x_val, y_val, cfg: MlpConfig) -> list[float]:
    """Minibatch AdamW; keeps the weights of the best val loss (train loss without val)."""
    import torch

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, stale, history = float("inf"), None, 0, []
    for _ in range(cfg.max_epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss_fn(net(x[idx]), *(t[idx] for t in y)).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            xs, ys = (x, y) if x_val is None else (x_val, y_val)
            loss = float(loss_fn(net(xs), *ys))
        history.append(loss)
        if loss < best - 1e-6:
            best, best_state, stale = loss, copy.deepcopy(net.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


class _PooledTorch(MethodBase):
    """Shared parts of the torch methods on standardised pooled embeddings."""

    def __init__(self, cache: EmbeddingCache, config: MlpConfig | None = None) -> None:
        super().__init__()
        self.cache, self.config = cache, config or MlpConfig()
        self.history: list[float] = []

    def _features(self, prompts: Sequence[str], fit: bool = False):
        import torch

        x = self.cache.pooled(list(prompts)).astype(np.float64)
        if fit:
            self.mu, self.sd = x.mean(0), x.std(0) + 1e-6
        return torch.from_numpy(((x - self.mu) / self.sd).astype(np.float32))


class MlpMethod(_PooledTorch):
    """CATImage's pooled MLP: pooled embedding -> Q (M x K) with sigmoid cross-entropy.

    Labels are the per-aspect qualities averaged over seeds, in [0, 1]; aspects that do not apply
    (NaN) are left out of the loss. A second head of K logits learns which aspects apply to a
    prompt, so that utilities average only the alignment aspects the prompt has.
    """

    name = "mlp"

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        import torch

        self._set_pair(train)
        torch.manual_seed(self.config.seed)
        _, m, _, k = train.quality.shape
        self.shape = (m, k)
        net = _net(384, m * k + k, self.config)

        def loss_fn(out, target, applies):  # (B, MK + K), (B, M, K), (B, K)
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            q_logit = out[:, : m * k].reshape(-1, m, k)
            mask = ~torch.isnan(target)
            q_loss = bce(q_logit[mask], target[mask])
            return q_loss + bce(out[:, m * k :], applies)

        def arrays(labels: LabelSet):
            ok = ~np.isnan(labels.quality)  # (N, M, S, K); NaN = aspect does not apply
            total = np.where(ok, labels.quality, 0.0).sum(axis=2)
            count = ok.sum(axis=2)  # (N, M, K)
            target = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            applies = (~np.isnan(labels.quality[:, 0, 0, :])).astype(np.float32)  # (N, K)
            return torch.from_numpy(target.astype(np.float32)), torch.from_numpy(applies)

        x = self._features(train.prompts, fit=True)
        xv, yv = (None, None) if val is None else (self._features(val.prompts), arrays(val))
        self.net = net
        self.history = _train(net, loss_fn, x, arrays(train), xv, yv, self.config)

    def predict(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Q (N, M, K) in [0, 1] and the probability that each aspect applies (N, K)."""
        import torch

        self._fitted()
        m, k = self.shape
        with torch.no_grad():
            out = torch.sigmoid(self.net(self._features(prompts))).numpy().astype(np.float64)
        return out[:, : m * k].reshape(-1, m, k), out[:, m * k :]

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        q, applies = self.predict(prompts)
        return utilities_from_q(q, applies)


class CemsMethod(_PooledTorch):
    """CEMS: a softmax classifier of each prompt's best choice (highest mean quality on train).

    Utilities are the predicted probabilities of being best, so the M-choice router trades them
    against cost like any other utility.
    """

    name = "cems"

    def fit(self, train: LabelSet, val: LabelSet | None = None) -> None:
        import torch

        self._set_pair(train)
        torch.manual_seed(self.config.seed)
        m = len(train.choices)
        net = _net(384, m, self.config)

        def loss_fn(logits, best):
            return torch.nn.functional.cross_entropy(logits, best)

        def best(labels: LabelSet):
            return (torch.from_numpy(prompt_quality(labels).argmax(axis=1)),)

        x = self._features(train.prompts, fit=True)
        xv, yv = (None, None) if val is None else (self._features(val.prompts), best(val))
        self.net = net
        self.history = _train(net, loss_fn, x, best(train), xv, yv, self.config)

    def utilities(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        self._fitted()
        with torch.no_grad():
            return torch.softmax(self.net(self._features(prompts)), dim=1).numpy().astype(float)
