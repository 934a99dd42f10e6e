"""MicroBatcher: gathering, size and delay limits, per-caller results and errors, back-pressure,
cancellation and draining on close."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from t2i_router.errors import InvalidRequest, ModelError, ResourceExhausted, Unavailable
from t2i_router.router.batching import BatcherConfig, MicroBatcher


class Recorder:
    """A batch function that doubles its items and records every batch it saw."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(f"odd {i}") if i < 0 else 2 * i for i in items]


async def test_concurrent_submits_are_gathered_into_one_call() -> None:
    fn = Recorder()
    async with MicroBatcher(fn, BatcherConfig(max_batch_size=8, max_delay_s=0.05)) as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert results == [0, 2, 4, 6, 8]
    assert fn.batches == [[0, 1, 2, 3, 4]]


async def test_a_full_batch_is_sent_without_waiting_for_the_delay() -> None:
    fn = Recorder()
    async with MicroBatcher(fn, BatcherConfig(max_batch_size=4, max_delay_s=30.0)) as batcher:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(4))), 5.0)
    assert time.perf_counter() - start < 5.0
    assert fn.batches == [[0, 1, 2, 3]]


async def test_a_partial_batch_is_sent_after_max_delay() -> None:
    fn = Recorder()
    async with MicroBatcher(fn, BatcherConfig(max_batch_size=64, max_delay_s=0.05)) as batcher:
        start = time.perf_counter()
        assert await batcher.submit(3) == 6
        waited = time.perf_counter() - start
    assert 0.04 <= waited < 2.0


async def test_with_no_delay_items_queued_behind_a_running_batch_form_the_next_one() -> None:
    """The default (max_delay_s 0): a lone item goes out at once, and what arrives while that
    batch runs waits for the batch slot, then goes out together."""
    gate = asyncio.Event()
    fn = Recorder(gate)
    async with MicroBatcher(fn, BatcherConfig(max_batch_size=8)) as batcher:
        assert batcher.config.max_delay_s == 0
        first = asyncio.create_task(batcher.submit(0))
        while not fn.batches:  # dispatched alone, without waiting for company
            await asyncio.sleep(0)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 6)]
        while batcher.queue_depth < 5:
            await asyncio.sleep(0)
        assert fn.batches == [[0]]  # the slot is busy: the five wait
        gate.set()
        assert await asyncio.wait_for(asyncio.gather(first, *rest), 5.0) == [0, 2, 4, 6, 8, 10]
    assert fn.batches == [[0], [1, 2, 3, 4, 5]]


async def test_batches_never_exceed_max_batch_size() -> None:
    fn = Recorder()
    config = BatcherConfig(max_batch_size=4, max_delay_s=0.01)
    async with MicroBatcher(fn, config) as batcher:
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [2 * i for i in range(10)]
    assert [len(b) for b in fn.batches] == [4, 4, 2]


async def test_each_caller_gets_its_own_exception() -> None:
    fn = Recorder()
    async with MicroBatcher(fn, BatcherConfig(max_delay_s=0.01)) as batcher:
        results = await asyncio.gather(
            batcher.submit(1), batcher.submit(-1), batcher.submit(2), return_exceptions=True
        )
    assert results[0] == 2 and results[2] == 4
    assert isinstance(results[1], ValueError) and "odd -1" in str(results[1])
    assert len(fn.batches) == 1


async def test_a_failing_batch_function_fails_every_caller_of_that_batch() -> None:
    async def broken(items: list[int]) -> list[int]:
        raise Unavailable("triton is down")

    async with MicroBatcher(broken, BatcherConfig(max_delay_s=0.01)) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
    assert all(isinstance(r, Unavailable) for r in results)


async def test_a_wrong_number_of_results_is_a_model_error() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async with MicroBatcher(short, BatcherConfig(max_delay_s=0.01)) as batcher:
        results = await asyncio.gather(
            *(batcher.submit(i) for i in range(3)), return_exceptions=True
        )
    assert all(isinstance(r, ModelError) and "2 results for 3 items" in str(r) for r in results)


async def test_a_full_queue_refuses_at_once_quoting_the_limit() -> None:
    gate = asyncio.Event()
    fn = Recorder(gate)
    config = BatcherConfig(max_batch_size=1, max_delay_s=0.0, max_queue=2)
    async with MicroBatcher(fn, config) as batcher:
        running = asyncio.create_task(batcher.submit(0))
        while not fn.batches:  # item 0 is in the (blocked) batch function
            await asyncio.sleep(0.001)
        waiting = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 2
        with pytest.raises(ResourceExhausted, match="limit is max_queue=2"):
            await batcher.submit(3)
        gate.set()
        assert await asyncio.gather(running, *waiting) == [0, 2, 4]


async def test_a_cancelled_waiting_caller_frees_its_slot_and_is_never_sent() -> None:
    gate = asyncio.Event()
    fn = Recorder(gate)
    config = BatcherConfig(max_batch_size=1, max_delay_s=0.0, max_queue=2)
    async with MicroBatcher(fn, config) as batcher:
        running = asyncio.create_task(batcher.submit(0))
        while not fn.batches:
            await asyncio.sleep(0.001)
        doomed = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        late = asyncio.create_task(batcher.submit(3))  # the freed slot takes a new item
        await asyncio.sleep(0.01)
        gate.set()
        assert await asyncio.gather(running, kept, late) == [0, 4, 6]
    assert doomed.cancelled()
    assert [1] not in fn.batches


async def test_close_drains_every_accepted_item_and_then_refuses() -> None:
    fn = Recorder()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        fn, BatcherConfig(max_batch_size=3, max_delay_s=10.0)
    )
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(7)]
    await asyncio.sleep(0.01)
    await asyncio.wait_for(batcher.close(), 5.0)  # no 10 s wait: closing flushes partial batches
    assert [t.result() for t in tasks] == [2 * i for i in range(7)]
    assert sorted(i for b in fn.batches for i in b) == list(range(7))
    with pytest.raises(Unavailable, match="closed"):
        await batcher.submit(8)


async def test_concurrent_batches_run_in_parallel_up_to_the_limit() -> None:
    active, peak = 0, 0

    async def slow(items: list[int]) -> list[int]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return items

    config = BatcherConfig(max_batch_size=1, max_delay_s=0.0, max_concurrent_batches=2)
    sizes: list[int] = []
    async with MicroBatcher(slow, config, on_batch=sizes.append) as batcher:
        assert await asyncio.gather(*(batcher.submit(i) for i in range(6))) == list(range(6))
    assert peak == 2 and sizes == [1] * 6


def test_config_rejects_bad_limits_quoting_them() -> None:
    with pytest.raises(InvalidRequest, match="max_batch_size is 0"):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(InvalidRequest, match="max_queue is 0"):
        BatcherConfig(max_queue=0)
    with pytest.raises(InvalidRequest, match="max_delay_s is -1"):
        BatcherConfig(max_delay_s=-1)


def test_router_core_imports_neither_grpc_nor_tritonclient() -> None:
    code = (
        "import sys; import t2i_router.router.policy, t2i_router.router.budget, "
        "t2i_router.router.batching, t2i_router.router.simulate; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'tritonclient')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
