"""Versioned migrations, applied under an advisory lock so daemons may start together."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Any constant works; it only has to be the same for every daemon sharing the database.
_LOCK_KEY = 0x77615F636F6E73  # "wa_cons"

_TABLE = """
CREATE TABLE IF NOT EXISTS wa_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every packaged migration, in order."""
    folder = resources.files("wa_consumer.ledger") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(
    connection: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
    applying: Callable[[str], None] | None = None,
) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date).

    ``applying`` hears each migration's name before it runs (a long one shows which).
    """
    applied: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await connection.execute(_TABLE)
        done = {
            r["version"] for r in await connection.fetch("SELECT version FROM wa_schema_migrations")
        }
        for version, name, sql in migrations():
            if version in done:
                continue
            if applying is not None:
                applying(name)
            async with connection.transaction():
                await connection.execute(sql)
                await connection.execute(
                    "INSERT INTO wa_schema_migrations (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            applied.append(name)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied
