"""Train the token-selection MoE on quality labels; save it with its model card.

``t2i-router estimator train --labels data/labels`` writes ``models/quality_estimator/``::

    config.json          the EstimatorConfig (the model's constructor arguments)
    model.safetensors    the weights and the PRS metric means ``prs_mu`` (M, K)
    model_card.json      data version, config, training config, parameters, FLOPs per prompt,
                         val figures, train time, history
    MODEL_CARD.md        the same for people

Targets are each choice's qualities averaged over a prompt's seeds (already in [0, 1]); an
alignment aspect that does not apply (the relation of a prompt without one) is filled with the
image's alignment over the others (``LabelSet.quality_filled``); any NaN left is masked out of
the loss. The PRS target is the labels' PRS of the edge
default over the cloud default on those means, with the training labels' metric means as scale.
"""

from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from t2i_router.errors import InvalidRequest
from t2i_router.estimator import DEFAULT_MODEL_DIR
from t2i_router.estimator.labels import LabelSet
from t2i_router.estimator.moe import EstimatorConfig, TokenSelectionMoE, estimator_loss, prs_from_q
from t2i_router.world import ALIGNMENT_ASPECTS

log = logging.getLogger(__name__)

__all__ = [
    "CARD_FILE",
    "DEFAULT_MODEL_DIR",
    "EstimatorData",
    "TrainConfig",
    "TrainResult",
    "count_flops",
    "fit",
    "metric_means",
    "save_estimator",
    "train_estimator",
]

CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class TrainConfig:
    """How the estimator is optimised.

    Attributes:
        epochs: Most passes over the training prompts.
        batch_size: Prompts per AdamW step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        patience: Epochs without a better val loss before stopping; the best epoch is kept.
        seed: Seeds initialisation, shuffling and dropout; equal seeds give equal models.
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    patience: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} is {getattr(self, name)}, must be >= 1")
        if self.lr <= 0:
            raise InvalidRequest(f"lr is {self.lr}, must be > 0")


@dataclass(frozen=True)
class EstimatorData:
    """One split as tensors: features, seed-mean targets and PRS targets.

    Attributes:
        tokens: (N, L, D) token features.
        mask: (N, L) 1 = token.
        target: (N, M, K) seed-mean labels in [0, 1], NaN where an aspect does not apply.
        prs: (N,) the labels' PRS of the edge default over the cloud default.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    target: torch.Tensor
    prs: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_labels(
        cls, labels: LabelSet, config: EstimatorConfig, features, mu: torch.Tensor
    ) -> EstimatorData:
        """Encode ``labels.prompts`` with ``features`` and average the labels over seeds."""
        tokens, mask = features.encode(list(labels.prompts))  # (N, L, D), (N, L)
        target = torch.from_numpy(seed_means(labels, config))  # (N, M, K)
        return cls.from_arrays(tokens, mask, target, config, mu)

    @classmethod
    def from_arrays(cls, tokens, mask, target, config: EstimatorConfig, mu) -> EstimatorData:
        """From features and (N, M, K) targets; the PRS target is computed from the targets."""
        target = torch.as_tensor(target, dtype=torch.float32)  # (N, M, K)
        e, c = config.choices.index(config.edge_choice), config.choices.index(config.cloud_choice)
        valid = ~(torch.isnan(target[:, e]) | torch.isnan(target[:, c]))  # (N, K)
        qe, qc = torch.nan_to_num(target[:, e]), torch.nan_to_num(target[:, c])  # (N, K)
        prs = prs_from_q(qe, qc, mu[e], mu[c], config.prs_gamma, valid)  # (N,)
        return cls(
            torch.as_tensor(tokens, dtype=torch.float32),
            torch.as_tensor(mask, dtype=torch.float32),
            target,
            prs,
        )


def _choice_index(labels: LabelSet, config: EstimatorConfig) -> list[int]:
    have = [c.name for c in labels.choices]
    missing = [n for n in config.choices if n not in have]
    if missing:
        raise InvalidRequest(f"labels have no choices {missing}; they have {have}")
    return [have.index(n) for n in config.choices]


def _metric_index(config: EstimatorConfig) -> list[int]:
    from t2i_router.world import ASPECTS

    unknown = [m for m in config.metrics if m not in ASPECTS]
    if unknown:
        raise InvalidRequest(f"metrics {unknown} are not aspects {list(ASPECTS)}")
    return [ASPECTS.index(m) for m in config.metrics]


def seed_means(labels: LabelSet, config: EstimatorConfig) -> np.ndarray:
    """(N, M, K) each choice's quality averaged over seeds, in the config's order.

    Inapplicable alignment aspects are filled (:attr:`LabelSet.quality_filled`), so the targets
    hold no NaN and a prompt's equal-weight alignment utility is its labels' alignment.
    """
    q = labels.quality_filled[:, _choice_index(labels, config)][..., _metric_index(config)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN aspect of a prompt
        return np.nanmean(q, axis=2).astype(np.float32)


def metric_means(labels: LabelSet, config: EstimatorConfig) -> torch.Tensor:
    """(M, K) per-choice metric means over the labels: the PRS scale mu."""
    q = labels.quality[:, _choice_index(labels, config)][..., _metric_index(config)]  # (N,M,S,K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mu = np.nanmean(q, axis=(0, 2))  # (M, K)
    return torch.from_numpy(np.nan_to_num(mu, nan=0.5).astype(np.float32))


@dataclass
class TrainResult:
    """A trained model and how it got there.

    Attributes:
        model: The best model (lowest val loss), in eval mode.
        history: One dict per epoch: epoch, train_loss, val_loss (None without val data).
        best_epoch: The epoch whose weights were kept (1-based).
        stopped_early: True when patience ran out before ``epochs``.
        train_time_s: Wall seconds of the optimisation.
        val: Val figures of the best model (loss, score-gap correlation, PGR, APGR).
    """

    model: TokenSelectionMoE
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    train_time_s: float = 0.0
    val: dict = field(default_factory=dict)


@torch.no_grad()
def _evaluate_loss(model: TokenSelectionMoE, data: EstimatorData, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        logits = model(data.tokens[sl], data.mask[sl])  # (b, M, K)
        loss, _ = estimator_loss(model, logits, data.target[sl], data.prs[sl])
        total += float(loss) * logits.shape[0]
    return total / max(len(data), 1)


def fit(
    config: EstimatorConfig,
    train: EstimatorData,
    val: EstimatorData | None = None,
    train_config: TrainConfig = TrainConfig(),
    mu: torch.Tensor | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh model on tensors: AdamW, shuffled minibatches, early stopping on val loss.

    Deterministic given ``train_config.seed`` (on one thread; as deterministic as torch's CPU
    kernels otherwise).
    """
    from tqdm import tqdm

    if len(train) == 0:
        raise InvalidRequest("no training prompts")
    tc = train_config
    torch.manual_seed(tc.seed)
    model = TokenSelectionMoE(config)
    if mu is not None:
        model.prs_mu.copy_(mu)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(tc.seed)
    result = TrainResult(model=model)
    best, best_state, waited = float("inf"), copy.deepcopy(model.state_dict()), 0
    t0 = time.perf_counter()
    bar = tqdm(range(1, tc.epochs + 1), desc="train estimator", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), tc.batch_size):
            idx = order[start : start + tc.batch_size]
            logits = model(train.tokens[idx], train.mask[idx])  # (b, M, K)
            loss, _ = estimator_loss(model, logits, train.target[idx], train.prs[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        row = {"epoch": epoch, "train_loss": total / len(train), "val_loss": None}
        watched = row["train_loss"]
        if val is not None and len(val):
            row["val_loss"] = watched = _evaluate_loss(model, val, tc.batch_size)
        result.history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{watched:.4f}")
        if watched < best - 1e-6:
            best, best_state, waited, result.best_epoch = (
                watched,
                copy.deepcopy(model.state_dict()),
                0,
                epoch,
            )
        else:
            waited += 1
            if waited >= tc.patience and val is not None:
                result.stopped_early = epoch < tc.epochs
                break
    result.train_time_s = time.perf_counter() - t0
    model.load_state_dict(best_state)
    model.eval()
    if val is not None and len(val):
        result.val = validation_figures(model, val, tc.batch_size)
    return result


@torch.no_grad()
def validation_figures(model: TokenSelectionMoE, data: EstimatorData, batch_size: int) -> dict:
    """Loss, the routing score's correlation with the labels' alignment gap, PGR and APGR."""
    from t2i_router.estimator.evaluation import deferral_curve

    c = model.config
    q = torch.cat(
        [
            model.predict(data.tokens[s : s + batch_size], data.mask[s : s + batch_size])
            for s in range(0, len(data), batch_size)
        ]
    ).numpy()  # (N, M, K)
    align = [i for i, m in enumerate(c.metrics) if m in ALIGNMENT_ASPECTS] or list(
        range(len(c.metrics))
    )
    e, g = c.choices.index(c.edge_choice), c.choices.index(c.cloud_choice)
    score = q[:, g, align].mean(-1) - q[:, e, align].mean(-1)  # (N,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        truth = data.target.numpy()[:, :, align]  # (N, M, A)
        qe, qc = np.nanmean(truth[:, e], -1), np.nanmean(truth[:, g], -1)  # (N,)
    out = {"loss": _evaluate_loss(model, data, batch_size), "prompts": len(data)}
    ok = ~(np.isnan(qe) | np.isnan(qc))
    gap = qc[ok] - qe[ok]
    if ok.sum() > 2 and gap.std() > 0 and score[ok].std() > 0:
        out["score_gap_correlation"] = float(np.corrcoef(score[ok], gap)[0, 1])
    if ok.sum() > 2 and qc[ok].mean() > qe[ok].mean():
        out.update(deferral_curve(qe[ok], qc[ok], score[ok]).metrics)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


def train_estimator(
    config: EstimatorConfig,
    train_labels: LabelSet,
    val_labels: LabelSet | None = None,
    train_config: TrainConfig = TrainConfig(),
    features=None,
    progress: bool = True,
) -> TrainResult:
    """Encode the labels' prompts (each once) and :func:`fit`; mu comes from the train labels.

    Args:
        features: A :class:`~t2i_router.estimator.features.TokenFeatures` (or anything with its
            ``encode``); default: one of ``config.features``.
    """
    if features is None:
        from t2i_router.estimator.features import TokenFeatures

        features = TokenFeatures(config.features, max_tokens=config.max_tokens)
    mu = metric_means(train_labels, config)  # (M, K)
    train = EstimatorData.from_labels(train_labels, config, features, mu)
    val = EstimatorData.from_labels(val_labels, config, features, mu) if val_labels else None
    return fit(config, train, val, train_config, mu=mu, progress=progress)


def count_flops(model: TokenSelectionMoE, features=None) -> dict[str, int]:
    """FLOPs per prompt (batch 1, ``max_tokens`` positions) counted by torch's flop counter.

    ``encoder`` is MiniLM's for contextual features and 0 for the static table (a lookup).
    """
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    tokens, mask = torch.zeros(1, c.max_tokens, c.embed_dim), torch.ones(1, c.max_tokens)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(tokens, mask)
    out = {"moe": int(counter.get_total_flops()), "encoder": 0}
    encoder = getattr(features, "_encoder", None)
    if encoder is not None:
        ids = torch.ones(1, c.max_tokens, dtype=torch.int64)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder.model(input_ids=ids, attention_mask=ids)
        out["encoder"] = int(counter.get_total_flops())
    out["total"] = out["moe"] + out["encoder"]
    return out


def save_estimator(
    result: TrainResult,
    folder: str | Path = DEFAULT_MODEL_DIR,
    data_version: str = "unknown",
    train_config: TrainConfig = TrainConfig(),
    features=None,
    extra: dict | None = None,
) -> dict:
    """Write the model folder (weights, config, ``model_card.json``, ``MODEL_CARD.md``).

    Returns:
        The model card as a dict.
    """
    folder = result.model.save_pretrained(folder)
    c = result.model.config
    card = {
        "name": "quality_estimator",
        "data_version": data_version,
        "config": c.to_dict(),
        "train_config": asdict(train_config),
        "parameters": result.model.n_parameters(),
        "flops_per_prompt": count_flops(result.model, features),
        "val": result.val,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "train_time_s": round(result.train_time_s, 2),
        "history": [
            {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}
            for row in result.history
        ],
        **(extra or {}),
    }
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    (folder / "MODEL_CARD.md").write_text(_card_markdown(card))
    return card


def _card_markdown(card: dict) -> str:
    c, f = card["config"], card["flops_per_prompt"]
    val = "\n".join(f"| {k} | {v} |" for k, v in card["val"].items()) or "| (no val split) | |"
    return (
        "# Quality estimator (dual-gate token-selection MoE)\n\n"
        "Predicts Q[m, k] in [0, 1] for every choice m and metric k of a prompt (RouteT2I). "
        "Regenerate: `t2i-router estimator train` (see `model_card.json` for every setting).\n\n"
        f"- data version: `{card['data_version']}`\n"
        f"- features: {c['features']}; choices: {', '.join(c['choices'])}\n"
        f"- experts: {len(c['metrics'])} (one per metric), top_k {c['top_k']}, rank {c['rank']},"
        f" hidden {c['hidden']}, token selection {c['token_selection']}, dual gate "
        f"{c['dual_gate']}, PRS loss weight {c['prs_loss_weight']}\n"
        f"- parameters: {card['parameters']:,}\n"
        f"- FLOPs per prompt: MoE {f['moe']:,}, encoder {f['encoder']:,}, total {f['total']:,}\n"
        f"- training: {card['train_time_s']} s, best epoch {card['best_epoch']} of "
        f"{len(card['history'])}, stopped early: {card['stopped_early']}\n\n"
        f"## Val\n\n| figure | value |\n|---|---|\n{val}\n"
    )
