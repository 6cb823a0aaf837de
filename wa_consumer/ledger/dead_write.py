"""The daemon's writes to the DLQ's mirror (``wa_dead``), batched like the ledger's results.

Deaths go through a batcher of their own, so a send's statement (``postgres._WRITE``) is the
same as before: a sent message costs this nothing. The deaths of concurrent messages go in one
statement that inserts their rows, moves out of state ``dead`` the previous row of a claimed
message that died again (a copy the broker gave back after an unconfirmed death, or a replay
the ledger was not told of), and keeps ``wa_dead_groups`` up to date, in key order (the marks
of replay and purge change the same counters in the same order: no deadlock).

Like a result, a death that cannot be written during an outage is kept and written when the
database is back; the message is settled after a bounded wait. A row the database refuses is
found by halving the batch, written again without its headers and body, and else dropped
with a log line: one message's data never fails the others.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from .. import headers as h
from ..dlq.record import fingerprint
from ..logs import get_logger, redact
from ..seams import Death
from .batch import Batcher

log = get_logger("ledger")

INSERT_DEATHS = """
WITH rows AS (
    SELECT d->>0 AS tenant_id, d->>1 AS internal_id, d->>2 AS fingerprint, d->>3 AS category,
        d->>4 AS code, (d->>5)::int AS subcode, d->>6 AS message, d->>7 AS type,
        d->>8 AS phone_number_id, d->>9 AS routing_key, (d->>10)::int AS retries,
        (d->>11)::int AS replays, d->12 AS headers, decode(d->>13, 'base64') AS body,
        (d->>14)::int AS body_bytes, (d->>15)::bool AS claimed
    FROM jsonb_array_elements($1::jsonb) AS d
), superseded AS (
    UPDATE wa_dead w SET state = 'replayed', resolved_at = now(),
        resolution = 'dead again: a later row holds it'
    FROM rows r
    WHERE r.claimed AND w.state = 'dead'
      AND w.internal_id = r.internal_id AND w.tenant_id = r.tenant_id
    RETURNING w.fingerprint, w.tenant_id, w.type, w.category, w.code, w.message
), inserted AS (
    INSERT INTO wa_dead (tenant_id, internal_id, fingerprint, category, code, subcode, message,
        type, phone_number_id, routing_key, retries, replays, headers, body, body_bytes)
    SELECT tenant_id, internal_id, fingerprint, category, code, subcode, message, type,
        phone_number_id, routing_key, retries, replays, headers, body, body_bytes
    FROM rows
    RETURNING fingerprint, tenant_id, type, category, code, message
)
INSERT INTO wa_dead_groups AS g (fingerprint, tenant_id, type, category, code, message, dead)
SELECT fingerprint, COALESCE(tenant_id, ''), COALESCE(type, ''), min(category), min(code),
    min(message), sum(n)
FROM (SELECT *, 1 AS n FROM inserted UNION ALL SELECT *, -1 AS n FROM superseded) AS c
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
ON CONFLICT (fingerprint, tenant_id, type) DO UPDATE SET dead = g.dead + EXCLUDED.dead
"""

#: Bounds on the texts of a row (indexed ones well below PostgreSQL's index row limit).
_ID_BYTES = 512
_CODE_BYTES = 64
_MESSAGE_BYTES = 16 * 1024
_HEADER_DEPTH = 8

Row = list[Any]


def row_of(death: Death) -> Row:
    """The statement's row of one death (by position), every text made storable."""
    f = death.failure
    category = _clean(h.text(str(f.category), _CODE_BYTES))
    code = _clean(h.text(str(f.code), _CODE_BYTES))
    message = _clean(h.text(f.message, _MESSAGE_BYTES))
    headers = dict(death.headers)
    subcode = f.subcode if f.subcode is not None and -(2**31) <= f.subcode < 2**31 else None
    return [
        _bounded(death.tenant_id),
        _bounded(death.internal_id),
        fingerprint(f.category, f.code, f.message),  # as a pass over the queue computes it
        category,
        code,
        subcode,
        message,
        _bounded(death.type or _body_type(death.body), _CODE_BYTES),
        _bounded(death.phone_number_id),
        _bounded(death.routing_key),
        h.count_or_zero(headers, h.RETRY_COUNT),
        h.count_or_zero(headers, h.REPLAY_COUNT),
        _json_safe(redact(None, "", headers)),  # no token, though the copy never holds one
        base64.b64encode(death.body).decode("ascii"),
        death.body_bytes,
        death.claimed,
    ]


def _plain(row: Row) -> Row:
    """The row without what the database may have refused in it: headers and body."""
    return [*row[:12], {}, "", row[14], row[15]]


class DeadWriter:
    """Writes deaths in batches on the ledger's pool; ``record`` never raises."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        transient: Callable[[BaseException], bool],
        data_errors: tuple[type[BaseException], ...],
        conflict: type[BaseException],
        on_error: Callable[[BaseException], None],
        describe: Callable[[BaseException], str],
    ) -> None:
        self._pool = pool
        self._data = data_errors
        self._conflict = conflict
        self._describe = describe
        self._batches: Batcher[Row, None] = Batcher(
            self._write, keep=lambda _: True, transient=transient, on_error=on_error
        )

    def held(self) -> int:
        """Deaths queued or being written."""
        return self._batches.held(lambda _: True)

    async def record(self, death: Death, wait: float) -> None:
        """Queue ``death`` and wait (up to ``wait`` seconds) for it to be written."""
        try:
            row = row_of(death)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the message's settling
            log.error("ledger_dead_unreadable", internal_id=death.internal_id, error=repr(exc))
            return
        future = self._batches.submit(row)
        try:
            await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            log.warning("ledger_dead_deferred", internal_id=death.internal_id)
        except Exception as exc:  # noqa: BLE001 - never raises: the message is settled anyway
            log.error(
                "ledger_dead_failed",
                tenant_id=death.tenant_id,
                internal_id=death.internal_id,
                error=self._describe(exc),
            )

    async def close(self, grace: float) -> list[Row]:
        """Write what is queued (up to ``grace``); returns the rows never written."""
        return await self._batches.close(grace)

    async def _write(self, rows: Sequence[Row]) -> list[None]:
        try:
            try:
                await self._statement(rows)
            except self._conflict:  # a deadlock with another daemon or a mark: once more
                await asyncio.sleep(0.05)
                await self._statement(rows)
        except self._data as exc:
            if len(rows) > 1:
                half = len(rows) // 2
                return [*await self._write(rows[:half]), *await self._write(rows[half:])]
            await self._refused(rows[0], exc)
        return [None] * len(rows)

    async def _refused(self, row: Row, exc: BaseException) -> None:
        log.error("ledger_refused_dead", internal_id=row[1], error=self._describe(exc))
        try:
            await self._statement([_plain(row)])
        except self._data:
            log.error("ledger_dead_dropped", internal_id=row[1])

    async def _statement(self, rows: Sequence[Row]) -> None:
        await self._pool.execute(INSERT_DEATHS, orjson.dumps(rows).decode())


def _clean(text: str) -> str:
    """PostgreSQL's text (and jsonb) refuse NUL; everything else is kept."""
    return text.replace("\x00", "") if "\x00" in text else text


def _bounded(value: str | None, limit: int = _ID_BYTES) -> str | None:
    return None if value is None else _clean(h.text(value, limit))


def _body_type(body: bytes) -> str | None:
    """``wabaPayload.type`` of a body the pipeline could not bind (as ``dlq list`` reads it)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    payload = parsed.get("wabaPayload") if isinstance(parsed, dict) else None
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) else None


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A header value as jsonb can hold it: AMQP tables, arrays, bytes, times, decimals."""
    if depth > _HEADER_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {_clean(str(k)): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, bytes | bytearray):
        return _clean(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return _clean(str(value))
