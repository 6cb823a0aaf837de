"""The status consumer (SPEC §13): ``inbound-webhooks`` into the ledger, in batches.

For each batch of webhook bodies: customers' messages are forwarded to ``inbound-messages``
(confirmed), the statuses of all of them are merged and applied, then the bodies are acked.
Nothing is acked before its statuses are written and its messages confirmed: while the
ledger is away, the batch is tried again and the rest wait in the queue (prefetch bounds what
this process holds). Applying is idempotent, so a body seen twice (a broker cut took its ack)
changes nothing. A body that is no webhook goes to ``inbound-webhooks-failed`` with its
reason; one the database refuses (any error but an outage) is found by halving and only it
goes there. Every second, statuses no send has tied yet are tried again (``retie``).
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from dataclasses import dataclass
from typing import Final, Protocol

import aio_pika
import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from ..ledger.statuses import Applied, Tied
from ..logs import get_logger
from ..seams import StatusStore
from ..settings import Settings
from .forward import BROKER_ERRORS, Forwarder
from .payload import UnreadableWebhook, Webhook, merge, read

log = get_logger("statuses")

#: The database is away or overloaded: wait and try again. Any other error is a statement
#: this batch makes fail (a refused row, a time limit): halve it until the body is found.
_OUTAGE: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InsufficientResourcesError,
    asyncpg.TransactionRollbackError,  # a deadlock again: crossed batches, not this one
    asyncpg.QueryCanceledError,  # the statement timeout: a part is 5,000 statuses at most,
)  # which take about 0.1 s, so a timeout says the database is overloaded
_MAX_BATCH: Final = 1000
_RETIE_SECONDS: Final = 1.0


class StatusObserver(Protocol):
    def applied(self, row: Applied) -> None:
        """A wamid's row after a batch (``row.changed``: a transition)."""

    def tied(self, tie: Tied) -> None:
        """A status tied to its message by its callback data."""

    def inbound(self, count: int, *, forwarded: bool) -> None:
        """Customers' messages forwarded, or dropped by setting."""

    def ignored_values(self, count: int) -> None:
        """Webhook values with neither statuses nor messages."""

    def unreadable(self) -> None:
        """A body sent to the failed queue."""


@dataclass(slots=True)
class _Body:
    message: AbstractIncomingMessage
    webhook: Webhook


class StatusConsumer:
    """Reads ``inbound-webhooks`` until closed; one batch at a time, in delivery order."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        settings: Settings,
        store: StatusStore,
        observer: StatusObserver,
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._store = store
        self._observer = observer
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._channels: list[AbstractChannel] = []
        self._forwarder: Forwarder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._settled: set[int] = set()  # ids of this batch's deliveries already settled
        self.batches = 0  # written batches, for tests and the bench

    async def start(self) -> None:
        s = self._settings
        consume = await self._connection.channel()
        await consume.set_qos(prefetch_count=s.statuses_prefetch)
        publish = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        self._channels = [consume, publish]
        self._forwarder = Forwarder(
            s,
            await publish.get_exchange(s.webhook_exchange, ensure=True),
            await publish.get_exchange(s.dead_letter_exchange, ensure=True),
            self._stopping,
        )
        self._queue = await consume.declare_queue(s.webhook_queue, passive=True)
        self._tasks = [
            asyncio.create_task(self._run(), name="status-consumer"),
            asyncio.create_task(self._retie(), name="status-retie"),
        ]
        self._tag = await self._queue.consume(self._inbox.put, no_ack=False)
        log.info("consuming_statuses", queue=s.webhook_queue, prefetch=s.statuses_prefetch)

    async def close(self, grace: float = 5.0) -> None:
        """Stop taking bodies, finish the batch in hand (up to ``grace``), hand back the rest."""
        self._stopping.set()
        if self._queue is not None and self._tag is not None:
            with suppress(*BROKER_ERRORS, TimeoutError):
                await asyncio.wait_for(self._queue.cancel(self._tag), 5)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1)
        for channel in self._channels:  # what was not acked goes back to the queue
            with suppress(*BROKER_ERRORS, TimeoutError):
                await asyncio.wait_for(channel.close(), 5)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._next_batch()
            if not batch:
                continue
            self._settled.clear()
            try:
                await self._handle(batch)
            except Exception:  # a bug: said so; the bodies go back and the consumer goes on
                log.exception("statuses_batch_failed", bodies=len(batch))
                for message in batch:
                    if id(message) not in self._settled:
                        with suppress(*BROKER_ERRORS, aio_pika.exceptions.MessageProcessError):
                            await message.nack(requeue=True)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)

    async def _retie(self) -> None:
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), _RETIE_SECONDS)
            try:
                for tie in await self._store.retie():
                    self._observer.tied(tie)
            except (*_OUTAGE, asyncpg.PostgresError) as exc:  # the batches say it louder
                log.debug("statuses_retie_failed", error=type(exc).__name__)

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        """What came within the batch window after the first body, up to the batch size."""
        first = await self._take(None)
        if first is None:
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        window = loop.time() + self._settings.statuses_batch_seconds
        # No more can come than the prefetch: a batch that holds it is closed at once.
        most = min(_MAX_BATCH, self._settings.statuses_prefetch)
        while len(batch) < most:
            if not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
                continue
            left = window - loop.time()
            taken = await self._take(left) if left > 0 else None
            if taken is None:
                break
            batch.append(taken)
        return batch

    async def _take(self, within: float | None) -> AbstractIncomingMessage | None:
        """The next body, or None after ``within`` seconds or when stopping. Never drops one that
        arrived as the wait ended (``wait_for`` on a queue's ``get`` can, before 3.12)."""
        getter = asyncio.ensure_future(self._inbox.get())
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([getter, stop], timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            getter.cancel()
            await asyncio.wait([getter])
        return None if getter.cancelled() else getter.result()

    async def _handle(self, batch: list[AbstractIncomingMessage]) -> None:
        assert self._forwarder is not None
        bodies: list[_Body] = []
        for message in batch:
            try:
                bodies.append(_Body(message, read(message.body)))
            except UnreadableWebhook as exc:
                await self._dead(message, str(exc))
        for body in bodies:
            inbound = body.webhook.inbound
            if inbound and self._settings.inbound_messages:
                if not await self._forwarder.forward(inbound):
                    return  # stopping: nothing of this batch acked, all of it comes back
                forwarded = True
            else:
                forwarded = False
            for item in inbound:
                self._observer.inbound(item.count, forwarded=forwarded)
            if body.webhook.ignored:
                self._observer.ignored_values(body.webhook.ignored)
        await self._write(bodies)
        self.batches += 1

    async def _write(self, bodies: list[_Body]) -> bool:
        """Apply the statuses of ``bodies`` and ack them; False: stopping, nothing acked."""
        if not bodies:
            return True
        updates = merge([u for b in bodies for u in b.webhook.statuses])
        delay = 0.5
        while True:
            try:
                applied, ties = await self._store.apply(updates)
                break
            except _OUTAGE as exc:
                if self._stopping.is_set():
                    return False  # not acked: the bodies go back to the queue
                log.warning("statuses_waiting_for_ledger", error=f"{type(exc).__name__}"[:100])
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 5.0)
            except asyncpg.PostgresError as exc:
                if len(bodies) == 1:
                    await self._dead(bodies[0].message, f"the ledger refused it: {exc}")
                    return True
                half = len(bodies) // 2
                # The second half only after the first is acked: its ack covers the first's.
                return await self._write(bodies[:half]) and await self._write(bodies[half:])
        for row in applied:
            self._observer.applied(row)
        for tie in ties:
            self._observer.tied(tie)
        skipped = sum(b.webhook.skipped for b in bodies)
        if skipped:
            log.warning("statuses_skipped", count=skipped, reason="unreadable")
        # One frame for the batch: every earlier delivery is settled by now (bodies are
        # handled in delivery order, and those set aside were acked or nacked on the way).
        with suppress(*BROKER_ERRORS):
            await bodies[-1].message.ack(multiple=True)
        self._settled.update(id(b.message) for b in bodies)
        return True

    async def _dead(self, message: AbstractIncomingMessage, reason: str) -> None:
        assert self._forwarder is not None
        self._observer.unreadable()
        await self._forwarder.dead(message, reason)
        self._settled.add(id(message))
