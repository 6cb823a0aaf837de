"""Delivery statuses in the ledger (SPEC §13): one statement per batch of webhooks.

A status lands on its wamid's row in ``wa_deliveries``, created by whichever comes first:
the send's result (``postgres._WRITE``) or the status. A row never moves backwards, ``failed``
is final, and each time is the first one seen, so a repeated or reordered webhook changes
nothing. A status whose wamid no send has recorded is tied to its message by its
``biz_opaque_callback_data``; the message then counts as sent (an ambiguous send was
accepted after all), so a retry of it is a duplicate and a replay refuses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from ..webhooks.payload import StatusUpdate

__all__ = ["CHUNK", "Applied", "PostgresStatuses", "Tied"]

# The order of ``payload.ORDER``; failed (final) is decided before it is consulted.
_APPLY = """
WITH s AS (
    SELECT x->>0 AS wamid, x->>1 AS status, (x->>2)::timestamptz AS sent_at,
        (x->>3)::timestamptz AS delivered_at, (x->>4)::timestamptz AS read_at,
        (x->>5)::timestamptz AS failed_at, x->>6 AS recipient, x->>7 AS phone_number_id,
        x->>8 AS callback, x->>9 AS error_code, x->>10 AS error_category,
        x->>11 AS error_title, x->>12 AS error_message, (x->>13)::bool AS billable,
        x->>14 AS pricing_category, x->>15 AS pricing_model, x->>16 AS conversation_id,
        x->>17 AS conversation_origin, (x->>18)::timestamptz AS conversation_expires_at
    FROM jsonb_array_elements($1::jsonb) AS x
), old AS MATERIALIZED (
    -- Materialised: inlined, PostgreSQL joined it to the batch again for every row (a batch
    -- of 1,000 took 153 ms instead of 21). The same snapshot either way.
    SELECT d.wamid, d.status, d.delivered_at FROM wa_deliveries d JOIN s USING (wamid)
), up AS (
    INSERT INTO wa_deliveries AS d (wamid, status, sent_at, delivered_at, read_at, failed_at,
        recipient, phone_number_id, callback, error_code, error_category, error_title,
        error_message, pricing_billable, pricing_category, pricing_model, conversation_id,
        conversation_origin, conversation_expires_at)
    SELECT * FROM s ORDER BY wamid COLLATE "C"  -- the order the send's results lock them
    ON CONFLICT (wamid) DO UPDATE SET
        status = CASE
            WHEN d.status = 'failed' OR EXCLUDED.status = 'failed' THEN 'failed'
            WHEN array_position(ARRAY['accepted', 'sent', 'delivered', 'read'], EXCLUDED.status)
                 > array_position(ARRAY['accepted', 'sent', 'delivered', 'read'], d.status)
                THEN EXCLUDED.status
            ELSE d.status END,
        sent_at = LEAST(d.sent_at, EXCLUDED.sent_at),
        delivered_at = LEAST(d.delivered_at, EXCLUDED.delivered_at),
        read_at = LEAST(d.read_at, EXCLUDED.read_at),
        failed_at = LEAST(d.failed_at, EXCLUDED.failed_at),
        recipient = COALESCE(d.recipient, EXCLUDED.recipient),
        phone_number_id = COALESCE(d.phone_number_id, EXCLUDED.phone_number_id),
        callback = COALESCE(d.callback, EXCLUDED.callback),
        error_code = COALESCE(d.error_code, EXCLUDED.error_code),
        error_category = COALESCE(d.error_category, EXCLUDED.error_category),
        error_title = COALESCE(d.error_title, EXCLUDED.error_title),
        error_message = COALESCE(d.error_message, EXCLUDED.error_message),
        pricing_billable = COALESCE(EXCLUDED.pricing_billable, d.pricing_billable),
        pricing_category = COALESCE(EXCLUDED.pricing_category, d.pricing_category),
        pricing_model = COALESCE(EXCLUDED.pricing_model, d.pricing_model),
        conversation_id = COALESCE(EXCLUDED.conversation_id, d.conversation_id),
        conversation_origin = COALESCE(EXCLUDED.conversation_origin, d.conversation_origin),
        conversation_expires_at = COALESCE(EXCLUDED.conversation_expires_at,
                                           d.conversation_expires_at),
        updated_at = now()
    RETURNING d.wamid, d.tenant_id, d.internal_id, d.status, d.accepted_at, d.delivered_at,
        d.callback, d.phone_number_id, d.error_code, d.error_category, d.error_message
)
SELECT up.*, old.status AS was, old.delivered_at AS was_delivered_at
FROM up LEFT JOIN old USING (wamid)
"""

# A status no send recorded (its answer lost: a timeout after the request left) is tied to
# its message by the callback data: the internalId, or the producer's own value. Only a
# message with an ambiguous attempt can be tied so (no other send of ours can have a wamid we
# do not know), and only where exactly one matches (two tenants may share an internalId; the
# number tells them apart when both are known). A message not yet sent is then sent: never
# sent again, never replayed. One already sent under another wamid was sent twice: said so.
_TIE = """
WITH pending AS (
    SELECT x->>0 AS wamid, x->>1 AS callback, x->>2 AS phone
    FROM jsonb_array_elements($1::jsonb) AS x
), candidates AS (
    SELECT p.wamid, m.tenant_id, m.internal_id, m.phone_number_id, p.phone
    FROM pending p JOIN wa_messages m ON m.internal_id = p.callback AND m.callback IS NULL
    UNION ALL
    SELECT p.wamid, m.tenant_id, m.internal_id, m.phone_number_id, p.phone
    FROM pending p JOIN wa_messages m ON m.callback = p.callback
), found AS (
    SELECT c.wamid, min(c.tenant_id) AS tenant_id, min(c.internal_id) AS internal_id
    FROM candidates c
    WHERE (c.phone_number_id IS NULL OR c.phone IS NULL OR c.phone_number_id = c.phone)
      AND EXISTS (SELECT 1 FROM wa_attempts a WHERE a.tenant_id = c.tenant_id
                  AND a.internal_id = c.internal_id AND a.ambiguous)
    GROUP BY c.wamid HAVING count(*) = 1
), tied AS (
    UPDATE wa_deliveries d SET tenant_id = f.tenant_id, internal_id = f.internal_id,
        updated_at = now()
    FROM found f WHERE d.wamid = f.wamid AND d.tenant_id IS NULL
    RETURNING d.wamid, d.tenant_id, d.internal_id
), was AS (
    SELECT m.tenant_id, m.internal_id, m.status, m.wamid
    FROM wa_messages m JOIN tied t USING (tenant_id, internal_id)
), sent AS (
    UPDATE wa_messages m SET status = 'sent', wamid = COALESCE(m.wamid, t.wamid),
        sent_at = COALESCE(m.sent_at, now()), updated_at = now()
    FROM tied t
    WHERE m.tenant_id = t.tenant_id AND m.internal_id = t.internal_id AND m.status <> 'sent'
    RETURNING m.tenant_id, m.internal_id
)
SELECT t.wamid, t.tenant_id, t.internal_id, w.status AS was,
    s.internal_id IS NOT NULL AS reconciled,
    w.status = 'sent' AND w.wamid IS DISTINCT FROM t.wamid AS sent_twice
FROM tied t JOIN was w USING (tenant_id, internal_id)
    LEFT JOIN sent s USING (tenant_id, internal_id)
"""

# Untied statuses of the last hour, tried again: the ambiguous attempt that lets one be tied
# is often recorded after its first status arrived (the answer timed out meanwhile).
_UNTIED = """
SELECT wamid, callback, phone_number_id FROM wa_deliveries
WHERE tenant_id IS NULL AND callback IS NOT NULL AND received_at > now() - interval '1 hour'
LIMIT 1000
"""

#: Statuses per statement: a batch of large bodies is applied in parts (each idempotent).
CHUNK = 5000

_CONFLICT = asyncpg.TransactionRollbackError


@dataclass(frozen=True, slots=True)
class Tied:
    """A status tied to its message by its callback data (no send recorded its wamid)."""

    wamid: str
    tenant_id: str
    internal_id: str
    was: str
    """The message's status before: ``waiting``, ``dead``... (``sent``: see ``sent_twice``)."""
    reconciled: bool
    """The message is now ``sent``: its waiting retry is a duplicate, a replay refused."""
    sent_twice: bool
    """It was already sent under another wamid: the customer got it twice."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What one wamid's row became, and what it was: the metrics count transitions only."""

    wamid: str
    tenant_id: str | None
    internal_id: str | None
    status: str
    was: str | None
    accepted_at: datetime | None
    delivered_at: datetime | None
    was_delivered_at: datetime | None
    error_code: str | None
    error_category: str | None
    error_message: str | None

    @property
    def changed(self) -> bool:
        return self.status != self.was


class PostgresStatuses:
    """Applies merged status updates, a statement per ``CHUNK``; ties what it can."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def apply(self, updates: Sequence[StatusUpdate]) -> tuple[list[Applied], list[Tied]]:
        """``updates``: one per wamid, sorted by wamid (``payload.merge``)."""
        applied: list[Applied] = []
        untied: list[tuple[str, str, str | None]] = []
        for start in range(0, len(updates), CHUNK):
            rows = _json([u.row() for u in updates[start : start + CHUNK]])
            try:
                records = await self._pool.fetch(_APPLY, rows)
            except _CONFLICT:  # two daemons' batches crossed: once more, then it is an error
                await asyncio.sleep(0.05)
                records = await self._pool.fetch(_APPLY, rows)
            applied += map(_applied, records)
            untied += [
                (r["wamid"], r["callback"], r["phone_number_id"])
                for r in records
                if r["tenant_id"] is None and r["callback"] is not None
            ]
        return applied, await self._tie(untied)

    async def retie(self) -> list[Tied]:
        """Untied statuses of the last hour, tied where their message can be by now."""
        rows = await self._pool.fetch(_UNTIED)
        return await self._tie([(r["wamid"], r["callback"], r["phone_number_id"]) for r in rows])

    async def _tie(self, untied: list[tuple[str, str, str | None]]) -> list[Tied]:
        if not untied:
            return []
        return [
            Tied(r["wamid"], r["tenant_id"], r["internal_id"], r["was"], r["reconciled"],
                 r["sent_twice"])
            for r in await self._pool.fetch(_TIE, _json(untied))
        ]  # fmt: skip


def _applied(r: asyncpg.Record) -> Applied:
    return Applied(
        r["wamid"], r["tenant_id"], r["internal_id"], r["status"], r["was"], r["accepted_at"],
        r["delivered_at"], r["was_delivered_at"], r["error_code"], r["error_category"],
        r["error_message"],
    )  # fmt: skip


def _json(rows: list[tuple[Any, ...]]) -> str:
    return orjson.dumps(rows, option=orjson.OPT_NAIVE_UTC).decode()
