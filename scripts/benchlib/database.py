"""The run's scratch PostgreSQL database: the ledger of the ledger-on scenarios.

``CREATE DATABASE wa_bench_<hex>`` on the local server before the first measurement,
``DROP DATABASE ... WITH (FORCE)`` on every way out (a failure, Ctrl-C, SIGTERM), in a loop
of its own so that a cancelled run still drops it. The daemon applies its migrations at
start; one database serves every ledger-on measurement of the run, which is why each
measurement's messages carry new internalIds.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import Iterator

import asyncpg

from .common import BenchError, bounded

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def url_of(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


async def _admin(statement: str) -> None:
    try:
        connection = await bounded(asyncpg.connect(ADMIN_URL, timeout=10), 15, "PostgreSQL")
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to PostgreSQL at {ADMIN_URL}: {exc}") from None
    try:
        await bounded(connection.execute(statement), 60, statement)
    except asyncpg.PostgresError as exc:
        raise BenchError(f"{statement}: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 10)


@contextlib.contextmanager
def scratch_database(wanted: bool) -> Iterator[str | None]:
    """The URL of a new database (None if not ``wanted``), dropped on the way out."""
    if not wanted:
        yield None
        return
    name = f"wa_bench_{secrets.token_hex(5)}"
    asyncio.run(_admin(f"CREATE DATABASE {name}"))
    try:
        yield url_of(name)
    finally:
        try:
            asyncio.run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        except (BenchError, OSError) as exc:
            print(f"bench: could not drop database {name}: {exc}", file=sys.stderr)


async def ledger_counts(url: str, ids: list[str]) -> dict[str, int]:
    """The records of ``ids`` in the ledger by status, and their attempts."""
    try:
        connection = await bounded(asyncpg.connect(url, timeout=10), 15, "ledger database")
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot connect to the ledger database: {exc}") from None
    try:
        rows = await bounded(
            connection.fetch(
                "SELECT status, count(*) AS n FROM wa_messages"
                " WHERE internal_id = ANY($1::text[]) GROUP BY status",
                ids,
            ),
            60,
            "ledger count",
        )
        attempts = await bounded(
            connection.fetchval(
                "SELECT count(*) FROM wa_attempts WHERE internal_id = ANY($1::text[])", ids
            ),
            60,
            "attempt count",
        )
    except asyncpg.PostgresError as exc:
        raise BenchError(f"reading the ledger: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 10)
    counts = {str(row["status"]): int(row["n"]) for row in rows}
    counts["attempts"] = int(attempts)
    return counts
