"""RouteT2I's dual-gate token-selection mixture of experts: Q[m, k] per prompt.

One expert per quality metric. Over frozen token features T (L x D) of a prompt:

1. token-selection gate: A = softmax(T E^T) over the experts, E (k x D) one learned embedding per
   expert; expert i keeps the top_k tokens with the largest A[:, i] (expert-choice routing).
   Padding is never kept: a prompt with fewer than top_k tokens gives each expert all of them.
2. dual gates on the kept tokens: T+_i = T P+_i S+_i and T-_i = T P-_i S-_i (P: D x l, S: l x h,
   l << h, D) combined as sigmoid(T+_i - T-_i): per hidden unit, whether a token helps or hurts
   metric i. Kept tokens are weighted by their gate value A so that the gate learns.
3. each expert mean-pools its kept tokens and a head gives the logits of Q[m, i] for every
   choice m; Q = sigmoid(logits) lies in [0, 1].

Ablations (the config's switches): ``token_selection=False`` gives every expert all tokens,
mean-pooled, with no gate E; ``dual_gate=False`` replaces the two gates by one projection,
sigmoid(T P_i S_i). The PRS loss weight lives here too, so that a saved config says how the
model was trained.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from t2i_router.engines.text_encoder import EMBED_DIM, MAX_TOKENS
from t2i_router.errors import InvalidRequest
from t2i_router.estimator import EstimatorNotFoundError
from t2i_router.estimator.choices import DEFAULT_CHOICES
from t2i_router.world import ASPECTS

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "EstimatorConfig",
    "EstimatorNotFoundError",
    "TokenSelectionMoE",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's architecture and training objective (saved as ``config.json``).

    Attributes:
        choices: Choice names ("engine@steps"), one row m of Q each.
        metrics: Metric names, one column k of Q each; expert i predicts metric i.
        edge_choice: The edge default: the PRS loss and the routing score compare it...
        cloud_choice: ...with the cloud default.
        features: Token features: "contextual" MiniLM outputs or the "static" word table.
        embed_dim: Feature width D.
        max_tokens: Token positions L.
        top_k: Tokens each expert keeps (K in RouteT2I).
        rank: Low rank l of the gates' P (D x l) and S (l x h).
        hidden: Width h of the gates and the pooled expert output.
        dropout: Dropout on the pooled expert outputs while training.
        token_selection: False = every expert mean-pools all tokens (ablation).
        dual_gate: False = one projection sigmoid(T P S) instead of sigmoid(T+ - T-) (ablation).
        prs_loss_weight: Weight of the PRS loss next to the sigmoid cross-entropy; 0 = none.
        prs_gamma: Temperature Gamma of the PRS.
    """

    choices: tuple[str, ...] = tuple(c.name for c in DEFAULT_CHOICES)
    metrics: tuple[str, ...] = ASPECTS
    edge_choice: str = "edge_small@8"
    cloud_choice: str = "cloud_large@20"
    features: Literal["contextual", "static"] = "contextual"
    embed_dim: int = EMBED_DIM
    max_tokens: int = MAX_TOKENS
    top_k: int = 6
    rank: int = 8
    hidden: int = 64
    dropout: float = 0.1
    token_selection: bool = True
    dual_gate: bool = True
    prs_loss_weight: float = 0.1
    prs_gamma: float = 1.0

    def __post_init__(self) -> None:
        # Lists from JSON become tuples, so that a loaded config equals the saved one.
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.choices or not self.metrics:
            raise InvalidRequest(f"choices {self.choices} and metrics {self.metrics} need one each")
        for name in (self.edge_choice, self.cloud_choice):
            if name not in self.choices:
                raise InvalidRequest(f"choice {name!r} is not one of {list(self.choices)}")
        if self.features not in ("contextual", "static"):
            raise InvalidRequest(f"features {self.features!r} is not 'contextual' or 'static'")
        for name in ("embed_dim", "max_tokens", "top_k", "rank", "hidden"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"{name} is {getattr(self, name)}, must be >= 1")
        if self.top_k > self.max_tokens:
            raise InvalidRequest(f"top_k is {self.top_k}, more than max_tokens {self.max_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidRequest(f"dropout is {self.dropout}, must be in [0, 1)")
        if self.prs_loss_weight < 0 or self.prs_gamma <= 0:
            raise InvalidRequest(
                f"prs_loss_weight {self.prs_loss_weight} must be >= 0 and prs_gamma "
                f"{self.prs_gamma} > 0"
            )

    @property
    def n_experts(self) -> int:
        """One expert per metric (RouteT2I aligns expert i with metric i)."""
        return len(self.metrics)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["choices"], out["metrics"] = list(self.choices), list(self.metrics)
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> EstimatorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidRequest(f"estimator config has unknown keys {unknown}")
        return cls(**raw)


class TokenSelectionMoE(nn.Module):
    """Token features (B, L, D) and mask (B, L) -> logits of Q (B, M, K).

    Args:
        config: The architecture; saved beside the weights as the model's config.
    """

    def __init__(self, config: EstimatorConfig) -> None:
        super().__init__()
        self.config = c = config
        e, d, r, h, m = c.n_experts, c.embed_dim, c.rank, c.hidden, len(c.choices)
        self.norm = nn.LayerNorm(d)
        if c.token_selection:
            self.expert_embed = nn.Parameter(torch.randn(e, d) * d**-0.5)  # E (k, D)
        self.p_pos = nn.Parameter(torch.randn(e, d, r) * d**-0.5)  # P+ (k, D, l)
        self.s_pos = nn.Parameter(torch.randn(e, r, h) * r**-0.5)  # S+ (k, l, h)
        if c.dual_gate:
            self.p_neg = nn.Parameter(torch.randn(e, d, r) * d**-0.5)  # P- (k, D, l)
            self.s_neg = nn.Parameter(torch.randn(e, r, h) * r**-0.5)  # S- (k, l, h)
        self.drop = nn.Dropout(c.dropout)
        self.head_w = nn.Parameter(torch.randn(e, h, m) * h**-0.5)  # (k, h, M)
        self.head_b = nn.Parameter(torch.zeros(e, m))  # (k, M)
        # Per-choice metric means of the training labels: the PRS scale. Saved with the weights.
        self.register_buffer("prs_mu", torch.full((m, e), 0.5))  # (M, K)

    def select(
        self, tokens: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert-choice token selection.

        Returns:
            index (B, k, top_k) positions each expert keeps, gate (B, k, top_k) their A values,
            keep (B, k, top_k) 1 where the position is a token (0 where a short prompt ran out).
        """
        logits = tokens @ self.expert_embed.T  # (B, L, k)
        gate = logits.softmax(dim=-1).transpose(1, 2)  # (B, k, L): A, softmax over experts
        # Padding ranks below every token (A > 0), so it is picked only when tokens run out.
        ranked = gate.masked_fill(mask[:, None, :] == 0, -1.0)  # (B, k, L)
        _, index = ranked.topk(self.config.top_k, dim=-1, sorted=True)  # (B, k, top_k)
        kept_gate = gate.gather(-1, index)  # (B, k, top_k)
        keep = mask[:, None, :].expand_as(gate).gather(-1, index)  # (B, k, top_k)
        return index, kept_gate, keep

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of Q: (B, L, D), (B, L) -> (B, M, K)."""
        c = self.config
        b, _, d = tokens.shape  # (B, L, D)
        x = self.norm(tokens)  # (B, L, D)
        if c.token_selection:
            index, gate, keep = self.select(x, mask)  # (B, k, top_k) each
            flat = index.reshape(b, -1, 1).expand(-1, -1, d)  # (B, k * top_k, D)
            chosen = x.gather(1, flat).reshape(b, c.n_experts, c.top_k, d)  # (B, k, top_k, D)
            chosen = chosen * gate[..., None]  # (B, k, top_k, D)
            weight = keep  # (B, k, top_k)
        else:
            chosen = x[:, None].expand(-1, c.n_experts, -1, -1)  # (B, k, L, D)
            weight = mask[:, None, :].expand(-1, c.n_experts, -1)  # (B, k, L)
        pos = torch.einsum("betd,edl->betl", chosen, self.p_pos)  # (B, k, t, l)
        pos = torch.einsum("betl,elh->beth", pos, self.s_pos)  # (B, k, t, h): T+
        if c.dual_gate:
            neg = torch.einsum("betd,edl->betl", chosen, self.p_neg)  # (B, k, t, l)
            neg = torch.einsum("betl,elh->beth", neg, self.s_neg)  # (B, k, t, h): T-
            z = torch.sigmoid(pos - neg)  # (B, k, t, h)
        else:
            z = torch.sigmoid(pos)  # (B, k, t, h)
        pooled = (z * weight[..., None]).sum(2) / weight.sum(2, keepdim=True).clamp(min=1.0)
        pooled = self.drop(pooled)  # (B, k, h)
        logits = torch.einsum("beh,ehm->bem", pooled, self.head_w) + self.head_b  # (B, k, M)
        return logits.transpose(1, 2)  # (B, M, K)

    @torch.no_grad()
    def predict(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Q in [0, 1]: (B, L, D), (B, L) -> (B, M, K), in eval mode."""
        was = self.training
        self.eval()
        q = torch.sigmoid(self(tokens, mask))  # (B, M, K)
        self.train(was)
        return q

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TokenSelectionMoE:
        """Load a folder written by :meth:`save_pretrained` (in eval mode).

        Raises:
            EstimatorNotFoundError: the folder, its config or its weights are missing.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise EstimatorNotFoundError(
                    f"no quality estimator at {folder} ({name} missing): run "
                    "`t2i-router estimator train` first"
                )
        config = EstimatorConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.eval()


def prs_from_q(
    q_edge: torch.Tensor,
    q_cloud: torch.Tensor,
    mu_edge: torch.Tensor,
    mu_cloud: torch.Tensor,
    gamma: float,
    valid: torch.Tensor | None = None,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Differentiable PRS of the edge over the cloud: (B, K) pairs -> (B,); < 0.5 = cloud better.

    The torch twin of :func:`t2i_router.world.pareto_relative_superiority` with equal weights;
    ``valid`` (B, K) leaves out aspects that do not apply.
    """
    scale = gamma * (mu_edge - mu_cloud).abs().clamp(min=eps)  # (K,)
    d = torch.sigmoid((q_edge - q_cloud) / scale)  # (B, K)
    w = torch.ones_like(d) if valid is None else valid.to(d.dtype)  # (B, K)
    return (d * w).sum(-1) / w.sum(-1).clamp(min=1e-6)  # (B,)


def estimator_loss(
    model: TokenSelectionMoE,
    logits: torch.Tensor,
    target: torch.Tensor,
    prs_target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid cross-entropy on labels in [0, 1] (NaN masked) plus the weighted PRS loss.

    Args:
        model: The model (its config and ``prs_mu``).
        logits: (B, M, K) the model's output.
        target: (B, M, K) seed-mean labels in [0, 1], NaN where an aspect does not apply.
        prs_target: (B,) the labels' PRS of the edge default over the cloud default.

    Returns:
        The loss and its parts as floats (``bce``, ``prs``).
    """
    c = model.config
    valid = ~torch.isnan(target)  # (B, M, K)
    y = torch.nan_to_num(target).clamp(0.0, 1.0)  # (B, M, K)
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, M, K)
    bce = (bce * valid).sum() / valid.sum().clamp(min=1)
    parts = {"bce": float(bce.detach())}
    loss = bce
    if c.prs_loss_weight > 0 and prs_target is not None:
        e, g = c.choices.index(c.edge_choice), c.choices.index(c.cloud_choice)
        q = torch.sigmoid(logits)  # (B, M, K)
        both = valid[:, e] & valid[:, g]  # (B, K)
        prs = prs_from_q(q[:, e], q[:, g], model.prs_mu[e], model.prs_mu[g], c.prs_gamma, both)
        p = prs.clamp(1e-6, 1 - 1e-6)  # (B,)
        prs_loss = F.binary_cross_entropy(p, prs_target.clamp(0.0, 1.0))
        parts["prs"] = float(prs_loss.detach())
        loss = loss + c.prs_loss_weight * prs_loss
    return loss, parts
