"""Failures after acceptance, read from ``wa_deliveries`` for ``failures stats|list|show``
(SPEC §13). Off the hot path: each runs from the CLI on a connection of its own.

A failure is a row with a ``failed_at`` (only ``failed`` has one, and it is final); every
query says so literally, so PostgreSQL
can use the partial index on ``failed_at`` (``--since`` and ``--older-than`` are ranges on
it). Failures are selected by the DLQ's own ``Filter`` and grouped by the DLQ's fingerprint,
so both group causes by one rule (category + code + masked text). The text is Meta's most
specific one: ``error_data.details`` (stored as ``error_message``), else the title. Its
masking is Python's, so a ``--fingerprint`` filter is first turned into the (category, code,
text) triples that have it, and those go to SQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..dlq.inspect import Group
from ..dlq.record import fingerprint, normalise
from .queries import Connection

if TYPE_CHECKING:
    from ..dlq.filters import Filter

_MAX_GROUPS = 10_000  # distinct fingerprints remembered, as in `dlq stats`
_CURSOR_PREFETCH = 1_000

# Defaults as the DLQ gives them, so a filter value means the same in both.
_CATEGORY = "COALESCE(d.error_category, 'unknown')"
_CODE = "COALESCE(d.error_code, '-')"
_TEXT = "COALESCE(d.error_message, d.error_title, '')"
# A status waiting for its send has no message yet: no tenant, no type. Both are shown as
# "-", and a filter of "-" selects them.
NONE = "-"
_TENANT = f"COALESCE(d.tenant_id, '{NONE}')"
_TYPE = f"COALESCE(m.type, '{NONE}')"
_FROM = """
FROM wa_deliveries d
LEFT JOIN wa_messages m ON m.tenant_id = d.tenant_id AND m.internal_id = d.internal_id
"""
# (category, code, text) among given arrays of each: the causes a --fingerprint matched.
_CAUSES = f"({_CATEGORY}, {_CODE}, {_TEXT}) IN (SELECT * FROM unnest({{}}))"  # noqa: S608
_COLUMNS = f"""
d.wamid, d.tenant_id, d.internal_id, m.type, d.recipient, d.phone_number_id,
{_CATEGORY} AS category, {_CODE} AS code, {_TEXT} AS text, d.error_title AS title,
d.error_message AS message, d.failed_at, d.accepted_at, d.callback
"""


class _Where:
    """The conditions of one selection of failures, its values passed as parameters."""

    def __init__(self, selection: Filter) -> None:
        self.args: list[Any] = []
        self._conditions = ["d.failed_at IS NOT NULL"]  # the partial index's own predicate
        if selection.since is not None:
            self._add("d.failed_at >= {}", selection.since)
        if selection.before is not None:
            self._add("d.failed_at < {}", selection.before)
        if selection.tenants:
            self._add(f"{_TENANT} = ANY({{}}::text[])", sorted(selection.tenants))
        if selection.categories:
            self._add(f"{_CATEGORY} = ANY({{}}::text[])", sorted(selection.categories))
        if selection.codes:
            self._add(f"{_CODE} = ANY({{}}::text[])", sorted(selection.codes))
        if selection.types:
            self._add(f"{_TYPE} = ANY({{}}::text[])", sorted(selection.types))
        if selection.ids:
            ids = sorted(selection.ids)
            self._add("(d.internal_id = ANY({0}::text[]) OR d.wamid = ANY({0}))", ids)

    def _add(self, template: str, value: Any) -> None:
        self.args.append(value)
        self._conditions.append(template.format(f"${len(self.args)}"))

    def causes(self, triples: Sequence[tuple[str, str, str]]) -> None:
        """Only these (category, code, text): the ones a ``--fingerprint`` matched."""
        columns = [list(column) for column in zip(*triples, strict=True)]
        first = len(self.args) + 1
        self.args.extend(columns)
        arrays = f"${first}::text[], ${first + 1}::text[], ${first + 2}::text[]"
        self._conditions.append(_CAUSES.format(arrays))

    @property
    def sql(self) -> str:
        return " AND ".join(self._conditions)


async def _select(conn: Connection, selection: Filter) -> _Where | None:
    """The selection as SQL; ``None`` when a fingerprint filter matches no failure at all."""
    where = _Where(selection)
    if not selection.fingerprints:
        return where
    sql = f"SELECT {_CATEGORY}, {_CODE}, {_TEXT} {_FROM} WHERE {where.sql} GROUP BY 1, 2, 3"
    matching = [
        (category, code, text)
        for category, code, text in await conn.fetch(sql, *where.args)
        if fingerprint(category, code, text).startswith(selection.fingerprints)
    ]
    if not matching:
        return None
    where.causes(matching)
    return where


def _row(record: Any) -> dict[str, Any]:
    row = dict(record)
    row["fingerprint"] = fingerprint(row["category"], row["code"], row.pop("text"))
    return row


@dataclass(slots=True)
class FailureStats:
    """Counts of the matching failures by every dimension ``dlq stats`` groups by."""

    matched: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_tenant: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    groups: dict[str, Group] = field(default_factory=dict)
    other_groups: int = 0
    oldest: dict[str, Any] | None = None

    def add(
        self, tenant: str | None, type_: str | None, cause: tuple[str, str, str], n: int
    ) -> None:
        """Count ``n`` failures of one tenant, type and (category, code, text)."""
        category, code, text = cause
        self.matched += n
        self.by_category[category] += n
        self.by_code[code] += n
        self.by_tenant[tenant or NONE] += n
        self.by_type[type_ or NONE] += n
        key = fingerprint(category, code, text)
        group = self.groups.get(key)
        if group is None and len(self.groups) >= _MAX_GROUPS:
            self.other_groups += n
            return
        if group is None:
            group = self.groups[key] = Group(key, category, code, normalise(text), text)
        group.count += n
        if tenant:
            group.tenants.add(tenant)

    def ranked_groups(self) -> list[Group]:
        return sorted(self.groups.values(), key=lambda g: (-g.count, g.fingerprint))

    def oldest_age_seconds(self, now: datetime | None = None) -> float | None:
        at: datetime | None = None if self.oldest is None else self.oldest["failed_at"]
        if at is None:
            return None
        return ((now or datetime.now(UTC)) - at).total_seconds()

    def to_json(self) -> dict[str, Any]:
        oldest = self.oldest
        return {
            "matched": self.matched,
            "oldest": None
            if oldest is None
            else {
                "wamid": oldest["wamid"],
                "tenant_id": oldest["tenant_id"],
                "internal_id": oldest["internal_id"],
                "failed_at": oldest["failed_at"],
                "age_seconds": self.oldest_age_seconds(),
            },
            "by_category": dict(self.by_category.most_common()),
            "by_code": dict(self.by_code.most_common()),
            "by_tenant": dict(self.by_tenant.most_common()),
            "by_type": dict(self.by_type.most_common()),
            "by_fingerprint": [g.to_json() for g in self.ranked_groups()],
            "other_fingerprints": self.other_groups,
        }


async def failure_stats(conn: Connection, selection: Filter) -> FailureStats:
    """Counts of the failures matching ``selection``, and the oldest of them."""
    stats = FailureStats()
    where = await _select(conn, selection)
    if where is None:
        return stats
    # Grouped in SQL by everything but the text's masking, so rows travel once per cause and
    # tenant, not once per failure; read through a cursor, so memory stays bounded.
    grouped = (
        f"SELECT d.tenant_id, m.type, {_CATEGORY}, {_CODE}, {_TEXT}, count(*) {_FROM} "
        f"WHERE {where.sql} GROUP BY 1, 2, 3, 4, 5"
    )
    async with conn.transaction(readonly=True):
        cursor = conn.cursor(grouped, *where.args, prefetch=_CURSOR_PREFETCH)
        async for tenant, type_, category, code, text, n in cursor:
            stats.add(tenant, type_, (category, code, text), n)
    if stats.matched:
        oldest = f"SELECT {_COLUMNS} {_FROM} WHERE {where.sql} ORDER BY d.failed_at LIMIT 1"
        found = await conn.fetchrow(oldest, *where.args)
        stats.oldest = _row(found) if found is not None else None
    return stats


@dataclass(frozen=True, slots=True)
class FailurePage:
    """The page of matching failures asked for (newest first), and how many matched."""

    offset: int
    limit: int
    matched: int
    records: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "offset": self.offset,
            "limit": self.limit,
            "records": self.records,
        }


async def failure_page(
    conn: Connection, selection: Filter, *, limit: int = 50, offset: int = 0
) -> FailurePage:
    """The ``limit`` newest matching failures after the first ``offset``."""
    where = await _select(conn, selection)
    if where is None:
        return FailurePage(offset, limit, 0, [])
    matched = await conn.fetchval(f"SELECT count(*) {_FROM} WHERE {where.sql}", *where.args)
    n = len(where.args)
    page = (
        f"SELECT {_COLUMNS} {_FROM} WHERE {where.sql} "
        f"ORDER BY d.failed_at DESC, d.wamid LIMIT ${n + 1} OFFSET ${n + 2}"
    )
    rows = await conn.fetch(page, *where.args, limit, offset)
    return FailurePage(offset, limit, matched, [_row(r) for r in rows])


_DETAIL = f"""
SELECT {_COLUMNS}, d.status, d.sent_at, d.delivered_at, d.read_at, d.received_at
{_FROM}
WHERE d.failed_at IS NOT NULL AND (d.wamid = $1 OR (d.tenant_id, d.internal_id) IN (
    SELECT tenant_id, internal_id FROM wa_messages WHERE internal_id = $1))
ORDER BY d.tenant_id, d.failed_at, d.wamid
"""  # noqa: S608 - built from this module's constants; the key is a parameter


async def failure_detail(conn: Connection, key: str) -> list[dict[str, Any]]:
    """The failed deliveries of a wamid, or of every tenant's message with this internalId."""
    return [_row(r) for r in await conn.fetch(_DETAIL, key)]
