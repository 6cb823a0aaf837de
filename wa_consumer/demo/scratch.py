"""The demo's own ledger: a PostgreSQL database made for the run and dropped at the end.

Like the vhost (``isolation``), so that the demo's made-up messages never land in a database
anyone else uses. The server is the one ``WA_DATABASE_URL`` names (its database only serves
to connect and run ``CREATE DATABASE``), else the local default below. Where the server cannot
be reached or refuses to create a database, the demo runs without a ledger, statuses skipped.
"""

from __future__ import annotations

from typing import Final

import asyncpg
from yarl import URL

from ..settings import safe_url

LOCAL_SERVER: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
_TIMEOUT: Final = 5.0
_PG_PORT: Final = 5432
_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def _reason(exc: BaseException) -> str:
    # asyncpg's messages name the host and the database, never the password.
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ScratchLedger:
    """A database ``wa_demo_<tag>`` on the server of ``server_url`` (None: the local one)."""

    def __init__(self, server_url: str | None, tag: str) -> None:
        self.server = server_url or LOCAL_SERVER
        self.name = f"wa_demo_{tag}"
        server = URL(self.server)
        # with_path drops the query (sslmode=..., host=/socket): keep it.
        self.url = str(server.with_path(f"/{self.name}").with_query(server.query))
        self.made = False
        """``CREATE DATABASE`` was sent: the database may exist, drop it at the end."""

    def where(self) -> str:
        """The server in words, without the password."""
        url = URL(self.server)
        return f"{url.host or 'local socket'}:{url.port or _PG_PORT}"

    def shown_url(self) -> str:
        """The database's URL to print: a password is masked."""
        return safe_url(self.url)

    async def _connect(self) -> asyncpg.Connection[asyncpg.Record]:
        return await asyncpg.connect(self.server, timeout=_TIMEOUT)

    async def create(self) -> str | None:
        """Create the database; the reason in words when that was not possible."""
        try:
            connection = await self._connect()
        except _ERRORS as exc:
            return f"PostgreSQL at {self.where()} unreachable ({_reason(exc)})"
        try:
            self.made = True
            await connection.execute(f'CREATE DATABASE "{self.name}"', timeout=_TIMEOUT)
        except _ERRORS as exc:
            self.made = False  # refused (no rights): nothing to drop
            return f"PostgreSQL at {self.where()} would not create a database ({_reason(exc)})"
        finally:
            await connection.close(timeout=_TIMEOUT)
        return None

    async def drop(self) -> str | None:
        """Drop the database (with whatever is connected to it); the error in words."""
        try:
            connection = await self._connect()
        except _ERRORS as exc:
            return _reason(exc)
        try:
            try:
                await connection.execute(
                    f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', timeout=_TIMEOUT
                )
            except asyncpg.PostgresSyntaxError:  # before PostgreSQL 13: no FORCE
                await connection.execute(f'DROP DATABASE IF EXISTS "{self.name}"', timeout=_TIMEOUT)
        except _ERRORS as exc:
            return _reason(exc)
        finally:
            await connection.close(timeout=_TIMEOUT)
        self.made = False
        return None
