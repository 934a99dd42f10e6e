"""The router's request, decision and result types, and its two outward protocols.

Plain dataclasses (no grpc): the servicer converts them to and from the proto's messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from t2i_router.errors import InvalidRequest
from t2i_router.router.policy import Choice, Target

__all__ = [
    "ChoiceEvaluation",
    "EngineClient",
    "GenerateItem",
    "GenerateResult",
    "Limits",
    "Readiness",
    "RouteDecision",
    "RouterMetricsSink",
    "Timings",
]


class EngineClient(Protocol):
    """What the router needs from Triton (`t2i_router.triton.TritonClient` answers it)."""

    async def generate(
        self,
        model: str,
        prompts: Sequence[str],
        seeds: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        timeout_s: float | None = None,
    ) -> np.ndarray: ...

    async def is_model_ready(self, model: str, timeout_s: float | None = None) -> bool: ...


class RouterMetricsSink(Protocol):
    """Where the router reports what it did (Prometheus in `router.metrics`)."""

    def stage(self, stage: str, seconds: float) -> None: ...

    def batch(self, size: int) -> None: ...


@dataclass(frozen=True)
class Limits:
    """What a request may ask for; beyond it is INVALID_ARGUMENT (RESOURCE_EXHAUSTED for the
    concurrency limit), quoting the limit.

    Attributes:
        max_prompt_bytes: Longest prompt, in UTF-8 bytes (checked first, so a huge prompt is
            never tokenized).
        max_prompt_tokens: Longest prompt in MiniLM tokens, [CLS] and [SEP] included: the
            engines' encoder keeps 24 (``engines.text_encoder.MAX_TOKENS``) and would cut the
            rest silently; 0 turns the check off.
        max_prompts: Most prompts in one Route or GenerateBatch call.
        max_steps: Most sampler steps a caller may ask for.
        max_guidance: Largest guidance scale a caller may ask for.
        max_concurrent_per_client: Most calls one client may have in flight
            (`router.guard.ClientLimiter`).
    """

    max_prompt_bytes: int = 1024
    max_prompt_tokens: int = 24
    max_prompts: int = 256
    max_steps: int = 100
    max_guidance: float = 30.0
    max_concurrent_per_client: int = 16

    def check_prompt(self, prompt: str, count_tokens: Callable[[str], int] | None = None) -> None:
        """Raises `InvalidRequest` for an empty or too long prompt (tokens: given a counter)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequest(f"prompt {prompt[:40]!r} is empty")
        n = len(prompt.encode("utf-8"))
        if n > self.max_prompt_bytes:
            raise InvalidRequest(
                f"prompt {prompt[:40]!r}... is {n} bytes, the limit is {self.max_prompt_bytes}"
            )
        if count_tokens is not None and self.max_prompt_tokens > 0:
            tokens = count_tokens(prompt)
            if tokens > self.max_prompt_tokens:
                raise InvalidRequest(
                    f"prompt {prompt[:40]!r} is {tokens} tokens with [CLS]/[SEP], the limit is "
                    f"{self.max_prompt_tokens}"
                )

    def check_count(self, n: int) -> None:
        if n == 0:
            raise InvalidRequest("no prompts given")
        if n > self.max_prompts:
            raise InvalidRequest(f"{n} prompts in one call, the limit is {self.max_prompts}")


@dataclass(frozen=True)
class GenerateItem:
    """One prompt to route and generate (a GenerateRequest)."""

    prompt: str
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    target: Target = "auto"

    def check(self, limits: Limits, count_tokens: Callable[[str], int] | None = None) -> None:
        """Raises `InvalidRequest` quoting the first bad field."""
        limits.check_prompt(self.prompt, count_tokens)
        if self.steps is not None and not 1 <= self.steps <= limits.max_steps:
            raise InvalidRequest(f"steps is {self.steps}, must be in 1..{limits.max_steps}")
        if self.guidance is not None and not (
            math.isfinite(self.guidance) and 0 <= self.guidance <= limits.max_guidance
        ):
            raise InvalidRequest(
                f"guidance is {self.guidance}, must be in [0, {limits.max_guidance}]"
            )
        if self.target not in ("auto", "edge", "cloud"):
            raise InvalidRequest(f"target is {self.target!r}, expected auto, edge or cloud")


@dataclass
class Timings:
    """Milliseconds per stage; 0 for a stage that did not run."""

    queue_ms: float = 0.0
    estimate_ms: float = 0.0
    decide_ms: float = 0.0
    generate_ms: float = 0.0
    encode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class ChoiceEvaluation:
    """The estimator's prediction and the policy's objective for one choice."""

    choice: Choice
    quality: dict[str, float]
    utility: float
    objective: float


@dataclass(frozen=True)
class RouteDecision:
    """How one prompt was routed (the proto's RouteDecision).

    ``score`` and ``utility_gap`` are NaN for a forced target (its prompt was not scored) and
    ``evaluations`` is then empty.
    """

    choice: Choice
    steps: int
    score: float
    utility_gap: float
    multiplier: float
    cost: float
    counted: bool
    forced: bool
    fallback: bool
    evaluations: tuple[ChoiceEvaluation, ...]
    timings: Timings = field(default_factory=Timings)
    index: int = 0


@dataclass(frozen=True)
class GenerateResult:
    """A generated image, PNG-encoded, with the decision behind it."""

    png: bytes
    width: int
    height: int
    decision: RouteDecision


@dataclass(frozen=True)
class Readiness:
    """What the health check saw."""

    estimator: bool
    engines: dict[str, bool]
    edge_engine: str

    @property
    def serving(self) -> bool:
        """Serving needs the estimator and the edge engine (the cloud may fall back)."""
        return self.estimator and self.engines.get(self.edge_engine, False)
