"""Routing policy: from predicted quality to a choice, with the price of cost as a multiplier.

The estimator predicts, per prompt, the quality of every *choice* (an engine at a step count) on
every metric: ``Q`` of shape (N, M, K) in [0, 1]. This module turns that into a decision; it does
not score prompts itself (RouteLLM's lesson: keep the score apart from the decision, so the
estimator can change while the decision rule, its threshold and the budget stay put).

Utility and decision (CATImage):

    u[n, m]   = sum_k w_k Q[n, m, k]                        # (N, M)
    choice[n] = argmax_m  u[n, m] - lambda * c_m / c_scale    # ties to the cheaper choice

``c_scale`` normalises costs so that lambda has utility units whatever the cost units are (GFLOPs,
milliseconds, cents): by default it is the cost span between the edge and the cloud defaults, so
lambda = 0.05 means "pay for the cloud when it is predicted better by more than 0.05 utility".

Routing score (two engines). With an edge default e and a cloud default c (c_c > c_e), the
cloud wins iff ``u_c - u_e > lambda * (c_c - c_e) / c_scale``. The score

    score[n] = (u[n, c] - u[n, e]) * c_scale / (c_c - c_e)

is in multiplier units: it is the lambda at which the prompt switches, and the decision is
"cloud iff score > lambda" (ties go to the edge). The budget controller warm-starts lambda at a
quantile of recent scores for this reason. With M > 2 choices the score still orders prompts by
their predicted gain from the cloud and is reported; the decision is the argmax.

PRS/threshold form. RouteT2I sends a prompt to the cloud iff its predicted Pareto relative
superiority ``PRS < alpha`` (PRS < 0.5: the cloud image is predicted better). That is the same
family of rules: a monotone scalar per prompt against one threshold that trades quality for
cost. When Q holds the per-metric pairwise probabilities ``D_k`` that the edge beats the cloud
(Q[n, e, k] = D_k and Q[n, c, k] = 1 - D_k) and the weights sum to 1, then u_c - u_e = 1 - 2 PRS:

    cloud iff score > lambda  <=>  PRS < alpha,  alpha = (1 - lambda * (c_c - c_e) / c_scale) / 2

so lambda = 0 is alpha = 0.5 (cloud wherever it is predicted better) and raising lambda lowers
alpha. A PRS estimator can therefore be served through this policy unchanged (`prs_alpha`).

A forced target ("edge"/"cloud") bypasses scoring and picks that engine's default choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from t2i_router.errors import InvalidRequest

__all__ = [
    "Choice",
    "Decisions",
    "Policy",
    "PolicyConfig",
    "Target",
    "prs_alpha",
]

Target = Literal["auto", "edge", "cloud"]
_TARGETS = ("auto", "edge", "cloud")


@dataclass(frozen=True)
class Choice:
    """One way to serve a prompt: an engine at a step count, with its cost.

    Attributes:
        name: Unique name of the choice, e.g. ``"edge_small@8"``.
        engine: The engine (Triton model) that runs it, e.g. ``"edge_small"``.
        steps: Sampler steps.
        cost: Cost of one image, in the deployment's cost units (e.g. GFLOPs); >= 0.
    """

    name: str
    engine: str
    steps: int
    cost: float


@dataclass(frozen=True)
class PolicyConfig:
    """The choices, how metrics weigh into utility, and the cost normaliser.

    Attributes:
        choices: The M choices, in the order of the estimator's second axis of Q.
        metric_weights: w, one weight per metric (K,), in the order of Q's last axis; >= 0, not
            all 0. They are used as given (normalise them to sum 1 for utilities in [0, 1]).
        metric_names: Names of the K metrics (for reports); empty means "m0", "m1", ...
        edge_default: Name of the edge engine's default choice (forced "edge", score baseline).
        cloud_default: Name of the cloud engine's default choice (forced "cloud"); must cost
            more than the edge default.
        cost_scale: c_scale; None means the cost span ``cost(cloud_default) - cost(edge_default)``.
    """

    choices: tuple[Choice, ...]
    metric_weights: tuple[float, ...]
    edge_default: str
    cloud_default: str
    metric_names: tuple[str, ...] = ()
    cost_scale: float | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.choices]
        if len(names) < 2 or len(set(names)) != len(names):
            raise InvalidRequest(f"need at least two uniquely named choices, got {names}")
        for c in self.choices:
            if not (np.isfinite(c.cost) and c.cost >= 0):
                raise InvalidRequest(f"choice {c.name!r} has cost {c.cost}, must be >= 0")
        for default in (self.edge_default, self.cloud_default):
            if default not in names:
                raise InvalidRequest(f"default choice {default!r} is not one of {names}")
        w = np.asarray(self.metric_weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or (w < 0).any() or w.sum() <= 0:
            raise InvalidRequest(f"metric weights {self.metric_weights} must be >= 0, not all 0")
        if self.metric_names and len(self.metric_names) != w.size:
            raise InvalidRequest(
                f"{len(self.metric_names)} metric names for {w.size} metric weights"
            )
        span = self.choice(self.cloud_default).cost - self.choice(self.edge_default).cost
        if span <= 0:
            raise InvalidRequest(
                f"cloud default {self.cloud_default!r} must cost more than edge default "
                f"{self.edge_default!r}; the span is {span}"
            )
        if self.cost_scale is not None and not self.cost_scale > 0:
            raise InvalidRequest(f"cost_scale is {self.cost_scale}, must be > 0")

    def choice(self, name: str) -> Choice:
        """The choice called ``name``."""
        for c in self.choices:
            if c.name == name:
                return c
        raise InvalidRequest(f"no choice named {name!r}")

    @property
    def c_scale(self) -> float:
        """The cost normaliser in effect (the cost span between the defaults unless given)."""
        if self.cost_scale is not None:
            return self.cost_scale
        return self.choice(self.cloud_default).cost - self.choice(self.edge_default).cost

    @property
    def names(self) -> tuple[str, ...]:
        """Metric names (``m0``, ``m1``, ... where none were given)."""
        k = len(self.metric_weights)
        return self.metric_names or tuple(f"m{i}" for i in range(k))


@dataclass(frozen=True)
class Decisions:
    """The policy's output for N prompts (arrays share their first axis).

    Attributes:
        index: Chosen choice per prompt, an index into ``PolicyConfig.choices``; (N,) int.
        utilities: u = Q @ w; (N, M). NaN rows where the target was forced and no Q was given.
        objectives: u - multiplier * c / c_scale; (N, M).
        scores: Routing score in multiplier units (module docstring); (N,).
        utility_gaps: u(cloud default) - u(edge default); (N,).
        cloud: Whether the chosen choice runs on the cloud default's engine; (N,) bool.
        costs: Cost of the chosen choice; (N,).
        forced: Whether the target was forced (scoring bypassed); (N,) bool.
        multiplier: The lambda used.
    """

    index: np.ndarray
    utilities: np.ndarray
    objectives: np.ndarray
    scores: np.ndarray
    utility_gaps: np.ndarray
    cloud: np.ndarray
    costs: np.ndarray
    forced: np.ndarray
    multiplier: float
    choices: tuple[Choice, ...] = field(repr=False, default=())

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def choice(self, n: int) -> Choice:
        """The choice made for prompt ``n``."""
        return self.choices[int(self.index[n])]


class Policy:
    """Decides, per prompt, which choice serves it, given lambda.

    Stateless apart from its config: the multiplier comes from the BudgetController on every
    call, so the policy is safe to share between tasks and threads.
    """

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._weights = np.asarray(config.metric_weights, dtype=np.float64)  # (K,)
        self._costs = np.array([c.cost for c in config.choices], dtype=np.float64)  # (M,)
        names = [c.name for c in config.choices]
        self._edge = names.index(config.edge_default)
        self._cloud = names.index(config.cloud_default)
        self._cloud_engine = config.choices[self._cloud].engine
        self._on_cloud = np.array([c.engine == self._cloud_engine for c in config.choices])  # (M,)
        # argmax over choices sorted by cost returns the first maximum: ties go to the cheaper.
        self._by_cost = np.argsort(self._costs, kind="stable")  # (M,)
        self._span = float(self._costs[self._cloud] - self._costs[self._edge])

    @property
    def edge_index(self) -> int:
        """Index of the edge default choice."""
        return self._edge

    @property
    def cloud_index(self) -> int:
        """Index of the cloud default choice."""
        return self._cloud

    def check_quality(self, q: np.ndarray) -> np.ndarray:
        """Validates predicted quality Q and returns it as float64 (N, M, K)."""
        q = np.asarray(q, dtype=np.float64)
        m, k = len(self.config.choices), self._weights.size
        if q.ndim != 3 or q.shape[1:] != (m, k):
            raise InvalidRequest(f"predicted quality has shape {q.shape}, expected (N, {m}, {k})")
        if not np.isfinite(q).all() or (q < 0).any() or (q > 1).any():
            bad = q[~(np.isfinite(q) & (q >= 0) & (q <= 1))]
            raise InvalidRequest(f"predicted quality must lie in [0, 1]; found {bad.flat[0]}")
        return q

    def utilities(self, q: np.ndarray) -> np.ndarray:
        """u = Q @ w: (N, M, K) -> (N, M)."""
        return self.check_quality(q) @ self._weights

    def scores_from_utilities(self, u: np.ndarray) -> np.ndarray:
        """Routing score in multiplier units from utilities (N, M) -> (N,)."""
        return (u[:, self._cloud] - u[:, self._edge]) * (self.config.c_scale / self._span)

    def scores(self, q: np.ndarray) -> np.ndarray:
        """Routing score (N,): the lambda at which each prompt switches edge <-> cloud."""
        return self.scores_from_utilities(self.utilities(q))

    def decide(
        self,
        q: np.ndarray | None,
        multiplier: float,
        targets: Target | Sequence[Target] = "auto",
    ) -> Decisions:
        """Chooses a choice per prompt.

        Args:
            q: Predicted quality (N, M, K) in [0, 1]. May be None only when every target is
                forced (then N is the number of targets).
            multiplier: lambda >= 0, the price of one c_scale of cost in utility units.
            targets: "auto" to decide, "edge"/"cloud" to force that engine's default choice
                (bypasses scoring); one for all prompts or one per prompt.

        Returns:
            The decisions, with utilities, objectives and scores for reporting.
        """
        if not (np.isfinite(multiplier) and multiplier >= 0):
            raise InvalidRequest(f"multiplier is {multiplier}, must be >= 0")
        m = len(self.config.choices)
        if q is None:
            if isinstance(targets, str) or "auto" in targets:
                raise InvalidRequest("predicted quality is required unless every target is forced")
            n = len(targets)
            u = np.full((n, m), np.nan)
        else:
            u = self.utilities(q)  # (N, M)
            n = u.shape[0]
        target_list = [targets] * n if isinstance(targets, str) else list(targets)
        if len(target_list) != n:
            raise InvalidRequest(f"{len(target_list)} targets for {n} prompts")
        for t in target_list:
            if t not in _TARGETS:
                raise InvalidRequest(f"target is {t!r}, expected one of {_TARGETS}")

        objectives = u - multiplier * self._costs / self.config.c_scale  # (N, M)
        index = self._argmax(objectives) if n and q is not None else np.zeros(n, dtype=np.int64)
        t = np.array(target_list, dtype=object)
        index = np.where(t == "edge", self._edge, np.where(t == "cloud", self._cloud, index))
        index = index.astype(np.int64)
        return Decisions(
            index=index,
            utilities=u,
            objectives=objectives,
            scores=self.scores_from_utilities(u),
            utility_gaps=u[:, self._cloud] - u[:, self._edge],
            cloud=self._on_cloud[index],
            costs=self._costs[index],
            forced=t != "auto",
            multiplier=float(multiplier),
            choices=self.config.choices,
        )

    def _argmax(self, objectives: np.ndarray) -> np.ndarray:
        """Best choice per row of (N, M) objectives; ties go to the cheaper choice."""
        return self._by_cost[np.argmax(objectives[:, self._by_cost], axis=1)]  # (N,)

    def outcome(self, utilities: np.ndarray, multiplier: float) -> tuple[float, float]:
        """(cloud share, mean cost) of AUTO decisions on utilities (N, M) at ``multiplier``.

        What the budget is measured in, as a function of lambda (both non-increasing in it);
        `calibration.solve_multiplier` finds the lambda that meets a target on recent traffic.
        """
        u = np.asarray(utilities, dtype=np.float64)
        if u.ndim != 2 or u.shape[1] != len(self.config.choices) or not u.shape[0]:
            raise InvalidRequest(
                f"utilities have shape {u.shape}, expected (N >= 1, {len(self.config.choices)})"
            )
        index = self._argmax(u - multiplier * self._costs / self.config.c_scale)
        return float(self._on_cloud[index].mean()), float(self._costs[index].mean())


def prs_alpha(multiplier: float, cost_span: float, c_scale: float) -> float:
    """The PRS threshold alpha equivalent to ``multiplier`` for two choices (module docstring).

    Args:
        multiplier: lambda.
        cost_span: c_cloud - c_edge.
        c_scale: The policy's cost normaliser.

    Returns:
        alpha such that "cloud iff PRS < alpha" equals "cloud iff score > multiplier" when the
        utilities are built from pairwise probabilities D_k.
    """
    return (1.0 - multiplier * cost_span / c_scale) / 2.0
