"""Group commit: the writes of concurrent messages go to PostgreSQL as one statement.

While one batch is being written, new items gather; when it returns, they go together. Under
load a batch holds hundreds of items; at rest, one item goes at once (no timer to wait for).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - item
R = TypeVar("R")  # result


class Batcher(Generic[I, R]):
    """Calls ``write(items)`` with everything submitted since the last call.

    ``write`` returns one result per item. When it raises an error ``transient`` is true of
    (the database away), the items ``keep`` is true of are kept and written again later
    (results that must not be lost, such as a send that Meta accepted); the waiters of the
    others get the error. Any other error goes to every waiter of the batch: nothing is kept
    that could fail every later batch again.
    """

    def __init__(
        self,
        write: Callable[[Sequence[I]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 500,
        concurrency: int = 2,
        keep: Callable[[I], bool] | None = None,
        transient: Callable[[BaseException], bool] = lambda exc: True,
        retry_interval: float = 1.0,
        on_error: Callable[[BaseException], None] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._write = write
        self._max = max_batch
        self._slots = self.concurrency = concurrency
        self._keep = keep
        self._transient = transient
        self._retry_interval = retry_interval
        self._on_error = on_error
        self.on_batch = on_batch  # (items, seconds) of each batch written: for metrics
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._writing: list[list[tuple[I, asyncio.Future[R]]]] = []  # batches being written
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once, not per item

    def __len__(self) -> int:
        return len(self._pending)

    def held(self, which: Callable[[I], bool]) -> int:
        """Items ``which`` is true of, queued or being written (read at scrape time)."""
        queued = sum(1 for item, _ in self._pending if which(item))
        return queued + sum(1 for batch in self._writing for item, _ in batch if which(item))

    def submit(self, item: I) -> asyncio.Future[R]:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        self._kick()
        return future

    def _kick(self) -> None:
        while self._pending and self._running < self._slots:
            batch, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._running += 1
            task = asyncio.create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        retry = False
        self._writing.append(batch)
        started = time.perf_counter()
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            # Stopped mid-write (by ``close``): what must be kept goes back, for ``close`` to name.
            self._pending[:0] = [(i, f) for i, f in batch if self._keep and self._keep(i)]
            raise
        except Exception as exc:  # noqa: BLE001 - any error fails or keeps the batch
            transient = self._transient(exc)
            if self._on_error is not None and transient:
                self._on_error(exc)
            kept = []
            for item, future in batch:
                if transient and self._keep is not None and self._keep(item):
                    if not future.cancelled():
                        kept.append((item, future))
                elif not future.done():
                    future.set_exception(exc)
            if kept:
                self._pending[:0] = kept
                retry = True
        else:
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._running -= 1
            self._writing.remove(batch)
        if retry:
            await asyncio.sleep(self._retry_interval)
        self._kick()

    async def close(self, grace: float = 5.0) -> list[I]:
        """Wait for what is queued to be written (up to ``grace`` seconds), then stop.

        Returns the items that were never written (kept through an outage that outlasted the
        grace), so the caller can say which.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self._tasks or self._pending) and (left := deadline - loop.time()) > 0:
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=left)
            else:
                await asyncio.sleep(min(left, 0.05))
                self._kick()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left_over, self._pending = self._pending, []
        for _, future in left_over:
            future.cancel()
        return [item for item, _ in left_over]


class Waits:
    """Waits on futures for at most ``timeout`` seconds each, one timer for all of them.

    ``asyncio.wait_for(asyncio.shield(future), timeout)`` made a timer, two futures and three
    callbacks per wait: 3 µs of each message's finish. Here a wait is one future and one
    callback, and one timer, re-armed about once per ``timeout``, ends the waits that ran out.
    A waiter that goes away (cancelled) never cancels the future it waited on.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._waiting: dict[asyncio.Future[bool], float] = {}  # waiter: deadline, oldest first
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, future: asyncio.Future[Any]) -> bool:
        """True once ``future`` is done (whatever its result), False if ``timeout`` ran out."""
        if future.done():
            return True
        loop = future.get_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        deadline = loop.time() + self._timeout
        self._waiting[waiter] = deadline
        future.add_done_callback(partial(_wake, waiter))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)
        try:
            return await waiter
        finally:
            del self._waiting[waiter]

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for waiter, deadline in self._waiting.items():  # oldest first
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                return
            if not waiter.done():
                waiter.set_result(False)


def _wake(waiter: asyncio.Future[bool], _: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(True)
