"""What the console shows: the overview, a group's page, one message, a job.

Everything comes from PostgreSQL (the ledger's mirror of the DLQ, its failures after
acceptance, the tenant controls, the audit trail) but the queue depths, read with a passive
declare each (a count, no message touched). Each section of the overview is read on its own:
one that fails (the broker away, a table not migrated yet) shows its error, the others still
show.

A number's send rate is counted from ``wa_deliveries``: every send Meta accepted writes its
row there, and the BRIN index on ``received_at`` finds the last seconds' rows by reading a
few pages. ``wa_messages`` has no index on a time a send changes (0002 dropped it to keep
the daemon's updates in place), so counting there would read the whole table on each look.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import aiormq
import asyncpg

from ..dlq import canary
from ..dlq.filters import Filter
from ..errors import WaConsumerError
from ..ledger.audit import recent_actions
from ..ledger.deliveries import failure_stats
from ..topology import Topology
from .problems import NotFound
from .shown import pretty_body, scrub

if TYPE_CHECKING:
    from ..ledger.dead import DeadDetail, DeadGroup, DeadRow
    from .jobs import ReplayJob
    from .state import Console

T = TypeVar("T")

RATE_WINDOW: Final = 10.0  # seconds of sends a number's current rate is counted over
PAGE_SIZE: Final = 50
_GROUPS: Final = 50
_FAILURE_GROUPS: Final = 20
_ACTIONS: Final = 20
_RATES = """
SELECT m.phone_number_id, m.tenant_id, count(*) AS sent
FROM wa_deliveries d
JOIN wa_messages m ON m.tenant_id = d.tenant_id AND m.internal_id = d.internal_id
WHERE d.received_at > now() - make_interval(secs => $1) AND d.accepted_at IS NOT NULL
GROUP BY 1, 2
ORDER BY 3 DESC, 1, 2
LIMIT 200
"""


@dataclass(frozen=True, slots=True)
class QueueDepth:
    name: str
    role: str  # main | dead | wait
    messages: int | None  # None: the queue does not exist
    consumers: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "messages": self.messages,
            "consumers": self.consumers,
        }


@dataclass(frozen=True, slots=True)
class NumberRate:
    phone_number_id: str | None  # None: the tenant's own number (the message named none)
    tenant_id: str
    per_second: float
    limit: float  # 0: no limit

    def to_json(self) -> dict[str, Any]:
        return {
            "phone_number_id": self.phone_number_id,
            "tenant_id": self.tenant_id,
            "per_second": self.per_second,
            "limit": self.limit,
        }


@dataclass(slots=True)
class Section:
    """One part of the overview: its value, or why it could not be read."""

    value: Any = None
    error: str | None = None


@dataclass(slots=True)
class Overview:
    filters: dict[str, Any]
    dead: Section = field(default_factory=Section)  # DeadStats
    failures: Section = field(default_factory=Section)  # FailureStats
    queues: Section = field(default_factory=Section)  # list[QueueDepth]
    tenants: Section = field(default_factory=Section)  # list[TenantState]
    rates: Section = field(default_factory=Section)  # list[NumberRate]
    actions: Section = field(default_factory=Section)  # list[Action]

    def to_json(self) -> dict[str, Any]:
        dead = self.dead.value
        failures = self.failures.value
        return {
            "filters": self.filters,
            "dead": None if dead is None else dead_stats_json(dead),
            "failures": None
            if failures is None
            else {
                "total": failures.matched,
                "oldest_age_seconds": failures.oldest_age_seconds(),
                "groups": [
                    {**g.to_json(), "tenants": sorted(g.tenants)}
                    for g in failures.ranked_groups()[:_FAILURE_GROUPS]
                ],
            },
            "queues": _each(self.queues.value),
            "tenants": _each(self.tenants.value),
            "rates": _each(self.rates.value),
            "actions": _each(self.actions.value),
            "errors": {
                name: section.error
                for name, section in self._sections()
                if section.error is not None
            },
        }

    def _sections(self) -> list[tuple[str, Section]]:
        return [
            ("dead", self.dead), ("failures", self.failures), ("queues", self.queues),
            ("tenants", self.tenants), ("rates", self.rates), ("actions", self.actions),
        ]  # fmt: skip


def _each(items: list[Any] | None) -> list[Any] | None:
    return None if items is None else [i.to_json() for i in items]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def age_seconds(at: datetime | None) -> float | None:
    return None if at is None else max(0.0, (datetime.now(UTC) - at).total_seconds())


def group_json(g: DeadGroup) -> dict[str, Any]:
    return {
        "fingerprint": g.fingerprint,
        "category": g.category,
        "code": g.code,
        "message": g.message,
        "count": g.count,
        "tenants": g.tenants,
        "tenant_count": g.tenant_count,
        "types": g.types,
        "first_seen": _iso(g.first_seen),
        "last_seen": _iso(g.last_seen),
        "hourly": g.hourly,
    }


def dead_stats_json(stats: Any) -> dict[str, Any]:
    return {
        "total": stats.total,
        "oldest": _iso(stats.oldest),
        "oldest_age_seconds": age_seconds(stats.oldest),
        "by_category": dict(stats.by_category.most_common()),
        "by_code": dict(stats.by_code.most_common()),
        "by_tenant": dict(stats.by_tenant.most_common()),
        "by_type": dict(stats.by_type.most_common()),
        "group_count": stats.group_count,
        "groups": [group_json(g) for g in stats.groups],
    }


def row_json(r: DeadRow) -> dict[str, Any]:
    return {
        "id": r.id,
        "tenant_id": r.tenant_id,
        "internal_id": r.internal_id,
        "fingerprint": r.fingerprint,
        "category": r.category,
        "code": r.code,
        "subcode": r.subcode,
        "message": scrub(r.message),
        "type": r.type,
        "phone_number_id": r.phone_number_id,
        "died_at": r.died_at.isoformat(),
        "retries": r.retries,
        "replays": r.replays,
    }


async def _section(section: Section, read: Callable[[], Awaitable[Any]]) -> None:
    try:
        section.value = await read()
    except (WaConsumerError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        section.error = str(exc) or type(exc).__name__
    except aiormq.exceptions.AMQPError as exc:
        section.error = f"RabbitMQ: {type(exc).__name__}: {exc}"


async def overview(console: Console, selection: Filter, filters: dict[str, Any]) -> Overview:
    """Every section of the overview, read at once."""
    view = Overview(filters)

    async def failures() -> Any:
        async with console.db.acquire() as connection:
            return await failure_stats(connection, selection)

    await asyncio.gather(
        _section(view.dead, lambda: console.dead.stats(selection, groups=_GROUPS)),
        _section(view.failures, failures),
        _section(view.queues, lambda: queue_depths(console)),
        _section(view.tenants, lambda: console.controls.states()),
        _section(view.rates, lambda: send_rates(console)),
        _section(view.actions, lambda: recent_actions(console.db, _ACTIONS)),
    )
    return view


async def queue_depths(console: Console) -> list[QueueDepth]:
    """Messages in the main queue, the DLQ and each wait queue (a passive declare each)."""
    s = console.settings
    named = [(s.queue, "main"), (s.dead_letter_queue, "dead")]
    named += [(name, "wait") for name in Topology.from_settings(s).retry_queues.values()]
    out = []
    for name, role in named:
        # One channel each: a queue that is missing closes the channel that asked.
        channel = await console.broker.channel()
        try:
            queue = await asyncio.wait_for(channel.declare_queue(name, passive=True), 5)
            result = queue.declaration_result
            out.append(QueueDepth(name, role, result.message_count, result.consumer_count))
        except aiormq.exceptions.ChannelNotFoundEntity:
            out.append(QueueDepth(name, role, None, None))
        finally:
            if not channel.is_closed:
                await channel.close()
    return out


async def send_rates(console: Console) -> list[NumberRate]:
    """Each number's sends per second over the last ``RATE_WINDOW`` seconds, and its limit."""
    s = console.settings
    rows = await console.db.fetch(_RATES, RATE_WINDOW)
    return [
        NumberRate(
            phone_number_id=r["phone_number_id"],
            tenant_id=r["tenant_id"],
            per_second=round(r["sent"] / RATE_WINDOW, 1),
            limit=s.number_rates.get(r["phone_number_id"] or "", s.number_rate),
        )
        for r in rows
    ]


@dataclass(slots=True)
class GroupPage:
    fingerprint: str
    group: DeadGroup | None  # None: nothing of it is dead any more
    rows: list[DeadRow]
    next_before: int | None  # the id to ask for the next page with

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "group": None if self.group is None else group_json(self.group),
            "messages": [row_json(r) for r in self.rows],
            "next_before": self.next_before,
        }


async def group_page(
    console: Console, fingerprint: str, *, before: int | None, limit: int = PAGE_SIZE
) -> GroupPage:
    """One page of a group's dead messages, newest first (keyset: ``before`` an id)."""
    selection = Filter(fingerprints=(fingerprint,))
    groups = await console.dead.groups(selection, limit=1)
    rows = await console.dead.page(selection, before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    group = next((g for g in groups if g.fingerprint == fingerprint), None)
    if group is None and not rows and before is None:
        raise NotFound(f"no dead messages in group {fingerprint}")
    return GroupPage(fingerprint, group, rows, rows[-1].id if more else None)


@dataclass(slots=True)
class MessageView:
    detail: DeadDetail
    body_text: str
    body_json: Any  # None: the body is not JSON
    headers: dict[str, Any]
    attempts: list[dict[str, Any]]
    record: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        d = self.detail
        return {
            **row_json(d.row),
            "state": d.state,
            "resolution": d.resolution,
            "body": self.body_json if self.body_json is not None else self.body_text,
            "body_bytes": d.body_bytes,
            "headers": self.headers,
            "attempts": self.attempts,
            "record": self.record,
        }


async def message_view(console: Console, dead_id: int) -> MessageView:
    """One dead message: its body pretty-printed, headers and ledger rows, secrets masked."""
    detail = await console.dead.detail(dead_id)
    if detail is None:
        raise NotFound(f"no dead message {dead_id} in the ledger")
    text, parsed = pretty_body(detail.body)
    return MessageView(
        detail=detail,
        body_text=text,
        body_json=parsed,
        headers=scrub(detail.headers),
        attempts=[scrub(a) for a in detail.attempts],
        record=None if detail.record is None else scrub(detail.record),
    )


async def job_view(console: Console, job: ReplayJob) -> dict[str, Any]:
    """A group replay with its canary's outcomes, counted."""
    found = await canary.outcomes(console.db, job.canary)
    return {
        **job.to_json(),
        "canary": [o.to_json() for o in found],
        "canary_outcomes": canary.counts(found),
    }
