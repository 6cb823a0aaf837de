"""What the DLQ commands ask of the ledger, behind a small seam with a do-nothing version.

With ``WA_DATABASE_URL`` unset there is no ledger: nothing is known to be sent and purge
reasons are not recorded. With it set, the commands open one connection of their own (never
the daemon's pool) before touching the queue, so an unreachable ledger stops a command
before it has moved anything.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LedgerUnavailable
from ..ledger.queries import resolve

if TYPE_CHECKING:
    import asyncpg

_SENT = """
SELECT internal_id FROM wa_messages WHERE internal_id = ANY($1::text[]) AND status = 'sent'
"""
_TIMEOUT = 5.0


class DlqLedger(Protocol):
    async def sent(self, internal_ids: Sequence[str]) -> set[str]:
        """Which of these ids the ledger records as sent."""
        ...

    async def resolve(self, internal_ids: Sequence[str], note: str) -> int:
        """Record ``note`` as how these messages were resolved; returns rows changed."""
        ...


class NoLedger:
    """No database configured: nothing is known to be sent, nothing is recorded."""

    async def sent(self, internal_ids: Sequence[str]) -> set[str]:
        return set()

    async def resolve(self, internal_ids: Sequence[str], note: str) -> int:
        return 0


class PostgresDlqLedger:
    """The ledger through one connection of the command's own."""

    def __init__(self, connection: asyncpg.Connection[Any]) -> None:
        self._connection = connection

    async def sent(self, internal_ids: Sequence[str]) -> set[str]:
        if not internal_ids:
            return set()
        rows = await self._guard(self._connection.fetch(_SENT, list(internal_ids)))
        return {row["internal_id"] for row in rows}

    async def resolve(self, internal_ids: Sequence[str], note: str) -> int:
        changed: int = await self._guard(resolve(self._connection, internal_ids, note))
        return changed

    @staticmethod
    async def _guard(work: Any) -> Any:
        import asyncpg

        try:
            return await work
        except asyncpg.UndefinedTableError:
            raise LedgerUnavailable(
                "the ledger has no tables yet; run `wa-consumer db migrate` first"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(f"ledger query failed: {exc}") from exc


@asynccontextmanager
async def open_ledger(url: str | None) -> AsyncIterator[DlqLedger]:
    """The ledger at ``url``, or ``NoLedger`` when there is none; raises ``LedgerUnavailable``."""
    if not url:
        yield NoLedger()
        return
    import asyncpg

    try:
        connection = await asyncpg.connect(url, timeout=_TIMEOUT)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise LedgerUnavailable(f"cannot open the ledger: {exc}") from exc
    try:
        ledger = PostgresDlqLedger(connection)
        await ledger.sent(["-"])  # fails now, before the queue is touched, if it cannot work
        yield ledger
    finally:
        await connection.close(timeout=_TIMEOUT)
