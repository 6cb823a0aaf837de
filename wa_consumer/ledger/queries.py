"""Reading and tidying the ledger outside the hot path: ``status``, ``db prune``, DLQ purge.

These run from the CLI on a connection of their own, never inside the daemon's pool, so a
long prune cannot starve the claims of a running consumer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

# Only messages that reached an end may go: a claimed, waiting or retrying message still has a
# future, and its row is what keeps a second copy from being sent.
_FINISHED = ("sent", "dead")

# One record per (tenant_id, internal_id): with a tenant, that one; without, every tenant's
# record of the id (found through the index on internal_id), in a stable order.
_MESSAGES = """
SELECT * FROM wa_messages
WHERE internal_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
ORDER BY tenant_id
"""
# On the whole key, so one tenant's record never shows another's attempts. By id: the order
# they were written in; attempt numbers start again after a replay.
_ATTEMPTS = """
SELECT * FROM wa_attempts
WHERE internal_id = $1 AND tenant_id = ANY($2::text[])
ORDER BY tenant_id, id
"""
# Each wamid of the message (two when an ambiguous send was retried and both went out), in
# the order Meta accepted them; through the index on the whole key.
_STATUSES = """
SELECT * FROM wa_deliveries
WHERE internal_id = $1 AND tenant_id = ANY($2::text[])
ORDER BY tenant_id, COALESCE(accepted_at, sent_at, received_at), wamid
"""

# The subquery bounds each statement to ``$3`` rows so no lock is held for long; the outer
# conditions are checked again on the row being deleted, so a message replayed (claimed
# again) between the subquery's snapshot and the delete is left alone. On the whole key, so
# another tenant's row with the same internal_id is neither deleted nor waited for. SKIP
# LOCKED: rows a consumer is updating right now are skipped rather than waited for. A row is
# never updated before it is created, so ``created_at`` (indexed, never changed) narrows the
# search. A message's delivery statuses (no foreign key: a status may come before its
# message) go with it in the same statement, so none is left behind without its message.
_PRUNE = """
WITH gone AS (
    DELETE FROM wa_messages
    WHERE (tenant_id, internal_id) IN (
        SELECT tenant_id, internal_id FROM wa_messages
        WHERE created_at < $1 AND updated_at < $1 AND status = ANY($2::text[])
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    AND updated_at < $1 AND status = ANY($2::text[])
    RETURNING tenant_id, internal_id
), statuses AS (
    DELETE FROM wa_deliveries d USING gone g
    WHERE d.tenant_id = g.tenant_id AND d.internal_id = g.internal_id
)
SELECT count(*) FROM gone
"""
# Statuses no message holds, first heard of before the cutoff: never tied to a send (a wamid
# from elsewhere, or whose message was gone when it came), or left by a prune from before
# statuses were pruned with their messages. Found through the index on received_at.
_PRUNE_STATUSES = """
DELETE FROM wa_deliveries
WHERE wamid IN (
    SELECT d.wamid FROM wa_deliveries d
    WHERE d.received_at < $1 AND (d.tenant_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM wa_messages m
        WHERE m.tenant_id = d.tenant_id AND m.internal_id = d.internal_id))
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
AND received_at < $1
AND (tenant_id IS NULL OR NOT EXISTS (
    SELECT 1 FROM wa_messages m
    WHERE m.tenant_id = wa_deliveries.tenant_id AND m.internal_id = wa_deliveries.internal_id))
"""

_RESOLVE = """
UPDATE wa_messages SET resolution = $3, updated_at = now()
WHERE (tenant_id, internal_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE = re.compile(r"(\d+)([smhdw])")


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s`` or ``2w`` as a timedelta (more than zero)."""
    found = _AGE.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"age {text!r} not understood: expected a whole number and a unit "
            "(s, m, h, d or w), such as 30d, 12h, 90m, 45s or 2w"
        )
    amount, unit = int(found.group(1)), found.group(2)
    if amount == 0:
        raise ValueError(f"age {text!r} must be more than zero")
    try:
        return timedelta(**{_UNITS[unit]: amount})
    except OverflowError:
        raise ValueError(f"age {text!r} is too large") from None


def _count(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 5000" or "UPDATE 2".
    return int(status.rsplit(" ", 1)[-1])


async def message_status(
    conn: Connection, internal_id: str, tenant_id: str | None = None
) -> list[dict[str, Any]]:
    """The records of ``internal_id``, each with its attempts (oldest first) under ``attempts``
    and the delivery statuses of each of its wamids under ``statuses``.

    With ``tenant_id`` that tenant's record alone; without, every tenant's, ordered by tenant.
    Empty when the ledger has none.
    """
    records: list[dict[str, Any]] = [
        dict(row) for row in await conn.fetch(_MESSAGES, internal_id, tenant_id)
    ]
    if not records:
        return []
    attempts: dict[str, list[dict[str, Any]]] = {r["tenant_id"]: [] for r in records}
    for attempt in await conn.fetch(_ATTEMPTS, internal_id, list(attempts)):
        attempts[attempt["tenant_id"]].append(dict(attempt))
    statuses: dict[str, list[dict[str, Any]]] = {r["tenant_id"]: [] for r in records}
    for status in await conn.fetch(_STATUSES, internal_id, list(statuses)):
        statuses[status["tenant_id"]].append(dict(status))
    for record in records:
        if record["metadata"] is not None:
            # jsonb comes back as text without a codec; decoded so JSON output nests it.
            record["metadata"] = orjson.loads(record["metadata"])
        record["attempts"] = attempts[record["tenant_id"]]
        record["statuses"] = statuses[record["tenant_id"]]
    return records


async def _cutoff(conn: Connection, older_than: timedelta, batch: int) -> datetime:
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    # One cutoff, taken from the database's clock, for every batch of this run.
    cutoff: datetime = await conn.fetchval("SELECT now() - $1::interval", older_than)
    return cutoff


async def prune(
    conn: Connection,
    older_than: timedelta,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete sent and dead messages not updated for ``older_than``, with their attempts and
    delivery statuses.

    Runs one bounded statement after another, each its own transaction, so a large ledger is
    never locked for long. Returns how many messages were removed; ``progress`` hears the
    running count after each statement.
    """
    cutoff = await _cutoff(conn, older_than, batch)
    removed = 0
    while True:
        deleted: int = await conn.fetchval(_PRUNE, cutoff, list(_FINISHED), batch)
        removed += deleted
        if progress is not None:
            progress(removed)
        if deleted < batch:  # the rest (if any) were locked; the next prune takes them
            return removed


# The DLQ's mirror keeps a row once its message left the DLQ (replayed, purged, edited) for
# the record; those go with age. A row still 'dead' is a message still in the DLQ: never.
_PRUNE_DEAD = """
DELETE FROM wa_dead
WHERE id IN (
    SELECT id FROM wa_dead
    WHERE state <> 'dead' AND COALESCE(resolved_at, died_at) < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
AND state <> 'dead'
"""


async def prune_dead(
    conn: Connection,
    older_than: timedelta,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete the DLQ mirror's rows of messages that left the DLQ ``older_than`` ago."""
    cutoff = await _cutoff(conn, older_than, batch)
    removed = 0
    while True:
        status: str = await conn.execute(_PRUNE_DEAD, cutoff, batch)
        deleted = int(status.rsplit(" ", 1)[-1])
        removed += deleted
        if progress is not None:
            progress(removed)
        if deleted < batch:
            return removed


async def prune_statuses(
    conn: Connection,
    older_than: timedelta,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Delete delivery statuses no message holds, first heard of more than ``older_than`` ago.

    ``prune`` removes a message's own statuses with it; this takes those no send was ever
    tied to. Bounded statements like ``prune``; returns how many were removed.
    """
    cutoff = await _cutoff(conn, older_than, batch)
    removed = 0
    while True:
        deleted = _count(await conn.execute(_PRUNE_STATUSES, cutoff, batch))
        removed += deleted
        if progress is not None:
            progress(removed)
        if deleted < batch:
            return removed


async def resolve(conn: Connection, keys: Sequence[tuple[str, str]], note: str) -> int:
    """Record how the messages were resolved (e.g. a DLQ purge's reason); returns rows changed.

    ``keys`` are (tenant_id, internal_id): only that tenant's record of an id is changed.
    """
    if not keys:
        return 0
    tenants, internal_ids = zip(*set(keys), strict=True)
    return _count(await conn.execute(_RESOLVE, list(tenants), list(internal_ids), note))
