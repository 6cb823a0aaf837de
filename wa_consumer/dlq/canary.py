"""A canary for a group replay: a few of the group's dead messages replayed first, their
outcomes read from the ledger, and only then the rest. The console's replay jobs
(``console.replays``) and ``dlq replay --canary`` both use it.

1. ``pick``: the canary, chosen in the ledger's mirror of the DLQ (so which ones is known):
   messages with an internalId, replayed fewer than ``max_replays`` times, dead before the
   replay began.
2. ``canary_filter``: replaying exactly those (``dlq.replay`` with their ids).
3. ``outcomes``, ``settled``: each one's record in ``wa_messages``: ``sent``, ``dead`` again
   (its replay count grew past the one it died with), or still ``pending``.
4. ``rest_filter``: the rest, only what died before the replay began (``Filter.before``), so
   a canary message that died again, or a new failure, stays in the DLQ.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

from .filters import Filter

if TYPE_CHECKING:
    from ..ledger.dead import DeadRow
    from .replay import ReplaySummary

MAX_REPLAYS: Final = 3  # as `dlq replay`: a message replayed this often stays in the DLQ
OUTCOMES: Final = ("sent", "dead", "pending")
_POLL: Final = 0.5  # seconds between two looks at the canary's records

# A canary message's record: by (tenant, internalId), or any tenant's when none was read.
_RECORDS = """
SELECT k.tenant_id, k.internal_id, m.status, m.replays, m.wamid, m.last_error_category,
    m.last_error_code, m.last_error_message
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k (tenant_id, internal_id, n)
LEFT JOIN LATERAL (
    SELECT * FROM wa_messages m
    WHERE m.internal_id = k.internal_id AND (k.tenant_id IS NULL OR m.tenant_id = k.tenant_id)
    ORDER BY m.updated_at DESC LIMIT 1
) m ON true
ORDER BY k.n
"""


class Pages(Protocol):
    """The ledger's mirror of the DLQ, a page at a time (``ledger.dead.DeadLetters``)."""

    async def page(
        self, f: Filter, *, before_id: int | None = None, limit: int = 50
    ) -> list[DeadRow]: ...


class Rows(Protocol):
    """A pool or a connection (asyncpg's both fit)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class CanaryItem:
    dead_id: int
    tenant_id: str | None
    internal_id: str
    replays_before: int  # its replay count when it died: more afterwards means replayed


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one canary message, from its record in the ledger."""

    item: CanaryItem
    outcome: str  # sent | dead | pending
    tenant_id: str | None
    status: str | None
    wamid: str | None = None
    category: str | None = None
    code: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "dead_id": self.item.dead_id,
            "tenant_id": self.tenant_id,
            "internal_id": self.item.internal_id,
            "outcome": self.outcome,
            "status": self.status,
            "wamid": self.wamid,
            "category": self.category,
            "code": self.code,
            "error": self.error,
        }

    def line(self) -> str:
        """One line for people."""
        who = f"{self.item.internal_id} ({self.tenant_id or self.item.tenant_id or '-'})"
        if self.outcome == "sent":
            return f"{who}: sent {self.wamid or ''}".rstrip()
        if self.outcome == "dead":
            return f"{who}: dead again: {self.category} {self.code}: {self.error or ''}".rstrip()
        return f"{who}: pending ({self.status or 'not claimed yet'})"


@dataclass(slots=True)
class CanaryRun:
    """A canary replayed: when it began, its messages, the replay, their outcomes."""

    started: datetime
    items: list[CanaryItem]
    summary: ReplaySummary
    outcomes: list[Outcome]

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.outcomes)

    def to_json(self) -> dict[str, Any]:
        summary = self.summary.to_json()
        del summary["sample"]
        return {**summary, "outcomes": [o.to_json() for o in self.outcomes], **self.counts}


def _earlier(a: datetime | None, b: datetime) -> datetime:
    return b if a is None else min(a, b)


async def pick(
    dead: Pages, selection: Filter, n: int, *, before: datetime, max_replays: int = MAX_REPLAYS
) -> list[CanaryItem]:
    """Up to ``n`` messages of ``selection`` that may be replayed, newest first."""
    rows = await dead.page(rest_filter(selection, before), limit=max(50, 3 * n))
    return [
        CanaryItem(r.id, r.tenant_id, r.internal_id, r.replays)
        for r in rows
        if r.internal_id and r.replays < max_replays
    ][:n]


def canary_filter(selection: Filter, items: Sequence[CanaryItem], before: datetime) -> Filter:
    """The canary's messages alone (replay them with ``limit=len(items)``)."""
    ids = frozenset(i.internal_id for i in items)
    return replace(selection, ids=ids, before=_earlier(selection.before, before))


def rest_filter(selection: Filter, before: datetime) -> Filter:
    """``selection`` as it was when the replay began: what died since stays."""
    return replace(selection, before=_earlier(selection.before, before))


async def outcomes(db: Rows, items: Sequence[CanaryItem]) -> list[Outcome]:
    """Each canary message's state in the ledger: sent, dead (again) or pending."""
    if not items:
        return []
    rows = await db.fetch(_RECORDS, [i.tenant_id for i in items], [i.internal_id for i in items])
    out = []
    for item, row in zip(items, rows, strict=True):
        status, replays = row["status"], row["replays"]
        if status == "sent":
            outcome = "sent"
        elif status in ("dead", "dying") and (replays or 0) > item.replays_before:
            outcome = "dead"
        else:
            outcome = "pending"
        dead = outcome == "dead"
        out.append(
            Outcome(
                item=item,
                outcome=outcome,
                tenant_id=row["tenant_id"],
                status=status,
                wamid=row["wamid"],
                category=row["last_error_category"] if dead else None,
                code=row["last_error_code"] if dead else None,
                error=row["last_error_message"] if dead else None,
            )
        )
    return out


def counts(found: Sequence[Outcome]) -> dict[str, int]:
    """How many are sent, dead again and pending."""
    counted = Counter(o.outcome for o in found)
    return {name: counted[name] for name in OUTCOMES}


async def settled(
    db: Rows,
    items: Sequence[CanaryItem],
    *,
    wait: float,
    seen: Callable[[list[Outcome]], None] | None = None,
) -> list[Outcome]:
    """The outcomes once none is pending, or as they are after ``wait`` seconds (a deadline
    of the polling, not of one query: each look is one short query).

    ``seen`` is called after each look, for progress.
    """
    deadline = time.monotonic() + wait
    while True:
        found = await outcomes(db, items)
        if seen is not None:
            seen(found)
        if all(o.outcome != "pending" for o in found) or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
