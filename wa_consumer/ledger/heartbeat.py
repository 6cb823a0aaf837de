"""Liveness: each daemon says it is alive, so its claims hold, and a dead one's do not.

A daemon writes ``alive_until`` (now plus three of its heartbeats) to ``wa_consumers`` every
heartbeat, on a connection of its own when it has the database's URL: a busy pool must not
make a live daemon look dead. The claim statement takes over a claim whose holder's
``alive_until`` has passed: a daemon killed with -9 is known gone within three beats, not a
whole claim lease. A clean exit removes the row.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import asyncpg

from ..logs import get_logger

log = get_logger("ledger")

_BEAT = """
INSERT INTO wa_consumers (id, alive_until) VALUES ($1, now() + make_interval(secs => $2))
ON CONFLICT (id) DO UPDATE SET seen_at = now(), alive_until = EXCLUDED.alive_until
"""
_FORGET_OLD = "DELETE FROM wa_consumers WHERE seen_at < now() - interval '1 day'"
_GONE = "DELETE FROM wa_consumers WHERE id = $1"

#: Errors that say the database is away or overloaded.
OUTAGE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError)


class Heartbeat:
    """One daemon's heartbeat in ``wa_consumers``."""

    def __init__(
        self, pool: asyncpg.Pool, consumer: str, every: float, url: str | None = None
    ) -> None:
        self._pool = pool
        self._consumer = consumer
        self._every = every
        self.liveness = max(3 * every, 1.0)  # unseen for this long: gone
        self._url = url
        self._connection: asyncpg.Connection[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._beat(first=True)
        self._task = asyncio.create_task(self._beating(), name="ledger-heartbeat")

    def stop_beating(self) -> None:
        """Stop saying it is alive (as a killed daemon would); ``close`` still cleans up."""
        if self._task is not None:
            self._task.cancel()

    async def close(self, *, gone: bool) -> None:
        """Stop; with ``gone``, remove the row too (no claim of ours is left open)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._connection is not None:
            with suppress(*OUTAGE):
                await self._connection.close(timeout=2)
        if gone:
            with suppress(*OUTAGE):
                async with asyncio.timeout(2):
                    await self._pool.execute(_GONE, self._consumer)

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self._beat()
            except Exception:
                log.exception("ledger_heartbeat_error")

    async def _beat(self, *, first: bool = False) -> None:
        try:
            async with asyncio.timeout(self.liveness / 2):
                if self._url is not None and (
                    self._connection is None or self._connection.is_closed()
                ):
                    self._connection = await asyncpg.connect(self._url, timeout=5)
                target = self._connection if self._connection is not None else self._pool
                await target.execute(_BEAT, self._consumer, self.liveness)
                if first:
                    await target.execute(_FORGET_OLD)
        except OUTAGE as exc:
            if self._connection is not None:
                self._connection.terminate()  # a fresh one next beat
                self._connection = None
            log.debug("ledger_heartbeat_failed", error=type(exc).__name__)
