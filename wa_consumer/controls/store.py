"""Pauses and held queues in PostgreSQL: the state every replica reads (SPEC §14).

A pause is one row per tenant (``number`` empty) or per number. Held messages wait in a
queue named after the pause and its generation (``held_queue``), recorded in ``wa_holds`` so
that a daemon can find and release it after a resume, whoever held the messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..ledger.audit import Db

_PAUSES = """
SELECT tenant_id, number, mode, reason, actor, breaker, probe_at, generation, since
FROM wa_pauses
WHERE $1::text IS NULL OR tenant_id = $1
ORDER BY tenant_id, number
"""
# A pause of what is paused already keeps its generation (its held queue) and takes the new
# reason; an operator's pause of an open breaker makes it the operator's (no probe).
_PAUSE = """
INSERT INTO wa_pauses AS p (tenant_id, number, mode, reason, actor, breaker, probe_at)
VALUES ($1, $2, 'paused', $3, $4, $5, $6)
ON CONFLICT (tenant_id, number) DO UPDATE SET
    reason = EXCLUDED.reason, actor = EXCLUDED.actor, breaker = EXCLUDED.breaker,
    probe_at = EXCLUDED.probe_at
WHERE NOT $5  -- the breaker never overrides an operator's pause
RETURNING tenant_id, number, mode, reason, actor, breaker, probe_at, generation, since,
    (xmax = 0) AS created
"""
_DRAIN = """
INSERT INTO wa_pauses AS p (tenant_id, number, mode, reason, actor)
VALUES ($1, $2, 'draining', $3, $4)
ON CONFLICT (tenant_id, number) DO UPDATE SET
    mode = 'draining', reason = EXCLUDED.reason, actor = EXCLUDED.actor, breaker = false,
    probe_at = NULL, generation = nextval('wa_pause_generation'), since = now()
RETURNING tenant_id, number, mode, reason, actor, breaker, probe_at, generation, since,
    (xmax = 0) AS created
"""
_RESUME = """
DELETE FROM wa_pauses WHERE tenant_id = $1 AND number = $2
RETURNING tenant_id, number, mode, reason, actor, breaker, probe_at, generation, since
"""
# The breaker closes only the pause it opened (not one an operator has made theirs since).
_CLOSE_BREAKER = """
DELETE FROM wa_pauses WHERE tenant_id = $1 AND number = $2 AND breaker AND generation = $3
RETURNING tenant_id, number, mode, reason, actor, breaker, probe_at, generation, since
"""
_DRAINED = """
UPDATE wa_pauses SET mode = 'paused'
WHERE tenant_id = $1 AND number = $2 AND generation = $3 AND mode = 'draining'
"""
# One replica takes each probe: the row's probe time moves on as it is taken.
_TAKE_PROBE = """
UPDATE wa_pauses SET probe_at = now() + make_interval(secs => $3)
WHERE tenant_id = $1 AND number = $2 AND breaker AND probe_at <= now()
RETURNING generation
"""
_PROBE_AGAIN = """
UPDATE wa_pauses SET probe_at = now()
WHERE tenant_id = $1 AND number = $2 AND breaker AND generation = $3
"""
_RECORD_HOLD = """
INSERT INTO wa_holds (queue, tenant_id, number, generation) VALUES ($1, $2, $3, $4)
ON CONFLICT (queue) DO NOTHING
"""
_HOLDS = """
SELECT h.queue, h.tenant_id, h.number, h.generation, p.generation AS paused_generation,
    p.mode AS paused_mode
FROM wa_holds h
LEFT JOIN wa_pauses p ON p.tenant_id = h.tenant_id AND p.number = h.number
WHERE $1::text IS NULL OR h.tenant_id = $1
ORDER BY h.generation
"""
_FORGET_HOLD = "DELETE FROM wa_holds WHERE queue = $1"


@dataclass(frozen=True, slots=True)
class Pause:
    """One paused tenant (``number`` None) or number."""

    tenant_id: str
    number: str | None
    mode: str  # paused | draining
    reason: str | None
    actor: str
    breaker: bool
    probe_at: datetime | None
    generation: int
    since: datetime

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.tenant_id, self.number)

    @property
    def target(self) -> str:
        """How the audit trail names it: ``acme`` or ``acme:106540352242922``."""
        return target_of(self.tenant_id, self.number)


@dataclass(frozen=True, slots=True)
class Hold:
    """A held queue and whether its messages may go (its pause is over or newer)."""

    queue: str
    tenant_id: str
    number: str | None
    generation: int
    paused_generation: int | None  # the pause now in force, if any
    paused_mode: str | None = None

    @property
    def releasable(self) -> bool:
        """No pause is in force, or a drain newer than this queue's pause. A queue left
        from before a later plain pause waits for that pause's resume."""
        if self.paused_generation is None:
            return True
        return self.paused_mode == "draining" and self.paused_generation > self.generation


def target_of(tenant_id: str, number: str | None) -> str:
    return tenant_id if number is None else f"{tenant_id}:{number}"


def held_queue(prefix: str, tenant_id: str, number: str | None, generation: int) -> str:
    """The queue a pause's messages wait in. Tenant ids are the producers' text: a name that
    would pass RabbitMQ's 255 bytes, or holds anything but plain characters, is a digest."""
    name = f"{prefix}.{target_of(tenant_id, number)}.{generation}"
    plain = all(c.isalnum() or c in "-_.:" for c in name)
    if plain and len(name.encode()) <= 200:
        return name
    digest = hashlib.sha256(target_of(tenant_id, number).encode()).hexdigest()[:24]
    return f"{prefix}.h{digest}.{generation}"


def _pause(row: Any) -> Pause:
    return Pause(
        tenant_id=row["tenant_id"],
        number=row["number"] or None,
        mode=row["mode"],
        reason=row["reason"],
        actor=row["actor"],
        breaker=row["breaker"],
        probe_at=row["probe_at"],
        generation=row["generation"],
        since=row["since"],
    )


class PauseStore:
    """The SQL of pauses and holds; each call one statement on ``db`` (a pool or a connection)."""

    def __init__(self, db: Db) -> None:
        self._db = db

    @property
    def db(self) -> Db:
        return self._db

    async def pauses(self, tenant_id: str | None = None) -> list[Pause]:
        return [_pause(row) for row in await self._db.fetch(_PAUSES, tenant_id)]

    async def pause(
        self,
        tenant_id: str,
        number: str | None,
        *,
        reason: str | None,
        actor: str,
        breaker_probe_seconds: float | None = None,
    ) -> tuple[Pause | None, bool]:
        """(the pause, whether it is new). With ``breaker_probe_seconds``, the breaker's own
        pause, which never replaces an operator's: then (None, False)."""
        breaker = breaker_probe_seconds is not None
        probe_at = None
        if breaker:
            row = await self._db.fetchrow(
                "SELECT now() + make_interval(secs => $1) AS at", breaker_probe_seconds
            )
            probe_at = row["at"]
        row = await self._db.fetchrow(
            _PAUSE, tenant_id, number or "", reason, actor, breaker, probe_at
        )
        return (None, False) if row is None else (_pause(row), bool(row["created"]))

    async def drain(
        self, tenant_id: str, number: str | None, *, reason: str | None, actor: str
    ) -> Pause:
        row = await self._db.fetchrow(_DRAIN, tenant_id, number or "", reason, actor)
        return _pause(row)

    async def resume(self, tenant_id: str, number: str | None) -> Pause | None:
        row = await self._db.fetchrow(_RESUME, tenant_id, number or "")
        return None if row is None else _pause(row)

    async def close_breaker(self, pause: Pause) -> Pause | None:
        row = await self._db.fetchrow(
            _CLOSE_BREAKER, pause.tenant_id, pause.number or "", pause.generation
        )
        return None if row is None else _pause(row)

    async def drained(self, pause: Pause) -> None:
        await self._db.execute(_DRAINED, pause.tenant_id, pause.number or "", pause.generation)

    async def take_probe(self, pause: Pause, probe_seconds: float) -> int | None:
        """The probe's generation when this replica takes the due probe; else None."""
        row = await self._db.fetchrow(
            _TAKE_PROBE, pause.tenant_id, pause.number or "", probe_seconds
        )
        return None if row is None else int(row["generation"])

    async def probe_again(self, pause: Pause) -> None:
        """No message was held to probe with: the probe is due again at once."""
        await self._db.execute(_PROBE_AGAIN, pause.tenant_id, pause.number or "", pause.generation)

    async def record_hold(self, queue: str, pause: Pause) -> None:
        await self._db.execute(
            _RECORD_HOLD, queue, pause.tenant_id, pause.number or "", pause.generation
        )

    async def holds(self, tenant_id: str | None = None) -> list[Hold]:
        return [
            Hold(
                queue=row["queue"],
                tenant_id=row["tenant_id"],
                number=row["number"] or None,
                generation=row["generation"],
                paused_generation=row["paused_generation"],
                paused_mode=row["paused_mode"],
            )
            for row in await self._db.fetch(_HOLDS, tenant_id)
        ]

    async def forget_hold(self, queue: str) -> None:
        await self._db.execute(_FORGET_HOLD, queue)
