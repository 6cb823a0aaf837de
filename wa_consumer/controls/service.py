"""Pause, resume, drain and status: what the CLI and the console do to a tenant or number.

Each action is one row change that every replica reads within ``WA_CONTROLS_POLL_SECONDS``,
and one line of the audit trail. A pause also declares its held queue at once, so the first
message held does not wait for a daemon to make it. Moving held messages back is the
daemons' work (``release``): a resume here returns at once, and they follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiormq

from ..ledger.audit import Db, record_action
from .gate import queue_arguments
from .store import Hold, Pause, PauseStore, held_queue, target_of

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from ..settings import Settings

_MAX_ID = 256  # characters of a tenant id or number an operator may name


@dataclass(frozen=True, slots=True)
class TenantState:
    """A tenant's or number's control state, as the CLI and the console show it."""

    tenant_id: str
    number: str | None
    mode: str  # active | paused | draining
    reason: str | None = None
    actor: str | None = None
    since: datetime | None = None
    breaker: bool = False
    probe_at: datetime | None = None
    held: int | None = None  # messages waiting in its held queues (None: not counted)

    @property
    def target(self) -> str:
        return target_of(self.tenant_id, self.number)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "number": self.number,
            "mode": self.mode,
            "reason": self.reason,
            "actor": self.actor,
            "since": self.since.isoformat() if self.since else None,
            "breaker": self.breaker,
            "probe_at": self.probe_at.isoformat() if self.probe_at else None,
            "held": self.held,
        }


def _state(pause: Pause, held: int | None = None) -> TenantState:
    return TenantState(
        tenant_id=pause.tenant_id,
        number=pause.number,
        mode=pause.mode,
        reason=pause.reason,
        actor=pause.actor,
        since=pause.since,
        breaker=pause.breaker,
        probe_at=pause.probe_at,
        held=held,
    )


def _checked(tenant: str, number: str | None) -> tuple[str, str | None]:
    """Operator input, bounded before it reaches the database or a queue name."""
    tenant = tenant.strip()
    if not tenant or len(tenant) > _MAX_ID:
        raise ValueError(f"a tenant id is 1 to {_MAX_ID} characters")
    if number is not None:
        number = number.strip()
        if not number.isdigit() or len(number) > 32:
            raise ValueError("a phone number id is digits only (at most 32)")
    return tenant, number or None


class TenantControls:
    """Tenant and number controls over the ledger's database (and the broker, when given)."""

    def __init__(
        self, settings: Settings, db: Db, connection: AbstractConnection | None = None
    ) -> None:
        self._settings = settings
        self._store = PauseStore(db)
        self._db = db
        self._connection = connection

    async def pause(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        tenant, number = _checked(tenant, number)
        pause, created = await self._store.pause(tenant, number, reason=reason, actor=actor)
        assert pause is not None  # an operator's pause always lands
        queue = held_queue(self._settings.held_queue_prefix, tenant, number, pause.generation)
        await self._store.record_hold(queue, pause)
        await self._declare(queue)
        await record_action(
            self._db,
            actor=actor,
            action="pause" if created else "pause_updated",
            target=pause.target,
            reason=reason,
            details={"held_queue": queue},
        )
        return _state(pause)

    async def resume(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        tenant, number = _checked(tenant, number)
        pause = await self._store.resume(tenant, number)
        await record_action(
            self._db,
            actor=actor,
            action="resume" if pause is not None else "resume_not_paused",
            target=target_of(tenant, number),
            reason=reason,
            details={"was": _state(pause).to_json()} if pause is not None else None,
        )
        held = await self._held(await self._store.holds(tenant), (tenant, number))
        return TenantState(tenant, number, "active", held=held)

    async def drain(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        tenant, number = _checked(tenant, number)
        pause = await self._store.drain(tenant, number, reason=reason, actor=actor)
        queue = held_queue(self._settings.held_queue_prefix, tenant, number, pause.generation)
        await self._store.record_hold(queue, pause)
        await self._declare(queue)
        await record_action(
            self._db, actor=actor, action="drain", target=pause.target, reason=reason,
            details={"held_queue": queue},
        )  # fmt: skip
        return _state(pause)

    async def states(self, tenant: str | None = None) -> list[TenantState]:
        """Every pause in force (or one tenant's), with the messages each holds."""
        pauses = await self._store.pauses(tenant)
        holds = await self._store.holds(tenant)
        states = [_state(p, await self._held(holds, p.key)) for p in pauses]
        # Held queues of what is no longer paused: their messages are on their way back.
        paused = {p.key for p in pauses}
        for key in dict.fromkeys((x.tenant_id, x.number) for x in holds if x.releasable):
            if key not in paused:
                held = await self._held(holds, key)
                if held != 0:  # an empty one is only waiting for a daemon to delete it
                    states.append(TenantState(key[0], key[1], "active", held=held))
        return states

    async def _declare(self, queue: str) -> None:
        if self._connection is None:
            return  # a daemon declares it at its next poll
        async with self._connection.channel() as channel:
            await channel.declare_queue(
                queue, durable=True, arguments=queue_arguments(self._settings)
            )

    async def _held(self, holds: list[Hold], key: tuple[str, str | None]) -> int | None:
        if self._connection is None:
            return None
        total = 0
        for hold in holds:
            if (hold.tenant_id, hold.number) != key:
                continue
            async with self._connection.channel() as channel:
                try:
                    queue = await channel.declare_queue(hold.queue, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    continue
                total += queue.declaration_result.message_count or 0
        return total
