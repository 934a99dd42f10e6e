"""The ``t2i_router.v1.Router`` gRPC servicer (grpc.aio): converts messages, delegates to `Router`.

Nothing here decides anything. Each rpc converts its request into core types (unknown enum
values are refused here, as the core never sees proto enums), passes the caller's remaining
deadline (``context.time_remaining()``) on, and converts the answer back. Errors are mapped to
gRPC status codes in one place, `status_of`: a `RouterError` answers with its ``grpc_code``,
anything else is a bug and answers INTERNAL (logged with its traceback).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from t2i_router.errors import InvalidRequest, RouterError
from t2i_router.router.budget import BudgetSnapshot
from t2i_router.router.core import Router
from t2i_router.router.metrics import RouterMetrics
from t2i_router.router.policy import Target
from t2i_router.router.types import GenerateItem, GenerateResult, RouteDecision
from t2i_router_client import router_pb2, router_pb2_grpc

__all__ = ["RouterServicer", "status_of"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_TARGETS: dict[int, Target] = {
    router_pb2.TARGET_UNSPECIFIED: "auto",
    router_pb2.TARGET_AUTO: "auto",
    router_pb2.TARGET_EDGE: "edge",
    router_pb2.TARGET_CLOUD: "cloud",
}


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one mapping from an exception to the gRPC status and message a caller sees."""
    if isinstance(error, RouterError):
        return grpc.StatusCode[error.grpc_code], str(error)
    log.error("unexpected error", exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"


def _target(value: int) -> Target:
    try:
        return _TARGETS[value]
    except KeyError:
        raise InvalidRequest(f"target is {value}, not a t2i_router.v1.Target value") from None


def _item(request: router_pb2.GenerateRequest) -> GenerateItem:
    return GenerateItem(
        prompt=request.prompt,
        seed=request.seed,
        steps=request.steps if request.HasField("steps") else None,
        guidance=request.guidance if request.HasField("guidance") else None,
        target=_target(request.target),
    )


def _decision_message(d: RouteDecision) -> router_pb2.RouteDecision:
    t = d.timings
    return router_pb2.RouteDecision(
        engine=d.choice.engine,
        steps=d.steps,
        score=d.score,
        counted=d.counted,
        choice=d.choice.name,
        evaluations=[
            router_pb2.ChoiceEvaluation(
                choice=e.choice.name,
                engine=e.choice.engine,
                steps=e.choice.steps,
                cost=e.choice.cost,
                predicted_quality=e.quality,
                utility=e.utility,
                objective=e.objective,
            )
            for e in d.evaluations
        ],
        utility_gap=d.utility_gap,
        multiplier=d.multiplier,
        cost=d.cost,
        timings=router_pb2.StageTimings(
            queue_ms=t.queue_ms,
            estimate_ms=t.estimate_ms,
            decide_ms=t.decide_ms,
            generate_ms=t.generate_ms,
            encode_ms=t.encode_ms,
            total_ms=t.total_ms,
        ),
        forced=d.forced,
        fallback=d.fallback,
        index=d.index,
    )


def _generate_message(result: GenerateResult) -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(
        png=result.png,
        decision=_decision_message(result.decision),
        width=result.width,
        height=result.height,
    )


def budget_message(s: BudgetSnapshot) -> router_pb2.GetBudgetResponse:
    """The budget state as the proto's GetBudgetResponse."""
    since = Timestamp()
    since.FromNanoseconds(int(s.since_unix_s * 1e9))
    return router_pb2.GetBudgetResponse(
        mode=router_pb2.BUDGET_MODE_RATE if s.mode == "rate" else router_pb2.BUDGET_MODE_COST,
        target_rate=s.target_rate,
        target_cost=s.target_cost,
        running_rate=s.running_rate,
        running_cost=s.running_cost,
        multiplier=s.multiplier,
        eta=s.eta,
        lambda_max=s.lambda_max,
        decisions=s.decisions,
        cloud_decisions=s.cloud_decisions,
        uncounted_decisions=s.uncounted_decisions,
        since=since,
        cost_scale=s.cost_scale,
        warm_started=s.warm_started,
        persisted=s.persisted,
        correction=s.correction,
    )


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Thin servicer over a `Router`.

    Args:
        router: The core every rpc delegates to.
        metrics: Counts requests by rpc, choice and status; None counts nothing.
    """

    def __init__(self, router: Router, metrics: RouterMetrics | None = None) -> None:
        self.router = router
        self.metrics = metrics

    async def _unary(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        call: Callable[[], Awaitable[Resp]],
        choices: Callable[[Resp], list[str]] = lambda _: [""],
    ) -> Resp:
        start_s = time.perf_counter()
        try:
            response = await call()
        except Exception as e:
            code, message = status_of(e)
            self._count(rpc, [""], code.name, start_s)
            await context.abort(code, message)
        self._count(rpc, choices(response), "OK", start_s)
        return response

    def _count(self, rpc: str, choices: list[str], status: str, start_s: float) -> None:
        if self.metrics is None:
            return
        for choice in choices:
            self.metrics.request(rpc, choice, status)
        self.metrics.request_seconds.labels(rpc).observe(time.perf_counter() - start_s)

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GenerateResponse:
        async def call() -> router_pb2.GenerateResponse:
            result = await self.router.generate(_item(request), context.time_remaining())
            return _generate_message(result)

        return await self._unary("Generate", context, call, lambda r: [r.decision.choice])

    async def GenerateBatch(
        self, request: router_pb2.GenerateBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.GenerateBatchResult]:
        start_s = time.perf_counter()
        items: list[GenerateItem | RouterError] = []
        for r in request.requests:
            try:
                items.append(_item(r))
            except RouterError as e:
                items.append(e)
        try:
            self.router.limits.check_count(len(items))
        except RouterError as e:
            code, message = status_of(e)
            self._count("GenerateBatch", [""], code.name, start_s)
            await context.abort(code, message)
        # Items whose conversion failed are answered at once; the rest go to the core.
        valid = [(i, it) for i, it in enumerate(items) if isinstance(it, GenerateItem)]
        for i, it in enumerate(items):
            if isinstance(it, RouterError):
                yield self._item_error(i, it)
        if valid:
            stream = self.router.generate_many([it for _, it in valid], context.time_remaining())
            try:
                async for k, outcome in stream:
                    index = valid[k][0]
                    if isinstance(outcome, RouterError):
                        yield self._item_error(index, outcome)
                        continue
                    message = _generate_message(outcome)
                    message.decision.index = index
                    if self.metrics is not None:
                        self.metrics.request("GenerateBatch", outcome.decision.choice.name, "OK")
                    yield router_pb2.GenerateBatchResult(index=index, result=message)
            except Exception as e:
                code, message = status_of(e)
                await context.abort(code, message)
        if self.metrics is not None:
            self.metrics.request_seconds.labels("GenerateBatch").observe(
                time.perf_counter() - start_s
            )

    def _item_error(self, index: int, error: RouterError) -> router_pb2.GenerateBatchResult:
        code, message = status_of(error)
        if self.metrics is not None:
            self.metrics.request("GenerateBatch", "", code.name)
        return router_pb2.GenerateBatchResult(
            index=index, error=router_pb2.ItemError(code=code.name, message=message)
        )

    async def Route(
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        async def call() -> router_pb2.RouteResponse:
            decisions = await self.router.route(
                list(request.prompts),
                _target(request.target),
                dry_run=request.dry_run,
                timeout_s=context.time_remaining(),
            )
            return router_pb2.RouteResponse(decisions=[_decision_message(d) for d in decisions])

        return await self._unary("Route", context, call, lambda r: [d.choice for d in r.decisions])

    async def GetBudget(
        self, request: router_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.GetBudgetResponse:
        async def call() -> router_pb2.GetBudgetResponse:
            return budget_message(self.router.budget_snapshot())

        return await self._unary("GetBudget", context, call)

    async def SetBudget(
        self, request: router_pb2.SetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SetBudgetResponse:
        async def call() -> router_pb2.SetBudgetResponse:
            changes = {
                name: getattr(request, name)
                for name in ("target_rate", "target_cost", "eta", "multiplier", "lambda_max")
                if request.HasField(name)
            }
            for name, value in changes.items():
                if not math.isfinite(value):
                    raise InvalidRequest(f"{name} is {value}, must be a finite number")
            snapshot = self.router.set_budget(**changes)
            return router_pb2.SetBudgetResponse(budget=budget_message(snapshot))

        return await self._unary("SetBudget", context, call)
