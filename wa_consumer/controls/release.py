"""Moving held messages back to the main queue: after a resume, a drain, or as a breaker's probe.

One replica moves a held queue at a time (a lease on its ``wa_holds`` row), one message at a
time in the queue's order, at the number's rate, each acked only after its copy in the main
queue is confirmed: a cut halfway loses nothing and at worst moves one message twice, which
the ledger then sends once. A queue found empty is deleted (only if still empty) and forgotten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import suppress
from functools import partial
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue, AbstractRobustConnection

from .. import headers as h
from ..dlq.sweep import Pacer, copy_of
from ..logs import get_logger
from ..settings import Settings
from .store import Hold, Pause, PauseStore

log = get_logger("controls")

_LEASE = """
UPDATE wa_holds SET mover = $2, mover_until = now() + make_interval(secs => $3)
WHERE queue = $1 AND (mover IS NULL OR mover = $2 OR mover_until < now())
RETURNING queue
"""
_UNLEASE = "UPDATE wa_holds SET mover = NULL, mover_until = NULL WHERE queue = $1 AND mover = $2"
_LEASE_SECONDS = 30.0
_CONFIRM_TIMEOUT = 10.0
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError, OSError)


class Releaser:
    """Starts one mover per releasable held queue; moves one message for a due probe."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        store: PauseStore,
        settings: Settings,
        *,
        me: str,
    ) -> None:
        self._connection = connection
        self._store = store
        self._settings = settings
        self._me = me
        self._moving: dict[str, asyncio.Task[None]] = {}
        self.released = 0  # messages moved back, for metrics

    def step(self, holds: Sequence[Hold]) -> None:
        for hold in holds:
            if hold.releasable and hold.queue not in self._moving:
                task = asyncio.create_task(self._move(hold), name=f"release:{hold.queue}")
                self._moving[hold.queue] = task
                task.add_done_callback(partial(self._moved, hold.queue))

    def _moved(self, queue: str, _: asyncio.Task[None]) -> None:
        self._moving.pop(queue, None)

    @property
    def moving(self) -> int:
        return len(self._moving)

    async def close(self) -> None:
        for task in list(self._moving.values()):
            task.cancel()
        if self._moving:
            await asyncio.wait(list(self._moving.values()), timeout=5)

    def _rate(self, number: str | None) -> float:
        s = self._settings
        return float(s.number_rates.get(number, s.number_rate)) if number else s.number_rate

    async def _move(self, hold: Hold) -> None:
        db = self._store.db
        if await db.fetchrow(_LEASE, hold.queue, self._me, _LEASE_SECONDS) is None:
            return  # another replica moves it
        # A drain's release passes the new pause; a resume's needs no pass.
        stamp = hold.paused_generation
        rate = self._rate(hold.number)
        pacer = Pacer(rate) if rate > 0 else None
        moved = 0
        try:
            async with self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            ) as channel:
                queue = await _existing(channel, hold.queue)
                if queue is None:
                    await self._store.forget_hold(hold.queue)
                    return
                log.info("release_started", queue=hold.queue, tenant_id=hold.tenant_id, rate=rate)
                leased = asyncio.get_running_loop().time()
                while True:
                    if pacer is not None:
                        await pacer.wait()
                    if not await self._move_one(channel, queue, stamp):
                        break
                    moved += 1
                    self.released += 1
                    now = asyncio.get_running_loop().time()
                    if now - leased > _LEASE_SECONDS / 3:
                        await db.fetchrow(_LEASE, hold.queue, self._me, _LEASE_SECONDS)
                        leased = now
                # Empty: delete it, unless a message was held into it meanwhile.
                with suppress(*_BROKER_ERRORS):
                    await queue.delete(if_unused=False, if_empty=True)
                    await self._store.forget_hold(hold.queue)
                log.info("release_finished", queue=hold.queue, moved=moved)
        except _BROKER_ERRORS as exc:
            log.warning("release_interrupted", queue=hold.queue, moved=moved, error=repr(exc)[:200])
        finally:
            with suppress(Exception):
                await db.execute(_UNLEASE, hold.queue, self._me)

    async def _move_one(self, channel: AbstractChannel, queue: AbstractQueue, stamp: Any) -> bool:
        """Move the queue's head to the main queue; False when the queue is empty."""
        message = await queue.get(no_ack=False, fail=False, timeout=_CONFIRM_TIMEOUT)
        if message is None:
            return False
        copy = copy_of(message)
        if stamp is not None:
            copy.headers[h.HELD_RELEASE] = stamp
        else:
            copy.headers.pop(h.HELD_RELEASE, None)
        try:
            await channel.default_exchange.publish(
                copy, routing_key=self._settings.queue, mandatory=True, timeout=_CONFIRM_TIMEOUT
            )
        except BaseException:
            with suppress(*_BROKER_ERRORS):
                await message.nack(requeue=True)
            raise
        await message.ack()
        return True

    async def probe(self, pause: Pause, holds: Sequence[Hold]) -> bool:
        """Send one held message of an open breaker's tenant or number through, marked so the
        pause lets it pass. False when no replica took the probe or nothing was held."""
        generation = await self._store.take_probe(pause, self._settings.breaker_probe_seconds)
        if generation is None:
            return False
        for hold in (x for x in holds if (x.tenant_id, x.number) == pause.key):
            # A channel each: a queue not found closes the channel it was asked on.
            async with self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            ) as channel:
                queue = await _existing(channel, hold.queue)
                if queue is not None and await self._move_one(channel, queue, generation):
                    self.released += 1
                    log.info("breaker_probe", tenant_id=pause.tenant_id, number=pause.number)
                    return True
        await self._store.probe_again(pause)  # nothing held yet: the next tick tries again
        return False


async def _existing(channel: AbstractChannel, name: str) -> AbstractQueue | None:
    try:
        return await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return None
