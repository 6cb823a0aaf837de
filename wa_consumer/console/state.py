"""What every handler of the console shares: settings, the database pool, the broker
connection, the ledger's views, the tenant controls, the accounts and the running jobs.

Built once at start (``app.start_console``) and kept on the aiohttp application under
``CONSOLE``. The ledger's dead-letter mirror and the tenant controls are seams (small
Protocols): the handlers call them, and tests give them fakes of the same shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from aiohttp import web

from ..ledger.audit import Db as AuditDb
from ..settings import masked
from .problems import Busy, Unavailable

_CONNECT_TIMEOUT: Final = 10.0

if TYPE_CHECKING:
    from ..controls import TenantState
    from ..dlq.filters import Filter
    from ..ledger.dead import DeadDetail, DeadGroup, DeadRow, DeadStats
    from ..settings import Settings
    from .auth import Accounts, Sessions
    from .jobs import Jobs


class DeadLetters(Protocol):
    """The ledger's mirror of the DLQ (``wa_consumer.ledger.dead.DeadLetters``)."""

    async def stats(self, f: Filter, *, groups: int = 50) -> DeadStats: ...

    async def groups(self, f: Filter, limit: int = 50) -> list[DeadGroup]: ...

    async def page(
        self, f: Filter, *, before_id: int | None = None, limit: int = 50
    ) -> list[DeadRow]: ...

    async def detail(self, dead_id: int) -> DeadDetail | None: ...

    async def mark(self, ids: Sequence[int], state: str, resolution: str | None) -> int: ...


class Controls(Protocol):
    """Tenant and number controls (``wa_consumer.controls.TenantControls``); each action
    records itself in the audit trail."""

    async def pause(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState: ...

    async def resume(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState: ...

    async def drain(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState: ...

    async def states(self, tenant: str | None = None) -> list[TenantState]: ...


class Db(AuditDb, Protocol):
    """What the console asks of the pool (asyncpg's ``Pool`` fits): the audit trail's
    queries, and a connection of its own for a transaction."""

    def acquire(self) -> Any: ...


@dataclass
class Console:
    """The console's resources; see the module docstring."""

    settings: Settings
    db: Db
    broker: AbstractConnection
    dead: DeadLetters
    controls: Controls
    accounts: Accounts
    sessions: Sessions
    jobs: Jobs
    # A pass over the DLQ needs the queue alone: one at a time from this process.
    dlq_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @asynccontextmanager
    async def pass_connection(self) -> AsyncIterator[AbstractConnection]:
        """A plain connection of its own for one pass over the DLQ, closed after it.

        Not the console's robust one: a robust channel that comes back after a network cut
        consumes again and would be given the pass's messages a second time, with delivery
        tags the pass cannot ack. A plain one fails the pass instead: every message without a
        confirmed copy goes back to its place in the queue.
        """
        try:
            connection = await aio_pika.connect(self.settings.amqp_url, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
            raise Unavailable(f"cannot connect to RabbitMQ: {masked(str(exc))}") from None
        try:
            yield connection
        finally:
            with suppress(OSError, TimeoutError, RuntimeError, aiormq.exceptions.AMQPError):
                await asyncio.wait_for(connection.close(), _CONNECT_TIMEOUT)

    def claim_dlq(self) -> asyncio.Lock:
        """The DLQ's lock, or ``Busy`` at once when a pass holds it (never a queue of waits)."""
        if self.dlq_lock.locked():
            running = self.jobs.running()
            what = f"group replay {running.id}" if running is not None else "another action"
            raise Busy(f"the DLQ is in use by {what}; wait for it or stop it")
        return self.dlq_lock


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
