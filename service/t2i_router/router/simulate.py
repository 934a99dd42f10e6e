"""Simulated score streams for testing and benchmarking budget control (pure numpy, seeded).

A prompt has a true expected gain from the cloud ``gain`` (cloud minus edge quality) that depends
on its kind, and the estimator predicts it with noise: ``score = gain + noise``. The numbers are
shaped after the miniature world (DESIGN.md: prompt-level gaps of a few hundredths, edge mean
alignment ~0.78): "simple" prompts (one object group) gain little from the cloud, "relation"
prompts (two groups and a relation) gain more. A mix shift (simple -> relation-heavy) moves the
threshold that holds a target rate, which is what the controller must follow.

Used by tests/unit/test_router_budget_goals.py, tests/unit/test_router_budget_tracking.py and
benchmarks/budget_control.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from t2i_router.router.budget import BudgetController

__all__ = [
    "KINDS",
    "Kind",
    "Stream",
    "Trace",
    "adversarial_stream",
    "hindsight_quality",
    "mix_density",
    "mix_threshold",
    "run_stream",
    "sample_stream",
    "shifting_stream",
]


@dataclass(frozen=True)
class Kind:
    """A kind of prompt: its true gain from the cloud and the estimator's error on it.

    Attributes:
        name: e.g. "simple".
        gain_mean: Mean true gain (cloud - edge quality).
        gain_std: Spread of the true gain across prompts of this kind.
        noise_std: Std of the estimator's error (score - gain).
    """

    name: str
    gain_mean: float
    gain_std: float
    noise_std: float = 0.02

    @property
    def score_std(self) -> float:
        """Std of the predicted score of this kind."""
        return float(np.hypot(self.gain_std, self.noise_std))


KINDS = (Kind("simple", 0.0, 0.03), Kind("relation", 0.06, 0.03))


@dataclass(frozen=True)
class Stream:
    """A sequence of prompts (arrays of length T).

    Attributes:
        scores: Predicted gain (routing score, multiplier units).
        gains: True expected gain from the cloud.
        edge_quality: True expected quality on the edge.
        relation_share: The mix (share of relation prompts) each prompt was drawn from.
    """

    scores: np.ndarray
    gains: np.ndarray
    edge_quality: np.ndarray
    relation_share: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.size)

    def quality(self, cloud: np.ndarray) -> float:
        """Mean true quality when ``cloud`` (T,) marks the prompts sent to the cloud."""
        return float(np.mean(self.edge_quality + self.gains * cloud))


def sample_stream(rng: np.random.Generator, n: int, relation_share: float) -> Stream:
    """Draws n prompts from a mix with the given share of relation prompts."""
    is_rel = rng.uniform(size=n) < relation_share
    mean = np.where(is_rel, KINDS[1].gain_mean, KINDS[0].gain_mean)
    std = np.where(is_rel, KINDS[1].gain_std, KINDS[0].gain_std)
    noise = np.where(is_rel, KINDS[1].noise_std, KINDS[0].noise_std)
    gains = mean + std * rng.standard_normal(n)
    scores = gains + noise * rng.standard_normal(n)
    edge = np.clip(0.80 - 0.08 * is_rel + 0.05 * rng.standard_normal(n), 0.0, 0.95)
    return Stream(scores, gains, edge, np.full(n, float(relation_share)))


def shifting_stream(rng: np.random.Generator, shares: list[float], lengths: list[int]) -> Stream:
    """Concatenated segments, segment i drawn from ``shares[i]`` for ``lengths[i]`` prompts."""
    parts = [sample_stream(rng, n, s) for s, n in zip(shares, lengths, strict=True)]
    return Stream(*(np.concatenate([getattr(p, f) for p in parts]) for f in Stream.__annotations__))


def _components(relation_share: float) -> list[tuple[float, float, float]]:
    return [
        (1.0 - relation_share, KINDS[0].gain_mean, KINDS[0].score_std),
        (relation_share, KINDS[1].gain_mean, KINDS[1].score_std),
    ]


def mix_threshold(relation_share: float, rate: float) -> float:
    """The score threshold lambda* that sends exactly ``rate`` of the mix to the cloud."""
    lo, hi = -1.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        above = sum(w * stats.norm.sf(mid, m, s) for w, m, s in _components(relation_share))
        lo, hi = (mid, hi) if above > rate else (lo, mid)
    return (lo + hi) / 2


def mix_density(relation_share: float, at: float) -> float:
    """Density of the mix's scores at ``at`` (for tau = 1 / (eta * density))."""
    return float(sum(w * stats.norm.pdf(at, m, s) for w, m, s in _components(relation_share)))


@dataclass(frozen=True)
class Trace:
    """What the controller did on a stream (arrays of length T).

    Attributes:
        multiplier: lambda each decision was made with.
        cloud: Whether each prompt went to the cloud.
        running_rate: Cloud share of the decisions so far.
    """

    multiplier: np.ndarray
    cloud: np.ndarray
    running_rate: np.ndarray


def run_stream(
    controller: BudgetController, scores: np.ndarray, batch_sizes: int | np.ndarray = 1
) -> Trace:
    """Routes ``scores`` in batches (cloud iff score > lambda) and lets the controller learn.

    Args:
        controller: The controller (its update mode decides per-request or per-batch steps).
        scores: (T,) routing scores.
        batch_sizes: One size for all batches, or a size per prompt position: the batch that
            starts at prompt t has ``batch_sizes[t]`` prompts.
    """
    t_total = scores.size
    lam = np.empty(t_total)
    cloud = np.empty(t_total, dtype=bool)
    t = 0
    while t < t_total:
        b = int(batch_sizes if np.isscalar(batch_sizes) else batch_sizes[t])
        end = min(t + max(b, 1), t_total)
        m = controller.multiplier
        lam[t:end] = m
        cloud[t:end] = scores[t:end] > m
        controller.record_scores(scores[t:end])  # what tracking re-solves on
        controller.observe(cloud[t:end])
        t = end
    running = np.cumsum(cloud) / np.arange(1, t_total + 1)
    return Trace(lam, cloud, running)


def hindsight_quality(stream: Stream, n_cloud: int) -> float:
    """Mean quality of the best fixed lambda in hindsight with ``n_cloud`` cloud calls.

    A fixed lambda sends the prompts whose score exceeds it; with n_cloud calls that is the top
    n_cloud scores of the whole stream.
    """
    cloud = np.zeros(len(stream), dtype=bool)
    if n_cloud > 0:
        cloud[np.argsort(-stream.scores, kind="stable")[:n_cloud]] = True
    return stream.quality(cloud)


def adversarial_stream(
    controller: BudgetController, steps: int, rng: np.random.Generator, random_share: float = 0.05
) -> float:
    """An adversary that sees lambda pushes the rate up, then down, as far as it can.

    It sends a prompt scored just above lambda (cloud) until lambda nears ``lambda_max - 2 eta``,
    then just below it (edge) until lambda nears 0, and so on; a ``random_share`` of prompts is
    scored at random in [0, lambda_max - eta] instead. Every score is recorded, so tracking (when
    on) re-solves lambda* on what the adversary feeds it. Scores stay below lambda_max - eta, so
    the upper clip never acts.

    Returns:
        The worst |running rate - target| / error bound over the ``steps`` decisions.
    """
    start = controller.snapshot()
    eta, lambda_max = start.eta, start.lambda_max
    worst, overspend = 0.0, True
    for _ in range(steps):
        lam = controller.multiplier
        if overspend and lam >= lambda_max - 2 * eta:
            overspend = False
        elif not overspend and lam <= eta:
            overspend = True
        score = lam + 1e-9 if overspend else max(lam - 1e-9, 0.0)
        if rng.uniform() < random_share:
            score = rng.uniform(0.0, lambda_max - eta)
        controller.record_scores([score])
        controller.observe([score > lam])
        s = controller.snapshot()
        worst = max(worst, abs(s.running_rate - s.target_rate) / s.error_bound)
    return worst
