"""``dlq stats | list | show`` from the ledger's mirror of the DLQ (``wa_dead``).

With the ledger on, the daemon records every death it sends to the DLQ, so these read
PostgreSQL (``ledger.dead.DeadLetters``, the console's queries) and never touch the queue;
``stats`` only asks the broker how deep the queue is now (a passive declare), so an operator
sees when the two differ: a message the broker dead-lettered by itself (its TTL ran out)
never passed the daemon and is in the queue but not in the ledger. The output keeps the shape
of a pass over the queue (``inspect``), with ``source`` saying which it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractConnection

from ..ledger.dead import DeadGroup, DeadLetters, DeadRow, DeadStats
from .filters import Filter
from .inspect import Group, Page
from .record import UNREADABLE, DeadRecord, normalise, read_body
from .sweep import PassReport

if TYPE_CHECKING:
    from ..ledger.dead import Db

_GROUPS = 100  # groups shown in full (counts, first and last seen, the last 24 hours)


@dataclass(slots=True)
class LedgerStats:
    """``dlq stats`` from the ledger: the counts of ``Stats``, and the queue's depth now."""

    queue: str
    depth: int | None  # the queue's message count now; None when the broker did not answer
    messages: int  # dead rows in the ledger, all of them
    stats: DeadStats
    groups: list[DeadGroup] = field(default_factory=list)

    # What ``render.show_breakdown`` reads (``render.Breakdown``).
    @property
    def matched(self) -> int:
        return self.stats.total

    @property
    def by_category(self) -> Counter[str]:
        return self.stats.by_category

    @property
    def by_code(self) -> Counter[str]:
        return self.stats.by_code

    @property
    def by_tenant(self) -> Counter[str]:
        return self.stats.by_tenant

    @property
    def by_type(self) -> Counter[str]:
        return self.stats.by_type

    @property
    def other_groups(self) -> int:
        return self.stats.group_count - len(self.stats.groups)

    def ranked_groups(self) -> list[Group]:
        groups = [
            Group(g.fingerprint, g.category, g.code, normalise(g.message), g.message, g.count)
            for g in self.stats.groups
        ]
        for group, g in zip(groups, self.stats.groups, strict=True):
            group.tenants, group.tenant_count = set(g.tenants), g.tenant_count
        return groups

    def oldest_age_seconds(self, now: datetime | None = None) -> float | None:
        if self.stats.oldest is None:
            return None
        return ((now or datetime.now(UTC)) - self.stats.oldest).total_seconds()

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        groups = []
        for g, plain in zip(s.groups, self.ranked_groups(), strict=True):
            groups.append(
                {
                    **plain.to_json(),
                    "top_tenants": g.tenants,
                    "types": g.types,
                    "first_seen": g.first_seen.isoformat(),
                    "last_seen": g.last_seen.isoformat(),
                    "hourly": g.hourly,
                }
            )
        return {
            "source": "ledger",
            "queue": self.queue,
            "queue_depth": self.depth,
            "messages": self.messages,
            "matched": s.total,
            "oldest": None
            if s.oldest is None
            else {
                "internal_id": s.oldest_internal_id,
                "failed_at": s.oldest.isoformat(),
                "age_seconds": self.oldest_age_seconds(),
            },
            "by_category": dict(s.by_category.most_common()),
            "by_code": dict(s.by_code.most_common()),
            "by_tenant": dict(s.by_tenant.most_common()),
            "by_type": dict(s.by_type.most_common()),
            "by_fingerprint": groups,
            "other_fingerprints": self.other_groups,
        }


async def stats(db: Db, queue: str, selection: Filter, depth: int | None) -> LedgerStats:
    """The counts of the dead messages matching ``selection``, from the ledger."""
    dead = DeadLetters(db)
    found = await dead.stats(selection, groups=_GROUPS)
    everything = found.total if selection.empty else await dead.count(Filter())
    return LedgerStats(queue, depth, everything, found)


def record_of(row: DeadRow, position: int) -> DeadRecord:
    """A row as ``dlq list`` shows a message read from the queue."""
    return DeadRecord(
        position=position,
        internal_id=row.internal_id,
        message_id=None,
        tenant=row.tenant_id,
        type=row.type or UNREADABLE,
        recipient=None,
        category=row.category,
        code=row.code,
        subcode=row.subcode,
        message=row.message,
        failed_at=row.died_at,
        first_failed_at=None,
        retry_count=row.retries,
        replay_count=row.replays,
        routing_key=row.routing_key,
        fingerprint=row.fingerprint,
        ledger_tenant=row.tenant_id,
    )


async def list_page(db: Db, queue: str, selection: Filter, *, limit: int, offset: int) -> Page:
    """The ``limit`` matching messages after the first ``offset``, newest first."""
    dead = DeadLetters(db)
    rows = await dead.page(selection, limit=limit, offset=offset)
    matched = await dead.count(selection)
    everything = matched if selection.empty else await dead.count(Filter())
    page = Page(queue, offset, limit, PassReport(total=everything, seen=everything), matched)
    page.source = "ledger"
    page.records = [record_of(r, offset + n + 1) for n, r in enumerate(rows)]
    page.ids = [r.id for r in rows]
    return page


async def show(db: Db, internal_id: str) -> tuple[dict[str, Any] | None, int]:
    """The oldest dead row of this internalId, in ``inspect.detail``'s shape, and how many."""
    dead = DeadLetters(db)
    rows = await dead.by_internal_id(internal_id)
    if not rows:
        return None, 0
    detail = await dead.detail(rows[0].id)
    if detail is None:  # marked meanwhile
        return None, 0
    headers = detail.headers
    body = read_body(detail.body)
    record = record_of(detail.row, 1).to_json()
    record.pop("position")
    first = headers.get("x-first-failed-at")
    return {
        "source": "ledger",
        "id": detail.row.id,
        **record,
        "recipient": _recipient(body),
        "first_failed_at": first if isinstance(first, str) else None,
        "state": detail.state,
        "headers": headers,
        "body": body if body is not None else detail.body.decode("utf-8", "replace"),
        "body_bytes": detail.body_bytes,
        "ledger": detail.record,
        "attempts": detail.attempts,
    }, len(rows)


def _recipient(body: dict[str, Any] | None) -> str | None:
    payload = (body or {}).get("wabaPayload")
    to = payload.get("to") if isinstance(payload, dict) else None
    return to if isinstance(to, str) else None


async def queue_depth(connection: AbstractConnection, queue: str) -> int | None:
    """How many messages ``queue`` holds now (a passive declare); None if it cannot say."""
    try:
        async with connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
    except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError):
        return None
    return declared.declaration_result.message_count or 0
