"""The dead letters as the ledger mirrors them (``wa_dead``): stats, groups, pages, details.

The daemon writes one row per death whose copy went to the DLQ (``dead_write``); replay and
purge take rows out of state ``dead``. Everything here reads rows in state ``dead`` only, so
``dlq stats | list | show`` and the console's pages never touch the queue.

Where a filter names nothing but tenants, categories, codes, types and fingerprints, counts
come from ``wa_dead_groups`` (counters kept by the same statements that write ``wa_dead``)
instead of a million rows; ids and times need the rows themselves. The statements, and a
filter in SQL, are in ``dead_sql``. docs/LEDGER.md has the measured figures.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import orjson

from ..dlq.record import UNREADABLE
from ..errors import LedgerUnavailable
from . import dead_sql as q
from .dead_sql import COUNTERS, ROWS, Params, Source, filter_sql, needs_rows, whole

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    from ..dlq.filters import Filter

Db: TypeAlias = "asyncpg.Pool | asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
T = TypeVar("T")

#: States a row leaves ``dead`` for: replayed, purged (resolved), or edited and sent anew.
STATES: Final = frozenset({"replayed", "resolved", "edited"})
_TOP_TENANTS = 5
_HOURS = 24


@dataclass(frozen=True, slots=True)
class DeadGroup:
    """One failure cause (a fingerprint) among the dead messages."""

    fingerprint: str
    category: str
    code: str
    message: str  # a sample: the text of one of its deaths
    count: int
    tenants: list[str]  # the most frequent few
    types: list[str]
    first_seen: datetime
    last_seen: datetime
    hourly: list[int]  # deaths per hour over the last 24 h, oldest hour first
    tenant_count: int = 0  # distinct tenants in all


@dataclass(frozen=True, slots=True)
class DeadRow:
    """One dead message, as a page lists it."""

    id: int
    tenant_id: str | None
    internal_id: str | None
    fingerprint: str
    category: str
    code: str
    message: str
    type: str | None
    phone_number_id: str | None
    died_at: datetime
    retries: int
    replays: int
    subcode: int | None = None
    routing_key: str | None = None


@dataclass(frozen=True, slots=True)
class DeadDetail:
    """Everything about one death: its row, the copy's headers, the body, the ledger's record."""

    row: DeadRow
    body: bytes
    headers: dict[str, Any]
    state: str
    resolution: str | None
    attempts: list[dict[str, Any]]  # wa_attempts of (tenant, internal_id), oldest first
    record: dict[str, Any] | None  # the wa_messages row
    body_bytes: int = 0  # the original body's size (``body`` is cut past the maximum)
    resolved_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeadStats:
    """Counts of the matching dead messages by every dimension an operator groups by."""

    total: int
    by_category: Counter[str]
    by_code: Counter[str]
    by_tenant: Counter[str]
    by_type: Counter[str]
    oldest: datetime | None
    groups: list[DeadGroup]  # the largest first, at most the number asked for
    group_count: int = 0  # distinct fingerprints in all
    oldest_internal_id: str | None = None


DeadKey: TypeAlias = tuple[str | None, str, str | None, int]
"""(tenant_id, internal_id, fingerprint, replays) of a message read from the DLQ; None: not
known."""


@dataclass(slots=True)
class _Ranked:
    fingerprint: str
    category: str
    code: str
    count: int
    tenants: int


def _row(r: Any) -> DeadRow:
    return DeadRow(
        id=r["id"],
        tenant_id=r["tenant_id"],
        internal_id=r["internal_id"],
        fingerprint=r["fingerprint"],
        category=r["category"],
        code=r["code"],
        message=r["message"],
        type=r["type"],
        phone_number_id=r["phone_number_id"],
        died_at=r["died_at"],
        retries=r["retries"],
        replays=r["replays"],
        subcode=r["subcode"],
        routing_key=r["routing_key"],
    )


def _jsonb(value: Any) -> Any:
    # jsonb comes back as text without a codec (the CLI's connections set none).
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _source(f: Filter) -> tuple[Source, str, Params]:
    """Where ``f``'s counts come from, its conditions there, and their parameters."""
    params = Params()
    source = ROWS if needs_rows(f) else COUNTERS
    return source, filter_sql(f, params, counters=source.counters), params


def _on(sql: str, source: Source, **more: str) -> str:
    return sql.format(table=source.table, live=source.live, weight=source.weight, **more)


class DeadLetters:
    """Reads (and marks) the DLQ's mirror in the ledger, on a pool or one connection."""

    def __init__(self, db: Db) -> None:
        self._db = db

    # -- reading -------------------------------------------------------------------------------

    async def stats(self, f: Filter, *, groups: int = 50) -> DeadStats:
        """Counts of the dead messages matching ``f``; the ``groups`` largest groups in full."""
        source, where, params = _source(f)
        sql = _on(q.BREAKDOWN, source, where=where)
        by: dict[int, Counter[str]] = defaultdict(Counter)
        for r in await self._guard(self._db.fetch(sql, *params.values)):
            name = {
                q.BY_CATEGORY: r["category"],
                q.BY_CODE: r["code"],
                q.BY_TENANT: r["tenant_id"] or "-",
                q.BY_TYPE: r["type"] or UNREADABLE,
            }.get(r["set"])
            if name is not None:
                by[r["set"]][name] += r["n"]
        total = sum(by[q.BY_CATEGORY].values())
        ranked, group_count = await self._ranked(f, groups) if total else ([], 0)
        oldest = None
        if total:
            params = Params()
            sql = q.OLDEST.format(where=filter_sql(f, params))
            oldest = await self._guard(self._db.fetchrow(sql, *params.values))
        return DeadStats(
            total=total,
            by_category=by[q.BY_CATEGORY],
            by_code=by[q.BY_CODE],
            by_tenant=by[q.BY_TENANT],
            by_type=by[q.BY_TYPE],
            oldest=oldest["died_at"] if oldest else None,
            groups=await self._decorate(f, ranked),
            group_count=group_count,
            oldest_internal_id=oldest["internal_id"] if oldest else None,
        )

    async def groups(self, f: Filter, limit: int = 50) -> list[DeadGroup]:
        """The failure causes among the dead messages matching ``f``, largest first."""
        ranked, _ = await self._ranked(f, limit)
        return await self._decorate(f, ranked)

    async def count(self, f: Filter) -> int:
        """How many dead messages match ``f``."""
        source, where, params = _source(f)
        sql = _on(q.COUNT, source, where=where)
        return int(await self._guard(self._db.fetchval(sql, *params.values)))

    async def page(
        self, f: Filter, *, before_id: int | None = None, limit: int = 50, offset: int = 0
    ) -> list[DeadRow]:
        """The matching dead messages, newest first: pass the last row's id as ``before_id``
        for the next page (``offset`` skips rows after that, for the CLI's ``--offset``)."""
        if f.fingerprints and not whole(f.fingerprints):
            # Prefixes become the whole fingerprints they stand for: one is an equality the
            # group index answers in id order, where a LIKE would sort the whole group.
            f = await self._whole_prints(f)
            if not f.fingerprints:
                return []
        params = Params()
        where = filter_sql(f, params)
        if before_id is not None:
            where += f" AND w.id < {params.add(before_id)}"
        sql = q.PAGE.format(
            row=q.ROW, where=where, limit=params.add(limit), offset=params.add(offset)
        )
        return [_row(r) for r in await self._guard(self._db.fetch(sql, *params.values))]

    async def detail(self, dead_id: int) -> DeadDetail | None:
        """One death in full (in any state), with the ledger's record and attempts."""
        r = await self._guard(self._db.fetchrow(q.BY_ID, dead_id))
        if r is None:
            return None
        attempts: list[dict[str, Any]] = []
        record: dict[str, Any] | None = None
        if r["tenant_id"] is not None and r["internal_id"] is not None:
            key = (r["tenant_id"], r["internal_id"])
            attempts = [dict(a) for a in await self._guard(self._db.fetch(q.ATTEMPTS, *key))]
            found = await self._guard(self._db.fetchrow(q.RECORD, *key))
            if found is not None:
                record = dict(found)
                record["metadata"] = _jsonb(record.get("metadata"))
        return DeadDetail(
            row=_row(r),
            body=bytes(r["body"]),
            headers=_jsonb(r["headers"]) or {},
            state=r["state"],
            resolution=r["resolution"],
            attempts=attempts,
            record=record,
            body_bytes=r["body_bytes"],
            resolved_at=r["resolved_at"],
        )

    async def by_internal_id(self, internal_id: str, tenant_id: str | None = None) -> list[DeadRow]:
        """The rows in state ``dead`` of this internalId (of this tenant), oldest first."""
        rows = await self._guard(self._db.fetch(q.BY_KEY, internal_id, tenant_id))
        return [_row(r) for r in rows]

    # -- marking -------------------------------------------------------------------------------

    async def mark(self, ids: Sequence[int], state: str, resolution: str | None) -> int:
        """Take these rows out of state ``dead`` (``replayed``, ``resolved`` or ``edited``);
        returns how many were still dead."""
        if not ids:
            return 0
        sql = q.MARK.format(pick=q.PICK_IDS, state="$2", resolution="$3")
        return await self._marked(self._db.fetchval(sql, list(ids), _state(state), resolution))

    async def mark_keys(self, keys: Sequence[DeadKey], state: str, resolution: str | None) -> int:
        """``mark`` for messages read from the DLQ, one row each (see ``PICK_KEYS``)."""
        if not keys:
            return 0
        tenants, internal_ids, prints, replays = (list(c) for c in zip(*keys, strict=True))
        sql = q.MARK.format(pick=q.PICK_KEYS, state="$5", resolution="$6")
        work = self._db.fetchval(
            sql, tenants, internal_ids, prints, replays, _state(state), resolution
        )
        return await self._marked(work)

    async def _marked(self, work: Awaitable[Any]) -> int:
        changed = int(await self._guard(work) or 0)
        if changed:
            await self._guard(self._db.execute(q.TIDY))
        return changed

    # -- internals -----------------------------------------------------------------------------

    async def _ranked(self, f: Filter, limit: int) -> tuple[list[_Ranked], int]:
        """The ``limit`` largest groups, and how many groups there are."""
        source, where, params = _source(f)
        sql = _on(q.GROUPS, source, where=where, limit=params.add(limit))
        rows = await self._guard(self._db.fetch(sql, *params.values))
        ranked = [
            _Ranked(r["fingerprint"], r["category"], r["code"], r["n"], r["tenants"]) for r in rows
        ]
        return ranked, rows[0]["groups"] if rows else 0

    async def _whole_prints(self, f: Filter) -> Filter:
        params = Params()
        counted = replace(f, ids=frozenset(), since=None, before=None)
        sql = q.PRINTS.format(where=filter_sql(counted, params, counters=True))
        rows = await self._guard(self._db.fetch(sql, *params.values))
        return replace(f, fingerprints=tuple(sorted(r["fingerprint"] for r in rows)))

    async def _decorate(self, f: Filter, ranked: list[_Ranked]) -> list[DeadGroup]:
        """Sample, tenants, types, first and last seen and the last 24 hours of each group,
        filtered like its count."""
        if not ranked:
            return []
        prints = [g.fingerprint for g in ranked]
        source, where, params = _source(f)
        at = params.add(prints)
        tenants: dict[str, list[str]] = defaultdict(list)
        sql = _on(q.TENANTS, source, where=where, prints=at, top=str(_TOP_TENANTS))
        for r in await self._guard(self._db.fetch(sql, *params.values)):
            tenants[r["fingerprint"]].append(r["tenant_id"])
        types: dict[str, list[str]] = defaultdict(list)
        sql = _on(q.TYPES, source, where=where, prints=at)
        for r in await self._guard(self._db.fetch(sql, *params.values)):
            types[r["fingerprint"]].append(r["type"] or UNREADABLE)
        samples = {
            r["fingerprint"]: r["message"]
            for r in await self._guard(self._db.fetch(q.SAMPLES, prints))
        }
        params = Params([prints])
        where = filter_sql(f, params)
        seen = {
            r["fingerprint"]: (r["first_seen"], r["last_seen"])
            for r in await self._guard(
                self._db.fetch(q.SEEN.format(where=where, prints="$1"), *params.values)
            )
        }
        hourly: dict[str, list[int]] = defaultdict(lambda: [0] * _HOURS)
        sql = q.HOURLY.format(where=where, prints="$1")
        for r in await self._guard(self._db.fetch(sql, *params.values)):
            if 0 <= r["ago"] < _HOURS:
                hourly[r["fingerprint"]][_HOURS - 1 - r["ago"]] += r["n"]
        out = []
        for g in ranked:
            first, last = seen.get(g.fingerprint, (None, None))
            if first is None or last is None:
                continue  # marked between the two queries
            out.append(
                DeadGroup(
                    fingerprint=g.fingerprint,
                    category=g.category,
                    code=g.code,
                    message=samples.get(g.fingerprint, ""),
                    count=g.count,
                    tenants=tenants[g.fingerprint],
                    types=types[g.fingerprint],
                    first_seen=first,
                    last_seen=last,
                    hourly=list(hourly[g.fingerprint]),
                    tenant_count=g.tenants,
                )
            )
        return out

    @staticmethod
    async def _guard(work: Awaitable[T]) -> T:
        """asyncpg's and the network's errors as ``LedgerUnavailable``."""
        import asyncpg

        try:
            return await work
        except asyncpg.UndefinedTableError:
            raise LedgerUnavailable(
                "the ledger has no dead-letter tables yet; run `wa-consumer db migrate` first"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(f"ledger query failed: {exc}") from exc


def _state(state: str) -> str:
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {sorted(STATES)}")
    return state
