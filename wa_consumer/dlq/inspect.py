"""Read-only looks at the DLQ: ``stats``, ``list`` and ``show``.

Each is one pass (see ``sweep``) in which every message is kept; what is remembered is only
the aggregates or the page asked for, so the memory used does not grow with the queue.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from .filters import Filter
from .record import DeadRecord, describe, json_safe, normalise, read_body
from .sweep import KEEP, Action, DeadLetterPass, Decide, PassOptions, PassReport, Progress

_MAX_GROUPS = 10_000  # distinct fingerprints remembered; more are counted as "other"
_MAX_TENANTS_PER_GROUP = 1_000


@dataclass(slots=True)
class Group:
    """One failure cause: every message with the same fingerprint."""

    fingerprint: str
    category: str
    code: str
    pattern: str
    sample: str
    count: int = 0
    tenants: set[str] = field(default_factory=set)
    tenant_count: int | None = None  # distinct tenants, when ``tenants`` holds only the top few

    def distinct_tenants(self) -> int:
        return len(self.tenants) if self.tenant_count is None else self.tenant_count

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "category": self.category,
            "code": self.code,
            "count": self.count,
            "tenants": self.distinct_tenants(),
            "pattern": self.pattern,
            "sample": self.sample,
        }


@dataclass(slots=True)
class Stats:
    """Counts of the matching dead messages, by every dimension an operator groups by."""

    queue: str
    report: PassReport = field(default_factory=PassReport)
    matched: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    groups: dict[str, Group] = field(default_factory=dict)
    other_groups: int = 0
    oldest: DeadRecord | None = None

    def add(self, record: DeadRecord) -> None:
        self.matched += 1
        self.by_category[record.category] += 1
        self.by_code[record.code] += 1
        self.by_tenant[record.tenant or "-"] += 1
        self.by_type[record.type] += 1
        group = self.groups.get(record.fingerprint)
        if group is None:
            if len(self.groups) >= _MAX_GROUPS:
                self.other_groups += 1
                group = None
            else:
                group = self.groups[record.fingerprint] = Group(
                    record.fingerprint,
                    record.category,
                    record.code,
                    normalise(record.message),
                    record.message,
                )
        if group is not None:
            group.count += 1
            if record.tenant and len(group.tenants) < _MAX_TENANTS_PER_GROUP:
                group.tenants.add(record.tenant)
        if record.failed_at is not None and (
            self.oldest is None
            or self.oldest.failed_at is None
            or record.failed_at < self.oldest.failed_at
        ):
            self.oldest = record

    def oldest_age_seconds(self, now: datetime | None = None) -> float | None:
        if self.oldest is None or self.oldest.failed_at is None:
            return None
        return ((now or datetime.now(UTC)) - self.oldest.failed_at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        oldest = self.oldest
        return {
            "source": "queue",
            "queue": self.queue,
            "messages": self.report.seen,
            "matched": self.matched,
            "oldest": None
            if oldest is None
            else {
                "internal_id": oldest.internal_id,
                "failed_at": oldest.failed_at.isoformat() if oldest.failed_at else None,
                "age_seconds": self.oldest_age_seconds(),
            },
            "by_category": dict(self.by_category.most_common()),
            "by_code": dict(self.by_code.most_common()),
            "by_tenant": dict(self.by_tenant.most_common()),
            "by_type": dict(self.by_type.most_common()),
            "by_fingerprint": [g.to_json() for g in self.ranked_groups()],
            "other_fingerprints": self.other_groups,
        }

    def ranked_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.fingerprint))


Look = Callable[[AbstractIncomingMessage, DeadRecord], None]


def _keep_all(look: Look) -> Decide:
    """A ``decide`` that lets ``look`` see each record and keeps every message."""

    async def decide(batch: Sequence[AbstractIncomingMessage], first: int) -> list[Action]:
        for offset, delivery in enumerate(batch):
            look(delivery, describe(delivery, first + offset))
        return [KEEP] * len(batch)

    return decide


async def stats(
    connection: AbstractConnection,
    queue: str,
    selection: Filter,
    *,
    options: PassOptions | None = None,
    progress: Progress | None = None,
) -> Stats:
    """Counts of the dead messages matching ``selection``; the queue is left as it was."""
    result = Stats(queue)

    def look(_: AbstractIncomingMessage, record: DeadRecord) -> None:
        if selection.matches(record):
            result.add(record)

    sweep = DeadLetterPass(connection, queue, _keep_all(look), options=options, progress=progress)
    result.report = await sweep.run()
    return result


@dataclass(slots=True)
class Page:
    """The page of matching dead messages asked for, and how many matched in all."""

    queue: str
    offset: int
    limit: int
    report: PassReport = field(default_factory=PassReport)
    matched: int = 0
    records: list[DeadRecord] = field(default_factory=list)
    # "queue": a pass, in queue order; "ledger": the ledger's mirror, newest first (each
    # record's ``position`` is then its place in this listing, and ``ids`` its row ids).
    source: str = "queue"
    ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        records = [r.to_json() for r in self.records]
        for record, dead_id in zip(records, self.ids, strict=False):
            record["id"] = dead_id
        return {
            "source": self.source,
            "queue": self.queue,
            "messages": self.report.seen,
            "matched": self.matched,
            "offset": self.offset,
            "limit": self.limit,
            "records": records,
        }


async def list_page(
    connection: AbstractConnection,
    queue: str,
    selection: Filter,
    *,
    limit: int = 50,
    offset: int = 0,
    options: PassOptions | None = None,
    progress: Progress | None = None,
) -> Page:
    """The ``limit`` matching messages after the first ``offset``, in queue order."""
    page = Page(queue, offset, limit)

    def look(_: AbstractIncomingMessage, record: DeadRecord) -> None:
        if selection.matches(record):
            if offset <= page.matched < offset + limit:
                page.records.append(record)
            page.matched += 1

    sweep = DeadLetterPass(connection, queue, _keep_all(look), options=options, progress=progress)
    page.report = await sweep.run()
    return page


def detail(delivery: AbstractIncomingMessage, record: DeadRecord) -> dict[str, Any]:
    """Everything about one dead message: record, properties, headers and body."""
    body = read_body(delivery.body)
    return {
        **record.to_json(),
        "properties": json_safe(
            {
                "content_type": delivery.content_type,
                "content_encoding": delivery.content_encoding,
                "delivery_mode": int(delivery.delivery_mode) if delivery.delivery_mode else None,
                "message_id": delivery.message_id,
                "correlation_id": delivery.correlation_id,
                "timestamp": delivery.timestamp,
                "type": delivery.type,
                "app_id": delivery.app_id,
            }
        ),
        "headers": json_safe(dict(delivery.headers or {})),
        "body": body if body is not None else delivery.body.decode("utf-8", "replace"),
    }


async def show(
    connection: AbstractConnection,
    queue: str,
    internal_id: str,
    *,
    options: PassOptions | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any] | None, int]:
    """The first dead message with this id (internalId or message_id) and how many copies."""
    found: list[dict[str, Any]] = []
    copies = 0

    def look(delivery: AbstractIncomingMessage, record: DeadRecord) -> None:
        nonlocal copies
        if internal_id in record.ids():
            copies += 1
            if not found:
                found.append(detail(delivery, record))

    await DeadLetterPass(
        connection, queue, _keep_all(look), options=options, progress=progress
    ).run()
    return (found[0] if found else None), copies
