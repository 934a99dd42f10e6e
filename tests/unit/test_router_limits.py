"""Limits on the real grpc.aio server on a free loopback port (only Triton is faked): prompt
bytes and tokens, prompts per call, the queue bound, per-client concurrency, deadlines and
cancellation, each refusal quoting its limit and each ended call freeing its slots."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from router_fakes import FakeEngines, TinyQualityModel, make_router

from t2i_router.errors import ResourceExhausted
from t2i_router.router.guard import ClientLimiter
from t2i_router.router.server import RouterConfig, RouterService
from t2i_router.router.tokens import MiniLMTokenCounter
from t2i_router.router.types import Limits
from t2i_router_client import router_pb2, router_pb2_grpc

PROMPT = "a red circle"
# 22 words of one token each: 24 tokens with [CLS]/[SEP], the engines' MAX_TOKENS.
LONGEST = " ".join(["red"] * 22)


class BlockingModel(TinyQualityModel):
    """Holds every estimator batch until `release` is set, so prompts pile up in the queue."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def predict(self, prompts):
        self.started.set()
        self.release.wait(timeout=30)
        return super().predict(prompts)


@pytest.fixture(scope="module")
def counter() -> MiniLMTokenCounter:
    return MiniLMTokenCounter()


async def serve(limits: Limits | None = None, model=None, engines=None, **batcher):
    limits = limits or Limits()
    router = make_router(model=model, engines=engines or FakeEngines(), **batcher)
    router.limits = limits
    service = RouterService(
        RouterConfig(port=0, warm_start_prompts=0, grace_s=1, limits=limits), router
    )
    await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    return service, channel, router_pb2_grpc.RouterStub(channel)


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


async def until(condition, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_the_token_count_is_the_engines_tokenizers(counter) -> None:
    from transformers import AutoTokenizer

    from t2i_router.engines.text_encoder import MAX_TOKENS, default_encoder_path

    assert Limits().max_prompt_tokens == MAX_TOKENS == 24
    reference = AutoTokenizer.from_pretrained(str(default_encoder_path()), local_files_only=True)
    for prompt in (PROMPT, LONGEST, "Two tiny cyan hexagons, left of an ochre star.", "ünïcode"):
        assert counter(prompt) == len(reference(prompt)["input_ids"])
    assert counter(LONGEST) == 24 and counter(LONGEST + " red") == 25


async def test_prompt_bytes_tokens_and_counts_are_refused_quoting_the_limit(counter) -> None:
    service, channel, stub = await serve()
    service.router.count_tokens = counter
    try:
        cases = [
            (router_pb2.GenerateRequest(prompt="x" * 1025), "1025 bytes, the limit is 1024"),
            (router_pb2.GenerateRequest(prompt=LONGEST + " red"), "25 tokens with [CLS]/[SEP], "
             "the limit is 24"),
        ]  # fmt: skip
        for request, message in cases:
            error = await refused(stub.Generate(request))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in error.details()
        assert (await stub.Generate(router_pb2.GenerateRequest(prompt=LONGEST, target=2))).png
        error = await refused(stub.Route(router_pb2.RouteRequest(prompts=[PROMPT] * 257)))
        assert "257 prompts in one call, the limit is 256" in error.details()
        batch = router_pb2.GenerateBatchRequest(
            requests=[router_pb2.GenerateRequest(prompt=PROMPT)] * 257
        )
        error = await refused(stub.GenerateBatch(batch).read())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is 256" in error.details()
    finally:
        await channel.close()
        await service.stop()


def test_the_limiter_forgets_idle_clients() -> None:
    limiter = ClientLimiter(2)
    limiter.acquire("a")
    limiter.acquire("a")
    with pytest.raises(ResourceExhausted, match="max_concurrent_per_client=2"):
        limiter.acquire("a")
    limiter.acquire("b")
    for client in ("a", "a", "b"):
        limiter.release(client)
    assert limiter.in_flight() == 0 and limiter._in_flight == {}


async def test_per_client_concurrency_is_bounded_and_a_cancelled_call_frees_its_slot() -> None:
    engines = FakeEngines()
    engines.delay_s = 30.0  # calls stay in the engine until cancelled
    service, channel, stub = await serve(Limits(max_concurrent_per_client=2), engines=engines)
    request = router_pb2.GenerateRequest(prompt=PROMPT, target=2)
    try:
        calls = [stub.Generate(request) for _ in range(2)]
        await until(lambda: len(engines.calls) == 2)
        assert service.limiter.in_flight() == 2
        error = await refused(stub.Generate(request))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the limit is max_concurrent_per_client=2" in error.details()

        calls[0].cancel()
        await until(lambda: service.limiter.in_flight() == 1 and engines.cancelled == 1)
        engines.delay_s = 0.0
        assert (await stub.Generate(request)).png  # the freed slot takes a new call
        calls[1].cancel()
        await until(lambda: service.limiter.in_flight() == 0 and engines.cancelled == 2)
        assert service.router.budget_snapshot().uncounted_decisions == 1  # only the finished one
    finally:
        await channel.close()
        await service.stop()


async def test_a_full_queue_refuses_and_a_cancelled_call_leaves_the_queue() -> None:
    model = BlockingModel()
    service, channel, stub = await serve(model=model, max_queue=2, max_batch_size=1)
    request = router_pb2.RouteRequest(prompts=[PROMPT], dry_run=True)
    try:
        first = stub.Route(request)  # its batch runs, held in the estimator
        await asyncio.to_thread(model.started.wait, 5)
        queued = [stub.Route(request) for _ in range(2)]
        await until(lambda: service.router.batcher.queue_depth == 2)
        error = await refused(stub.Route(request))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit is max_queue=2" in error.details()
        assert service.limiter.in_flight() == 3

        queued[0].cancel()
        await until(
            lambda: service.router.batcher.queue_depth == 1 and service.limiter.in_flight() == 2
        )
        model.release.set()
        assert len((await first).decisions) == 1 and len((await queued[1]).decisions) == 1
        assert service.limiter.in_flight() == 0 and service.router.batcher.queue_depth == 0
    finally:
        model.release.set()
        await channel.close()
        await service.stop()


async def test_a_deadline_answers_deadline_exceeded_and_cancels_the_work() -> None:
    engines = FakeEngines()
    engines.delay_s = 30.0
    service, channel, stub = await serve(engines=engines)
    try:
        before = service.router.budget_snapshot()
        error = await refused(stub.Generate(router_pb2.GenerateRequest(prompt=PROMPT), timeout=0.5))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until(lambda: engines.cancelled == 1 and service.limiter.in_flight() == 0)
        assert 0 < engines.calls[0]["timeout_s"] <= 0.5  # the engine was told the deadline
        after = service.router.budget_snapshot()
        assert after.decisions == before.decisions  # nothing delivered, nothing counted
    finally:
        await channel.close()
        await service.stop()


async def test_the_server_enforces_the_deadline_itself() -> None:
    """The core's own wait, not just grpc's: the engine call ends at the deadline with
    DeadlineExceeded even when the caller would still wait."""
    from t2i_router.errors import DeadlineExceeded
    from t2i_router.router.types import GenerateItem

    engines = FakeEngines()
    engines.delay_s = 30.0
    router = make_router(engines=engines)
    with pytest.raises(DeadlineExceeded, match="while edge_small was generating"):
        await router.generate(GenerateItem(PROMPT, target="edge"), timeout_s=0.3)
    assert engines.cancelled == 1
    await router.close()


def test_message_size_is_configured_explicitly() -> None:
    assert RouterConfig().max_message_bytes == 4 * 1024 * 1024
    assert RouterConfig.from_env({"T2I_ROUTER_MAX_MESSAGE_BYTES": "65536"}).max_message_bytes == (
        65536
    )
