"""A database of one test's own, for tests that read every row of a table (the console's
pages show every group the ledger holds; the run's shared database has other tests' rows)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from ..conftest import PG_URL


@asynccontextmanager
async def scratch_database(prefix: str = "wa_scratch") -> AsyncIterator[str]:
    """Create a database, yield its URL, drop it (even with connections left open)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
