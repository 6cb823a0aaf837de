"""What the DLQ commands ask of the ledger, behind a small seam with a do-nothing version.

With ``WA_DATABASE_URL`` unset there is no ledger: nothing is known to be sent and purge
reasons are not recorded. With it set, the commands open one connection of their own (never
the daemon's pool) before touching the queue, so an unreachable ledger stops a command
before it has moved anything.

The ledger holds one record per (tenant, internalId), so the commands ask by that pair, the
tenant read from the dead message (``DeadRecord.ledger_tenant``). When a message's tenant
cannot be read, the two questions are answered each on the safe side:

- ``sent``: an unknown tenant matches a sent record of *any* tenant with that id. A replay
  then never re-sends a message the ledger records as sent; at worst it leaves in the DLQ one
  whose id another tenant happens to have sent (the operator can see and replay it by hand).
- ``resolve``: an unknown tenant matches nothing. A purge reason is never written onto
  another tenant's record; such a message is counted as removed, not as resolved.

The ledger also mirrors the DLQ (``wa_dead``, one row per death): ``settle_dead`` takes a
replayed or purged message's row out of state ``dead``, so that reads from the ledger keep
agreeing with the queue. Its rows are keyed as the daemon wrote them: the tenant of the
copy's ``x-tenant-id`` (the body's otherwise; None matches the rows that named none), the
internalId, the fingerprint when the message carries the daemon's reason, and the copy's
replay count: a row of a later death (more replays) is never this copy's. Without that, a
replayed copy the daemon took and killed again before the replay marked the row would have
its new death's row marked ``replayed`` while it sits in the DLQ.

``record`` adds what a command did to the audit trail (``wa_actions``): who, why, the filter
and what it changed. Without a ledger nothing is recorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from .. import headers as h
from ..errors import LedgerUnavailable
from ..ledger.audit import record_action
from ..ledger.queries import resolve
from .record import DeadRecord

if TYPE_CHECKING:
    import asyncpg

# A NULL tenant in the pair stands for "any tenant" (see the module docstring).
_SENT = """
SELECT k.tenant_id, k.internal_id
FROM unnest($1::text[], $2::text[]) AS k (tenant_id, internal_id)
WHERE EXISTS (
    SELECT 1 FROM wa_messages m
    WHERE m.internal_id = k.internal_id
      AND (k.tenant_id IS NULL OR m.tenant_id = k.tenant_id)
      AND m.status = 'sent'
)
"""
_TIMEOUT = 5.0


Key: TypeAlias = tuple[str | None, str]
"""(tenant_id, internal_id) of a dead message; the tenant is None when it cannot be read."""


def ledger_key(record: DeadRecord) -> Key:
    """The dead message's (tenant, internalId) in the ledger; the tenant None when unreadable."""
    return (record.ledger_tenant, record.internal_id or "")


DeadKey: TypeAlias = tuple[str | None, str, str | None, int]
"""(tenant_id, internal_id, fingerprint, replays) of a message's row in the DLQ's mirror
(``wa_dead``)."""


def dead_key(record: DeadRecord, headers: Mapping[str, Any] | None) -> DeadKey:
    """The row of the DLQ's mirror that stands for this message (see the module docstring)."""
    headers = headers or {}
    tenant = headers.get(h.TENANT)
    ours = h.ERROR_CATEGORY in headers  # the daemon's reason, not the broker's
    return (
        tenant if isinstance(tenant, str) and tenant else record.ledger_tenant,
        record.internal_id or "",
        record.fingerprint if ours else None,
        record.replay_count,
    )


class DlqLedger(Protocol):
    async def sent(self, keys: Sequence[Key]) -> set[Key]:
        """Which of these keys the ledger records as sent (None: under any tenant)."""
        ...

    async def resolve(self, keys: Sequence[Key], note: str) -> int:
        """Record ``note`` as how these messages were resolved; returns rows changed.

        A key whose tenant is None is skipped: it could name another tenant's record.
        """
        ...

    async def settle_dead(self, keys: Sequence[DeadKey], state: str, note: str | None) -> int:
        """Take these messages' rows in the DLQ's mirror out of state ``dead`` (``replayed``,
        ``resolved``); returns rows changed."""
        ...

    async def record(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        reason: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add one action to the audit trail."""
        ...


class NoLedger:
    """No database configured: nothing is known to be sent, nothing is recorded."""

    async def sent(self, keys: Sequence[Key]) -> set[Key]:
        return set()

    async def resolve(self, keys: Sequence[Key], note: str) -> int:
        return 0

    async def settle_dead(self, keys: Sequence[DeadKey], state: str, note: str | None) -> int:
        return 0

    async def record(self, **action: Any) -> None:
        pass


class PostgresDlqLedger:
    """The ledger through one connection of the command's own."""

    def __init__(self, connection: asyncpg.Connection[Any]) -> None:
        self._connection = connection

    async def sent(self, keys: Sequence[Key]) -> set[Key]:
        if not keys:
            return set()
        tenants, internal_ids = zip(*keys, strict=True)
        rows = await self._guard(self._connection.fetch(_SENT, list(tenants), list(internal_ids)))
        return {(row["tenant_id"], row["internal_id"]) for row in rows}

    async def resolve(self, keys: Sequence[Key], note: str) -> int:
        known = [(tenant, internal_id) for tenant, internal_id in keys if tenant is not None]
        changed: int = await self._guard(resolve(self._connection, known, note))
        return changed

    async def settle_dead(self, keys: Sequence[DeadKey], state: str, note: str | None) -> int:
        from ..ledger.dead import DeadLetters  # not at import: it imports this package

        return await DeadLetters(self._connection).mark_keys(keys, state, note)

    async def record(self, **action: Any) -> None:
        await self._guard(record_action(self._connection, **action))

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
        # Fails now, before the queue is touched, if it cannot work.
        await ledger.sent([("-", "-")])
        yield ledger
    finally:
        await connection.close(timeout=_TIMEOUT)
