"""An asyncio micro-batcher: many concurrent callers, one call of a batch function per batch.

Callers ``await batcher.submit(item)``; the batcher gathers the items waiting in its queue into a
batch of at most ``max_batch_size`` and calls ``batch_fn(items)`` once for it, as soon as the batch
is full or ``max_delay_s`` after its first item arrived, whichever comes first, and a batch slot
is free. With ``max_delay_s = 0`` (the default) a batch goes out as soon as a slot is free: a lone
item waits for nothing, and under load the batches are what queued while the previous batch ran
(as Triton's dynamic batcher with no queue delay). ``batch_fn``
returns one result per item, in order; an element that is an exception is raised to that item's
caller alone, and an exception raised by ``batch_fn`` itself goes to every caller of the batch.

- Back-pressure: at most ``max_queue`` items wait (not yet dispatched); beyond that `submit`
  raises `ResourceExhausted`, quoting the limit, at once.
- Cancellation: a caller cancelled while its item waits frees the slot and its item is never
  sent; a caller cancelled while its batch runs just does not get the result.
- Shutdown: `close` stops accepting (`Unavailable`) and drains: every accepted item is still
  batched and answered before it returns.

The batcher adds no timing to results; callers that report queue time (RouteDecision.timings)
stamp their items with ``time.perf_counter()`` and the batch function reads the stamp.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from t2i_router.errors import InvalidRequest, ModelError, ResourceExhausted, Unavailable

__all__ = ["BatchFn", "BatcherConfig", "MicroBatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: An async function from a batch of items to one result (or exception) per item, in order.
BatchFn = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


@dataclass(frozen=True)
class BatcherConfig:
    """Micro-batching settings.

    Attributes:
        max_batch_size: Most items in one call of the batch function (>= 1).
        max_delay_s: Longest an item waits for its batch to fill before it is sent (>= 0); 0
            sends whatever waits as soon as a batch slot is free.
        max_queue: Most items waiting to be batched; more are refused (>= 1).
        max_concurrent_batches: Batches that may run at once (>= 1); while all run, items wait.
    """

    max_batch_size: int = 32
    max_delay_s: float = 0.0
    max_queue: int = 1024
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidRequest(f"max_batch_size is {self.max_batch_size}, must be >= 1")
        if not self.max_delay_s >= 0:
            raise InvalidRequest(f"max_delay_s is {self.max_delay_s}, must be >= 0")
        if self.max_queue < 1:
            raise InvalidRequest(f"max_queue is {self.max_queue}, must be >= 1")
        if self.max_concurrent_batches < 1:
            raise InvalidRequest(
                f"max_concurrent_batches is {self.max_concurrent_batches}, must be >= 1"
            )


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued_s: float


class MicroBatcher(Generic[T, R]):
    """Gathers submitted items into batches for one async batch function.

    Args:
        batch_fn: ``async (items: list[T]) -> Sequence[R | BaseException]``, one result per item.
        config: Batch size, delay and queue limits.
        on_batch: Called with each batch's size before it runs (for metrics); must not raise.

    Use as ``async with MicroBatcher(fn, config) as batcher: await batcher.submit(x)``, or call
    `start` and `close` yourself (`submit` also starts it on first use).
    """

    def __init__(
        self,
        batch_fn: BatchFn[T, R],
        config: BatcherConfig | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config or BatcherConfig()
        self._batch_fn = batch_fn
        self._on_batch = on_batch
        self._queue: deque[_Pending[T, R]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def queue_depth(self) -> int:
        """Items waiting to be batched (not counting batches already running)."""
        return len(self._queue)

    def queue_full(self) -> ResourceExhausted | None:
        """The error `submit` would raise now for a full queue (quoting the limit), else None."""
        if len(self._queue) < self.config.max_queue:
            return None
        return ResourceExhausted(
            f"micro-batch queue holds {len(self._queue)} items, "
            f"limit is max_queue={self.config.max_queue}"
        )

    @property
    def running_batches(self) -> int:
        """Batches whose batch function is running now."""
        return len(self._running)

    @property
    def closed(self) -> bool:
        """Whether `close` was called (new items are refused)."""
        return self._closing

    async def start(self) -> None:
        """Starts the batching task on the running loop (idempotent)."""
        if self._closing:
            raise Unavailable("the micro-batcher is closed")
        if self._loop_task is None:
            self._wakeup = asyncio.Event()
            self._slots = asyncio.Semaphore(self.config.max_concurrent_batches)
            self._loop_task = asyncio.create_task(self._run_loop(), name="micro-batcher")

    async def submit(self, item: T) -> R:
        """Queues ``item`` and waits for its own result.

        Raises:
            ResourceExhausted: ``max_queue`` items are already waiting.
            Unavailable: The batcher is closed.
            Exception: Whatever the batch function raised for this item or its batch.
        """
        if self._closing:
            raise Unavailable("the micro-batcher is closed; not accepting new items")
        full = self.queue_full()
        if full is not None:
            raise full
        await self.start()
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop.time())
        self._queue.append(pending)
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # already dispatched: nothing to free
                self._queue.remove(pending)
            raise

    async def close(self) -> None:
        """Stops accepting items and waits until every accepted item is answered."""
        self._closing = True
        if self._loop_task is None:
            return
        assert self._wakeup is not None
        self._wakeup.set()
        await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def __aenter__(self) -> MicroBatcher[T, R]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run_loop(self) -> None:
        assert self._wakeup is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        size = self.config.max_batch_size
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # wait until the batch is full or its first item has waited max_delay_s
            while self._queue and len(self._queue) < size and not self._closing:
                remaining = self._queue[0].enqueued_s + self.config.max_delay_s - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            await self._slots.acquire()  # items keep queueing while every slot is busy
            batch: list[_Pending[T, R]] = []
            while self._queue and len(batch) < size:
                pending = self._queue.popleft()
                if not pending.future.done():  # skip callers cancelled meanwhile
                    batch.append(pending)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        assert self._slots is not None
        try:
            if self._on_batch is not None:
                self._on_batch(len(batch))
            try:
                results = await self._batch_fn([p.item for p in batch])
                if len(results) != len(batch):
                    raise ModelError(
                        f"batch function returned {len(results)} results for {len(batch)} items"
                    )
            except asyncio.CancelledError:
                for p in batch:
                    p.future.cancel()
                raise
            except Exception as e:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                return
            for p, result in zip(batch, results):
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)
        finally:
            self._slots.release()
