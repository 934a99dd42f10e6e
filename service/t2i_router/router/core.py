# Over 400 lines on purpose: the request path (estimate, decide, count, generate) in one place.
"""The router's core: estimate (micro-batched) -> decide with lambda -> count -> generate.

`Router` is what the gRPC servicer delegates to; it imports neither grpc nor tritonclient, so it
is tested with a tiny estimator and a fake engine client. One request flows as:

1. validate (`Limits`), quoting the bad value (`InvalidRequest`);
2. queue its prompt in the `MicroBatcher`; a batch runs the estimator once for its AUTO prompts
   and `Policy.decide` with the BudgetController's current lambda (forced targets skip the
   estimator); an AUTO decision whose engine is known to be down falls back to the edge default;
3. count: Route decisions count right after their batch (one step per batch, all made with
   the same lambda) unless ``dry_run``; a Generate decision counts once its image is delivered,
   so a failed or cancelled request never moves lambda. Forced targets and fallbacks are tallied
   as uncounted;
4. generate on the chosen engine within the caller's remaining deadline or ``engine_timeout_s``,
   whichever is shorter (`engine_call_s`): the caller's deadline passing is DEADLINE_EXCEEDED,
   the router's own limit passing is Unavailable (the engine does not answer); if the cloud
   engine is unavailable for an AUTO decision, the edge default serves it (``fallback``, not
   counted).

Engine errors fail their own request only. Times are reported per stage (`Timings`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from t2i_router.errors import (
    ConfigError,
    DeadlineExceeded,
    InvalidRequest,
    ModelError,
    RouterError,
    Unavailable,
)
from t2i_router.router.batching import BatcherConfig, MicroBatcher
from t2i_router.router.budget import BudgetController, BudgetSnapshot
from t2i_router.router.calibration import BudgetCalibration, OutcomeWindow, calibrate_budget
from t2i_router.router.estimator import Estimator
from t2i_router.router.policy import Policy, Target
from t2i_router.router.types import (
    ChoiceEvaluation,
    EngineClient,
    GenerateItem,
    GenerateResult,
    Limits,
    Readiness,
    RouteDecision,
    RouterMetricsSink,
    Timings,
)

__all__ = ["DEFAULT_ENGINE_TIMEOUT_S", "Router", "engine_call_s"]

log = logging.getLogger(__name__)

#: The longest an engine call may take when the caller's deadline is later or not set: well above
#: a cloud image under load on a 2-core host (p99 18-26 s at 32 concurrent calls,
#: benchmarks/results/triton_load.json), far below "forever" for a Triton that hangs.
DEFAULT_ENGINE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class _Queued:
    prompt: str
    target: Target
    enqueued_s: float
    count_now: bool  # a Route decision that counts (not dry run)


class Router:
    """Routes prompts and has their images generated; shared by every request of a server.

    Args:
        estimator: Predicts Q; its choices must be the policy's, in the same order.
        policy: The decision rule.
        budget: Owns lambda and the counts.
        engines: Generates images (Triton).
        batcher: Micro-batching of estimator calls.
        limits: Request limits.
        metrics: Receives stage times and batch sizes; None reports nothing.
        count_tokens: Counts a prompt's tokens for ``limits.max_prompt_tokens``
            (`router.tokens.MiniLMTokenCounter`); None skips the token limit.
        engine_timeout_s: The longest one engine call may take when the caller's deadline is
            later or not set (`engine_call_s`); then it ends Unavailable and is not counted.
    """

    def __init__(
        self,
        estimator: Estimator,
        policy: Policy,
        budget: BudgetController,
        engines: EngineClient,
        batcher: BatcherConfig | None = None,
        limits: Limits | None = None,
        metrics: RouterMetricsSink | None = None,
        count_tokens: Callable[[str], int] | None = None,
        engine_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S,
    ) -> None:
        if not (math.isfinite(engine_timeout_s) and engine_timeout_s > 0):
            raise ConfigError(
                f"engine_timeout_s is {engine_timeout_s}, must be a finite number of seconds > 0"
            )
        names = tuple(c.name for c in policy.config.choices)
        if tuple(estimator.choices) != names:
            raise ModelError(f"estimator choices {estimator.choices} differ from policy's {names}")
        if len(estimator.metric_names) != len(policy.config.metric_weights):
            raise ModelError(
                f"estimator has {len(estimator.metric_names)} metrics, policy weighs "
                f"{len(policy.config.metric_weights)}"
            )
        self.estimator = estimator
        self.policy = policy
        self.budget = budget
        # Recent AUTO decisions' utilities: the warm start solves lambda* on the policy's outcome.
        self.window = OutcomeWindow(policy.outcome, budget.config.score_window)
        budget.outcome_model = self.window.at
        # ... and tracking re-solves it on the latest ones (BudgetConfig.track_every)
        budget.recent_outcome_model = partial(self.window.at, last=budget.config.track_window)
        self.engines = engines
        self.limits = limits or Limits()
        self.metrics = metrics
        self.count_tokens = count_tokens
        self.engine_timeout_s = engine_timeout_s
        on_batch = metrics.batch if metrics is not None else None
        self.batcher: MicroBatcher[_Queued, RouteDecision] = MicroBatcher(
            self._decide_batch, batcher, on_batch=on_batch
        )
        self._down: set[str] = set()
        choices = policy.config.choices
        self.edge_default = choices[policy.edge_index]
        self.cloud_default = choices[policy.cloud_index]

    # ----- lifecycle and health

    @property
    def engine_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.engine for c in self.policy.config.choices))

    async def close(self) -> None:
        """Stops accepting prompts and answers every accepted one."""
        await self.batcher.close()

    def set_engine_ready(self, engine: str, ready: bool) -> None:
        """Marks an engine up or down; AUTO decisions avoid a down cloud engine (fallback)."""
        if ready and engine in self._down:
            log.info("engine %s is ready again", engine)
            self._down.discard(engine)
        elif not ready and engine not in self._down:
            log.warning("engine %s is unavailable", engine)
            self._down.add(engine)

    async def readiness(self, timeout_s: float = 1.0) -> Readiness:
        """Asks the estimator and every engine whether they are ready; updates the down set."""

        async def engine_ready(name: str) -> bool:
            try:
                return bool(await self.engines.is_model_ready(name, timeout_s=timeout_s))
            except RouterError:
                return False

        names = self.engine_names
        results = await asyncio.gather(self.estimator.ready(), *(engine_ready(n) for n in names))
        engines = dict(zip(names, results[1:]))
        for name, ready in engines.items():
            self.set_engine_ready(name, ready)
        return Readiness(bool(results[0]), engines, self.edge_default.engine)

    async def warm_start(self, prompts: Sequence[str]) -> float:
        """Sets lambda from the estimator's scores on ``prompts`` (see `BudgetController`)."""
        q = await self.estimator.predict(list(prompts))
        u = self.policy.utilities(q)
        self.window.add(u)
        # if_cold: replicas sharing a store start one after another; the first warm start stands
        return self.budget.warm_start(self.policy.scores_from_utilities(u), if_cold=True)

    async def sample_window(self, prompts: Sequence[str]) -> OutcomeWindow:
        """The policy's outcomes on ``prompts`` alone, for `calibrate` on a chosen sample of
        traffic; the router's own window and lambda stay as they are."""
        window = OutcomeWindow(self.policy.outcome, max(1, len(prompts)))
        window.add(self.policy.utilities(await self.estimator.predict(list(prompts))))
        return window

    def calibrate(
        self,
        target_rate: float,
        tau_decisions: float,
        max_eta: float,
        window: OutcomeWindow | None = None,
    ) -> BudgetCalibration:
        """lambda* for ``target_rate`` on recent traffic (or on ``window``, from
        `sample_window`), and the eta that recovers from a shift in ``tau_decisions`` counted
        decisions (`calibration.calibrate_budget`); apply it with `set_budget`. Needs decisions
        in the window (the warm start puts its prompts in the router's)."""
        window = self.window if window is None else window
        return calibrate_budget(
            lambda lam: window.at(lam)[0],
            target_rate,
            tau_decisions,
            self.budget.view().lambda_max,
            max_eta,
        )

    # ----- budget

    def budget_snapshot(self) -> BudgetSnapshot:
        """The budget state (a shared store's: raises Unavailable while it cannot be reached)."""
        return self.budget.snapshot()

    def set_budget(self, **changes: Any) -> BudgetSnapshot:
        """`BudgetController.set_target` (target_rate, target_cost, eta, lambda_max, multiplier)."""
        return self.budget.set_target(**changes)

    # ----- routing

    async def route(
        self,
        prompts: Sequence[str],
        target: Target = "auto",
        dry_run: bool = False,
        timeout_s: float | None = None,
    ) -> list[RouteDecision]:
        """Decides the choice for each prompt without generating; counts unless ``dry_run``."""
        self.limits.check_count(len(prompts))
        for prompt in prompts:
            self.limits.check_prompt(prompt, self.count_tokens)
        if target not in ("auto", "edge", "cloud"):
            raise InvalidRequest(f"target is {target!r}, expected auto, edge or cloud")
        deadline_s = _deadline(timeout_s)
        decisions = await asyncio.gather(
            *(self._decide(p, target, deadline_s, count_now=not dry_run) for p in prompts)
        )
        return [replace(d, index=i) for i, d in enumerate(decisions)]

    async def generate(self, item: GenerateItem, timeout_s: float | None = None) -> GenerateResult:
        """Routes one prompt and generates its image on the chosen engine."""
        item.check(self.limits, self.count_tokens)
        start_s = time.perf_counter()
        deadline_s = _deadline(timeout_s)
        decision = await self._decide(item.prompt, item.target, deadline_s, count_now=False)
        choice, fallback = decision.choice, decision.fallback
        steps = item.steps if item.steps is not None else choice.steps
        t0 = time.perf_counter()
        try:
            image = await self._generate(choice.engine, item, steps, deadline_s)
        except Unavailable as e:
            if item.target != "auto" or choice.engine == self.edge_default.engine:
                raise
            log.warning("%s unavailable, falling back to %s: %s", choice.name, self.edge_default, e)
            self.set_engine_ready(choice.engine, False)
            choice, fallback = self.edge_default, True
            steps = item.steps if item.steps is not None else choice.steps
            image = await self._generate(choice.engine, item, steps, deadline_s)
        t1 = time.perf_counter()
        png = _encode_png(image)
        t2 = time.perf_counter()
        counted = not (decision.forced or fallback)
        cloud = choice.engine == self.cloud_default.engine
        self.budget.observe([cloud], [choice.cost], counted=[counted])
        timings = replace(
            decision.timings,
            generate_ms=(t1 - t0) * 1e3,
            encode_ms=(t2 - t1) * 1e3,
            total_ms=(t2 - start_s) * 1e3,
        )
        self._report("generate", t1 - t0)
        self._report("encode", t2 - t1)
        decision = replace(
            decision,
            choice=choice,
            steps=steps,
            cost=choice.cost,
            counted=counted,
            fallback=fallback,
            timings=timings,
        )
        return GenerateResult(png, int(image.shape[1]), int(image.shape[0]), decision)

    async def generate_many(
        self, items: Sequence[GenerateItem], timeout_s: float | None = None
    ) -> AsyncIterator[tuple[int, GenerateResult | RouterError]]:
        """Generates every item concurrently; yields (index, result or error) as each is ready.

        One item's failure (validation included) is yielded as its error; the rest go on.
        """
        self.limits.check_count(len(items))

        async def one(i: int, item: GenerateItem) -> tuple[int, GenerateResult | RouterError]:
            try:
                return i, await self.generate(item, timeout_s)
            except RouterError as e:
                return i, e
            except Exception as e:  # a bug: report it on this item, keep the stream alive
                log.exception("generating item %d failed", i)
                return i, ModelError(f"internal error: {e!r}")

        tasks = [asyncio.ensure_future(one(i, it)) for i, it in enumerate(items)]
        try:
            for next_done in asyncio.as_completed(tasks):
                index, outcome = await next_done
                yield (
                    index,
                    (
                        replace(outcome, decision=replace(outcome.decision, index=index))
                        if isinstance(outcome, GenerateResult)
                        else outcome
                    ),
                )
        finally:
            for task in tasks:
                task.cancel()

    # ----- internals

    async def _decide(
        self, prompt: str, target: Target, deadline_s: float | None, count_now: bool
    ) -> RouteDecision:
        queued = _Queued(prompt, target, time.perf_counter(), count_now)
        if deadline_s is None:
            return await self.batcher.submit(queued)
        remaining_s = deadline_s - time.monotonic()
        try:
            return await asyncio.wait_for(self.batcher.submit(queued), max(remaining_s, 0.0))
        except TimeoutError as e:
            raise DeadlineExceeded("the deadline passed while the prompt was being routed") from e

    async def _generate(
        self, engine: str, item: GenerateItem, steps: int, deadline_s: float | None
    ) -> np.ndarray:
        remaining_s = None if deadline_s is None else deadline_s - time.monotonic()
        if remaining_s is not None and remaining_s <= 0:
            raise DeadlineExceeded(f"the deadline passed before {engine} was called")
        call_s, by_router = engine_call_s(remaining_s, self.engine_timeout_s)
        started_s = time.monotonic()
        call = self.engines.generate(
            engine,
            [item.prompt],
            [item.seed],
            steps=steps,
            guidance=item.guidance,
            timeout_s=call_s,
        )
        # The engine client is told the limit too; wait_for makes sure the call is cancelled
        # here when it passes, whatever the client does with it. Whichever of the two fires
        # first, the caller sees DEADLINE_EXCEEDED only when its own deadline passed.
        try:
            images = await asyncio.wait_for(call, call_s)
        except (TimeoutError, DeadlineExceeded) as e:
            if by_router:
                raise Unavailable(
                    f"{engine} did not answer within engine_timeout_s={self.engine_timeout_s:g} s "
                    f"(waited {time.monotonic() - started_s:.1f} s; the caller's deadline is "
                    f"{'not set' if remaining_s is None else 'later'})"
                ) from e
            if isinstance(e, DeadlineExceeded):
                raise
            raise DeadlineExceeded(f"the deadline passed while {engine} was generating") from e
        return images[0]

    async def _decide_batch(self, items: list[_Queued]) -> list[RouteDecision | RouterError]:
        start_s = time.perf_counter()
        auto = [i for i, it in enumerate(items) if it.target == "auto"]
        forced = [i for i, it in enumerate(items) if it.target != "auto"]
        out: list[RouteDecision | RouterError | None] = [None] * len(items)
        q = None
        if auto:
            try:
                q = await self.estimator.predict([items[i].prompt for i in auto])  # (A, M, K)
            except RouterError as e:  # fails the AUTO prompts; forced ones need no estimate
                log.warning("the estimator failed on %d prompts: %s", len(auto), e)
                for i in auto:
                    out[i] = e
        estimated_s = time.perf_counter()
        lam = self.budget.multiplier
        if q is not None:
            decisions = self.policy.decide(q, lam, "auto")
            self.budget.record_scores(decisions.scores)
            self.window.add(decisions.utilities)
            for row, i in enumerate(auto):
                out[i] = self._decision(decisions, row, q[row])
        if forced:
            decisions = self.policy.decide(None, lam, [items[i].target for i in forced])
            for row, i in enumerate(forced):
                out[i] = self._decision(decisions, row, None)
        decided_s = time.perf_counter()
        final: list[RouteDecision | RouterError] = []
        for it, d in zip(items, out):
            assert d is not None
            if isinstance(d, RouterError):
                final.append(d)
                continue
            timings = Timings(
                queue_ms=(start_s - it.enqueued_s) * 1e3,
                estimate_ms=(estimated_s - start_s) * 1e3,
                decide_ms=(decided_s - estimated_s) * 1e3,
            )
            d = replace(d, counted=it.count_now and d.counted, timings=timings)
            log.debug(
                "routed %r -> %s score=%.4g lambda=%.4g forced=%s fallback=%s",
                it.prompt[:60],
                d.choice.name,
                d.score,
                d.multiplier,
                d.forced,
                d.fallback,
            )
            final.append(d)
        now = [
            (d, it) for d, it in zip(final, items) if it.count_now and isinstance(d, RouteDecision)
        ]
        if now:
            self.budget.observe(
                [d.choice.engine == self.cloud_default.engine for d, _ in now],
                [d.cost for d, _ in now],
                counted=[d.counted for d, _ in now],
            )
        self._report("queue", start_s - min(it.enqueued_s for it in items))
        self._report("estimate", estimated_s - start_s)
        self._report("decide", decided_s - estimated_s)
        return final

    def _decision(self, decisions: Any, row: int, q: np.ndarray | None) -> RouteDecision:
        choice = decisions.choice(row)
        is_forced = bool(decisions.forced[row])
        fallback = not is_forced and choice.engine in self._down and choice != self.edge_default
        if fallback:
            choice = self.edge_default
        evaluations: tuple[ChoiceEvaluation, ...] = ()
        if q is not None:
            names = self.estimator.metric_names
            evaluations = tuple(
                ChoiceEvaluation(
                    choice=c,
                    quality={k: float(v) for k, v in zip(names, q[m])},
                    utility=float(decisions.utilities[row, m]),
                    objective=float(decisions.objectives[row, m]),
                )
                for m, c in enumerate(self.policy.config.choices)
            )
        return RouteDecision(
            choice=choice,
            steps=choice.steps,
            score=float(decisions.scores[row]),
            utility_gap=float(decisions.utility_gaps[row]),
            multiplier=decisions.multiplier,
            cost=choice.cost,
            counted=not (is_forced or fallback),
            forced=is_forced,
            fallback=fallback,
            evaluations=evaluations,
        )

    def _report(self, stage: str, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.stage(stage, seconds)


def engine_call_s(remaining_s: float | None, engine_timeout_s: float) -> tuple[float, bool]:
    """How long an engine call may take: the caller's remaining deadline or the router's own
    ``engine_timeout_s``, whichever is shorter; and True when the router's limit is the shorter
    (or the caller sent no deadline), so that its passing is the engine's fault, not the
    caller's."""
    if remaining_s is None or engine_timeout_s < remaining_s:
        return engine_timeout_s, True
    return remaining_s, False


def _deadline(timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise DeadlineExceeded(f"the deadline passed {-timeout_s:.3f} s before the call began")
    return time.monotonic() + timeout_s


def _encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()
