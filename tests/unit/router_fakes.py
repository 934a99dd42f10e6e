"""Test doubles for the router's thin edges: a tiny seeded estimator and a fake engine client.

The estimator is a real (tiny, untrained, seeded) torch model, so scores vary by prompt the way
a trained one's do and tests compute what the router should decide from its own predictions;
no score is hard-coded. The engine client stands in for Triton only.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from t2i_router.errors import RouterError
from t2i_router.router.batching import BatcherConfig
from t2i_router.router.budget import BudgetConfig, BudgetController
from t2i_router.router.budget_store import BudgetStore
from t2i_router.router.core import DEFAULT_ENGINE_TIMEOUT_S, Router
from t2i_router.router.estimator import InProcessEstimator
from t2i_router.router.policy import Choice, Policy, PolicyConfig

CHOICES = (
    Choice("edge_small@4", "edge_small", 4, 0.48),
    Choice("edge_small@8", "edge_small", 8, 0.96),
    Choice("cloud_large@10", "cloud_large", 10, 9.45),
    Choice("cloud_large@20", "cloud_large", 20, 18.9),
)
METRICS = ("background", "color", "count", "shape")


class TinyQualityModel(torch.nn.Module):
    """Hashed character trigrams -> EmbeddingBag -> Linear -> sigmoid: Q (N, M, K)."""

    def __init__(self, m: int = len(CHOICES), k: int = len(METRICS), seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.m, self.k = m, k
        self.embed = torch.nn.EmbeddingBag(1024, 16, mode="mean")
        self.head = torch.nn.Linear(16, m * k)
        with torch.no_grad():  # spread the predictions so that decisions differ by prompt
            self.head.weight.mul_(4.0)
        self.choices = tuple(c.name for c in CHOICES[:m])
        self.metric_names = METRICS[:k]
        self.calls: list[list[str]] = []

    @torch.inference_mode()
    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(prompts))
        ids, offsets = [], []
        for p in prompts:
            offsets.append(len(ids))
            text = f"  {p.lower()} "
            ids += [zlib.crc32(text[i : i + 3].encode()) % 1024 for i in range(len(text) - 2)]
        x = self.embed(torch.tensor(ids), torch.tensor(offsets))  # (N, 16)
        return torch.sigmoid(self.head(x)).reshape(len(prompts), self.m, self.k).numpy()


class FakeEngines:
    """Engine client: an image from the seed; engines can be made unavailable or failing."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.errors: dict[str, RouterError] = {}  # engine -> error raised
        self.fail_prompts: dict[str, RouterError] = {}  # prompt -> error raised
        self.ready = {"edge_small": True, "cloud_large": True}
        self.delay_s = 0.0
        self.delays_s: dict[str, float] = {}  # engine -> its own delay, over delay_s
        self.cancelled = 0  # calls cancelled while they slept (deadline or caller gone)

    async def generate(self, model, prompts, seeds, steps=None, guidance=None, timeout_s=None):
        self.calls.append(
            dict(model=model, prompts=list(prompts), seeds=list(seeds), steps=steps,
                 guidance=guidance, timeout_s=timeout_s)
        )  # fmt: skip
        delay_s = self.delays_s.get(model, self.delay_s)
        if delay_s:
            try:
                await asyncio.sleep(delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if model in self.errors:
            raise self.errors[model]
        for p in prompts:
            if p in self.fail_prompts:
                raise self.fail_prompts[p]
        rng = np.random.default_rng(int(seeds[0]) & 0xFFFF_FFFF_FFFF_FFFF)  # as the engines
        return rng.integers(0, 256, (len(prompts), 32, 32, 3), dtype=np.uint8)

    async def is_model_ready(self, model, timeout_s=None):
        return self.ready.get(model, False)


def make_policy() -> Policy:
    return Policy(
        PolicyConfig(
            choices=CHOICES,
            metric_weights=(0.25,) * len(METRICS),
            edge_default="edge_small@8",
            cloud_default="cloud_large@20",
            metric_names=METRICS,
        )
    )


def make_router(
    model: TinyQualityModel | None = None,
    engines: FakeEngines | None = None,
    target_rate: float = 0.3,
    eta: float = 0.01,
    store: BudgetStore | None = None,
    engine_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S,
    **batcher: float,
) -> Router:
    policy = make_policy()
    budget = BudgetController(
        BudgetConfig(
            target_rate=target_rate,
            eta=eta,
            cost_scale=policy.config.c_scale,
            edge_cost=0.96,
            cloud_cost=18.9,
        ),
        store=store,
    )
    return Router(
        InProcessEstimator(model or TinyQualityModel()),
        policy,
        budget,
        engines or FakeEngines(),
        BatcherConfig(**{"max_batch_size": 8, "max_delay_s": 0.005, **batcher}),
        engine_timeout_s=engine_timeout_s,
    )
