"""Reading and tidying the ledger outside the hot path: ``status``, ``db prune``, DLQ purge.

These run from the CLI on a connection of their own, never inside the daemon's pool, so a
long prune cannot starve the claims of a running consumer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

# Only messages that reached an end may go: a claimed, waiting or retrying message still has a
# future, and its row is what keeps a second copy from being sent.
_FINISHED = ("sent", "dead")

_MESSAGE = "SELECT * FROM wa_messages WHERE internal_id = $1"
# By id: the order they were written in; attempt numbers start again after a replay.
_ATTEMPTS = "SELECT * FROM wa_attempts WHERE internal_id = $1 ORDER BY id"

# The subquery bounds each statement to ``$3`` rows so no lock is held for long; the outer
# conditions are checked again on the row being deleted, so a message replayed (claimed
# again) between the subquery's snapshot and the delete is left alone. SKIP LOCKED: rows a
# consumer is updating right now are skipped rather than waited for. A row is never updated
# before it is created, so ``created_at`` (indexed, and never changed) narrows the search.
_PRUNE = """
DELETE FROM wa_messages
WHERE internal_id IN (
    SELECT internal_id FROM wa_messages
    WHERE created_at < $1 AND updated_at < $1 AND status = ANY($2::text[])
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
AND updated_at < $1 AND status = ANY($2::text[])
"""

_RESOLVE = """
UPDATE wa_messages SET resolution = $2, updated_at = now()
WHERE internal_id = ANY($1::text[])
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


async def message_status(conn: Connection, internal_id: str) -> dict[str, Any] | None:
    """The message's row with its attempts (oldest first) under ``attempts``; None if unknown."""
    row = await conn.fetchrow(_MESSAGE, internal_id)
    if row is None:
        return None
    record: dict[str, Any] = dict(row)
    if record["metadata"] is not None:
        # jsonb comes back as text without a codec; decoded so JSON output nests it.
        record["metadata"] = orjson.loads(record["metadata"])
    record["attempts"] = [dict(a) for a in await conn.fetch(_ATTEMPTS, internal_id)]
    return record


async def prune(conn: Connection, older_than: timedelta, batch: int = 5000) -> int:
    """Delete sent and dead messages (their attempts cascade) not updated for ``older_than``.

    Runs one bounded statement after another, each its own transaction, so a large ledger is
    never locked for long. Returns how many messages were removed.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    # One cutoff, taken from the database's clock, for every batch of this run.
    cutoff = await conn.fetchval("SELECT now() - $1::interval", older_than)
    removed = 0
    while True:
        deleted = _count(await conn.execute(_PRUNE, cutoff, list(_FINISHED), batch))
        removed += deleted
        if deleted < batch:  # the rest (if any) were locked; the next prune takes them
            return removed


async def resolve(conn: Connection, internal_ids: Sequence[str], note: str) -> int:
    """Record how the messages were resolved (e.g. a DLQ purge's reason); returns rows changed."""
    if not internal_ids:
        return 0
    return _count(await conn.execute(_RESOLVE, list(internal_ids), note))
