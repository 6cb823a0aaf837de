"""The daemon's side of tenant controls: which messages to hold, and the breaker (SPEC §14).

Every ``WA_CONTROLS_POLL_SECONDS`` each replica reads the pauses in force from the ledger's
database, makes sure each has its held queue, and starts moving back what a resume or a
drain released. The pipeline asks ``held`` for each message (a dict lookup, nothing when
nothing is paused) and tells ``settled`` each outcome, which the breaker counts.

While the database cannot be read, the last pauses read stay in force: a pause is never
dropped for an outage, and a resume waits for the database like everything else.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

import asyncpg
from aio_pika.abc import AbstractRobustConnection

from ..alerts import Alerter
from ..ledger.audit import record_action
from ..logs import get_logger
from ..outcomes import Delivered, Outcome
from ..settings import Settings
from .breaker import Breaker, Trip
from .observe import ControlMetrics
from .release import Releaser
from .store import Pause, PauseStore, held_queue

log = get_logger("controls")

BREAKER_ACTOR = "breaker"
_OUTAGE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def queue_arguments(settings: Settings) -> dict[str, Any]:
    """A held queue: durable, of the configured type, nothing that expires or drops."""
    return {"x-queue-type": "quorum"} if settings.queue_type == "quorum" else {}


class TenantGate:
    """A ``Gate``: pauses read from PostgreSQL, holds in RabbitMQ, a breaker in process."""

    def __init__(
        self,
        settings: Settings,
        connection: AbstractRobustConnection,
        *,
        me: str,
        metrics: ControlMetrics,
        alerts: Alerter | None = None,
    ) -> None:
        self._settings = settings
        self._connection = connection
        self._me = me
        self._metrics = metrics
        self._alerts = alerts
        self._breaker = Breaker(settings.breaker_threshold)
        self._paused: dict[tuple[str, str | None], tuple[Pause, str]] = {}
        self._declared: set[str] = set()
        self._pool: asyncpg.Pool | None = None
        self._store: PauseStore | None = None
        self._releaser: Releaser | None = None
        self._task: asyncio.Task[None] | None = None
        self._acting: set[tuple[str, str | None]] = set()  # a breaker opening or closing
        self._side: set[asyncio.Task[None]] = set()
        self._warned_at = 0.0

    # -- the seam the pipeline calls ---------------------------------------------------------

    def held(self, tenant_id: str, number: str | None, release: int | None) -> str | None:
        if not self._paused:
            return None
        entry = self._paused.get((tenant_id, number))
        if entry is None:
            return None
        pause, queue = entry
        if release is not None and release == pause.generation:
            return None  # released by this pause's drain, or its breaker's probe
        self._metrics.held.inc()
        return queue

    def settled(self, tenant_id: str | None, number: str | None, outcome: Outcome) -> None:
        if tenant_id is None:
            return
        if isinstance(outcome, Delivered):
            # Sent while its breaker is open: the probe went through, the account works.
            for key in ((tenant_id, number), (tenant_id, None)):
                entry = self._paused.get(key)
                if entry is not None and entry[0].breaker and key not in self._acting:
                    self._act(key, self._close(entry[0]))
        trip = self._breaker.observe(tenant_id, number, outcome)
        if trip is not None:
            key = (trip.tenant_id, trip.number)
            if key not in self._paused and key not in self._acting:
                self._act(key, self._open(trip))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the pauses before the first message is taken, then poll them."""
        url = self._settings.database_url
        assert url is not None  # a gate is built only with a ledger
        self._pool = await asyncpg.create_pool(url, min_size=1, max_size=2, timeout=10)
        self._store = PauseStore(self._pool)
        self._releaser = Releaser(self._connection, self._store, self._settings, me=self._me)
        self._metrics.watch(lambda: list(self._paused.values()), lambda: self._releaser)
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="tenant-controls")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)
        if self._side:
            await asyncio.wait(list(self._side), timeout=5)
        if self._releaser is not None:
            await self._releaser.close()
        if self._pool is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.controls_poll_seconds)
            try:
                await self.refresh()
            except _OUTAGE as exc:
                now = time.monotonic()
                if now - self._warned_at > 60:  # one line a minute, not one a poll
                    self._warned_at = now
                    log.warning("controls_unreadable", error=repr(exc)[:200])
            except Exception:  # a bug: said so; the last pauses read stay in force
                log.exception("controls_refresh_failed")

    async def refresh(self) -> None:
        """Read the pauses, declare their held queues, release what may go, probe."""
        store, releaser = self._store, self._releaser
        assert store is not None
        assert releaser is not None
        pauses = await store.pauses()
        paused: dict[tuple[str, str | None], tuple[Pause, str]] = {}
        for pause in pauses:
            queue = held_queue(
                self._settings.held_queue_prefix, pause.tenant_id, pause.number, pause.generation
            )
            if queue not in self._declared:
                await store.record_hold(queue, pause)  # first: a resume must find it
                with suppress(Exception):  # the broker away: publishing there then fails
                    await self._declare(queue)
                    self._declared.add(queue)
            paused[pause.key] = (pause, queue)
        self._paused = paused
        holds = await store.holds()
        releaser.step(holds)
        for pause in pauses:
            if pause.mode == "draining" and not any(
                x.tenant_id == pause.tenant_id
                and x.number == pause.number
                and x.generation < pause.generation
                for x in holds
            ):
                await store.drained(pause)
            if pause.breaker and pause.probe_at is not None:
                due = pause.probe_at.timestamp() <= time.time()
                if due:
                    await releaser.probe(pause, holds)

    async def _declare(self, queue: str) -> None:
        async with self._connection.channel() as channel:
            await channel.declare_queue(
                queue, durable=True, arguments=queue_arguments(self._settings)
            )

    # -- the breaker -------------------------------------------------------------------------

    def _act(self, key: tuple[str, str | None], work: Any) -> None:
        self._acting.add(key)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._side.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._side.discard(t)
            self._acting.discard(key)
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.warning("breaker_action_failed", error=repr(exc)[:200])

        task.add_done_callback(done)

    async def _open(self, trip: Trip) -> None:
        store = self._store
        assert store is not None
        pause, created = await store.pause(
            trip.tenant_id,
            trip.number,
            reason=trip.reason,
            actor=BREAKER_ACTOR,
            breaker_probe_seconds=self._settings.breaker_probe_seconds,
        )
        if pause is None or not created:
            return  # paused already (by an operator, or another replica's breaker)
        target = pause.target
        await record_action(
            store.db,
            actor=BREAKER_ACTOR,
            action="breaker_opened",
            target=target,
            reason=trip.reason,
            details={"category": trip.category, "code": trip.code, "replica": self._me},
        )
        self._metrics.trips.inc()
        log.error(
            "breaker_opened",
            tenant_id=trip.tenant_id,
            phone_number_id=trip.number,
            category=trip.category,
            code=trip.code,
        )
        if self._alerts is not None:
            self._alerts.fire(
                "breaker_open",
                tenant=trip.tenant_id,
                category=trip.category,
                code=trip.code,
                cause=f"{target} paused: {trip.reason}",
            )
        await self.refresh()  # hold from now on in this replica, not at the next poll

    async def _close(self, pause: Pause) -> None:
        store = self._store
        assert store is not None
        closed = await store.close_breaker(pause)
        self._breaker.forget(pause.tenant_id, pause.number)
        if closed is None:
            return
        await record_action(
            store.db,
            actor=BREAKER_ACTOR,
            action="breaker_closed",
            target=pause.target,
            reason="a probe message was accepted",
            details={"replica": self._me},
        )
        log.info("breaker_closed", tenant_id=pause.tenant_id, phone_number_id=pause.number)
        await self.refresh()
