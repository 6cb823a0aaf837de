"""The ledger in PostgreSQL (SPEC §9): claims and results, batched.

Per message there are two writes: the claim before the send, and the finish (attempt rows
plus the new status) before the ack. The claims and finishes of concurrent messages go
together, as one statement per batch.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from ..errors import LedgerUnavailable
from ..logs import get_logger
from ..message import Outbound
from ..seams import Attempt, Claim, Record
from .batch import Batcher
from .migrate import migrate

log = get_logger("ledger")

# The one statement the daemon writes, for every message in flight at once: the results of the
# messages that finished (their attempt rows and new status) and the claims of those about to
# be sent. One statement, so atomic without BEGIN/COMMIT and one commit for both. A message is
# never in both parts: this process holds the claim of a message until its finish is written.
# Each part is one JSON array of rows (a row is an array, by position): asyncpg encoded the 26
# arrays this took before at twice the daemon's CPU per statement. jsonb, not json: a json
# row is parsed again for every field taken from it, which cost PostgreSQL a third more.
_WRITE = """
WITH attempts AS (
    INSERT INTO wa_attempts (internal_id, attempt, started_at, latency_ms, outcome, http_status,
        code, subcode, category, message, ambiguous, consumer)
    SELECT a->>0, (a->>1)::int, (a->>2)::timestamptz, (a->>3)::real, a->>4, (a->>5)::int,
        a->>6, (a->>7)::int, a->>8, a->>9, (a->>10)::bool, $4
    FROM jsonb_array_elements($2::jsonb) AS a
), finished AS (
    UPDATE wa_messages m SET
        status = f->>1,
        wamid = COALESCE(f->>2, m.wamid),
        retries = (f->>3)::int,
        last_error_code = COALESCE(f->>4, m.last_error_code),
        last_error_category = COALESCE(f->>5, m.last_error_category),
        last_error_message = COALESCE(f->>6, m.last_error_message),
        next_attempt_at = now() + make_interval(secs => (f->>7)::float8),
        sent_at = CASE WHEN f->>1 = 'sent' THEN now() ELSE m.sent_at END,
        deliveries = 0, claimed_by = NULL, claim_expires_at = NULL, updated_at = now()
    FROM jsonb_array_elements($1::jsonb) AS f
    WHERE m.internal_id = f->>0 AND (m.status <> 'sent' OR f->>1 = 'sent')
)
INSERT INTO wa_messages AS m (internal_id, tenant_id, phone_number_id, recipient, type,
    metadata, status, claimed_by, claim_expires_at, deliveries)
SELECT c->>0, c->>1, c->>2, c->>3, c->>4, NULLIF(c->5, 'null'),
    'claimed', $4, now() + make_interval(secs => $5), 1
FROM jsonb_array_elements($3::jsonb) AS c
ON CONFLICT (internal_id) DO UPDATE SET
    status = 'claimed', claimed_by = EXCLUDED.claimed_by,
    claim_expires_at = EXCLUDED.claim_expires_at, deliveries = m.deliveries + 1,
    updated_at = now()
WHERE m.status <> 'sent'
  AND NOT (m.status = 'claimed' AND m.claim_expires_at > now()
           AND m.claimed_by <> EXCLUDED.claimed_by)
RETURNING m.internal_id, m.deliveries
"""

# Only for the ids a claim did not get (rare): sent already, or held by another consumer.
_STATUS = "SELECT internal_id, status FROM wa_messages WHERE internal_id = ANY($1::text[])"


@dataclass(frozen=True, slots=True)
class _Finish:
    """A message's result, waiting to be written with the next batch."""

    message: Outbound
    record: Record
    attempts: Sequence[Attempt]


# How the pool's sessions plan. The batched statements take arrays whose length changes every
# call, and a custom plan made for each cost a third of PostgreSQL's CPU per message: they are
# planned once. Every one of them finds its rows by primary key, and a plan made once, while
# the table is still small (a new install), must not stay a scan as the table grows: only
# index lookups. The CLI's queries run on connections of their own, planned as usual.
_PLANS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}


async def _keep_session(connection: asyncpg.Connection[Any]) -> None:
    """The ledger sets no session state (no LISTEN, SET or temp tables) to clean up."""


def _json(rows: list[tuple[Any, ...]]) -> str:
    # Naive datetimes are UTC (the daemon makes only aware ones); a Mapping is written as an object.
    return orjson.dumps(rows, default=dict, option=orjson.OPT_NAIVE_UTC).decode()


def _is_finish(item: Outbound | _Finish) -> bool:
    return isinstance(item, _Finish)


def consumer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class PostgresLedger:
    """Claims before the send, results before the ack, in batched statements."""

    counts_deliveries = True

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        lease_seconds: float = 60.0,
        max_deliveries: int = 5,
        finish_timeout: float = 5.0,
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._max_deliveries = max_deliveries
        self._finish_timeout = finish_timeout
        self.consumer = consumer_id()
        # Ids this process holds a claim on now. A claim of our own that is in the database but
        # not here (its answer was lost in an outage) may be taken again at once, no lease wait.
        self._active: set[str] = set()
        self._healthy = True
        # Claims fail fast in an outage (the message goes back to the queue); a finish is kept
        # and written when the database is back.
        self._writes: Batcher[Outbound | _Finish, Claim | None] = Batcher(
            self._write, keep=_is_finish, on_error=self._down
        )

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        pool_size: int = 4,
        statement_timeout_ms: int = 5000,
        apply_migrations: bool = True,
        **kwargs: Any,
    ) -> PostgresLedger:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=pool_size,
                timeout=5,
                command_timeout=statement_timeout_ms / 1000 + 1,
                server_settings={"statement_timeout": str(statement_timeout_ms), **_PLANS},
                reset=_keep_session,  # nothing to reset, and the default costs 3% of the CPU
            )
            if apply_migrations:
                async with pool.acquire() as connection:
                    applied = await migrate(connection)
                if applied:
                    log.info("ledger_migrated", applied=applied)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise LedgerUnavailable(f"cannot open the ledger: {exc}") from None
        return cls(pool, **kwargs)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def _down(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("ledger_unreachable", error=f"{type(exc).__name__}: {exc}"[:300])
        self._healthy = False

    async def ping(self) -> bool:
        """True when the database answers; marks the ledger healthy again."""
        try:
            async with asyncio.timeout(2):
                await self._pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        if not self._healthy:
            log.info("ledger_reachable")
        self._healthy = True
        return True

    async def claim(self, message: Outbound) -> Claim:
        key = message.internal_id
        if key in self._active:
            return Claim.BUSY  # a copy of a message this process is handling right now
        self._active.add(key)
        try:
            claim = await self._writes.submit(message)
        except Exception as exc:
            self._active.discard(key)
            if isinstance(exc, LedgerUnavailable):
                raise
            raise LedgerUnavailable(f"claim failed: {type(exc).__name__}") from exc
        assert claim is not None  # a claim's result is always a Claim
        if claim is not Claim.CLAIMED and claim is not Claim.CRASH_LOOP:
            self._active.discard(key)
        return claim

    async def finish(self, message: Outbound, record: Record, attempts: Sequence[Attempt]) -> None:
        future = self._writes.submit(_Finish(message, record, attempts))
        # Held until the outcome is written: until then the row still shows our claim.
        future.add_done_callback(lambda _: self._active.discard(message.internal_id))
        try:
            await asyncio.wait_for(asyncio.shield(future), self._finish_timeout)
        except TimeoutError:
            # Kept in the batch and written when the database is back; the message is settled
            # now so the broker is not held up by the ledger.
            log.warning("ledger_finish_deferred", internal_id=message.internal_id)

    async def _write(self, items: Sequence[Outbound | _Finish]) -> list[Claim | None]:
        finishes = [i for i in items if isinstance(i, _Finish)]
        claims = [i for i in items if not isinstance(i, _Finish)]
        # One claim per internalId per statement: ON CONFLICT cannot touch a row twice.
        unique = list({m.internal_id: m for m in reversed(claims)}.values())
        finished = [
            (f.message.internal_id, r.status, r.wamid, r.retries, r.code, r.category, r.message,
             r.next_in)
            for f in finishes
            for r in (f.record,)
        ]  # fmt: skip
        attempts = [
            (f.message.internal_id, a.number, a.started_at, a.latency_ms, a.outcome,
             a.http_status, a.code, a.subcode, a.category, a.message, a.ambiguous)
            for f in finishes
            for a in f.attempts
        ]  # fmt: skip
        claimed = [
            (m.internal_id, m.tenant_id, m.phone_number_id, m.to, m.type, m.extra or None)
            for m in unique
        ]
        rows = await self._pool.fetch(
            _WRITE, _json(finished), _json(attempts), _json(claimed), self.consumer, self._lease
        )
        self._healthy = True
        verdict = await self._verdicts(unique, rows) if unique else {}
        out: list[Claim | None] = []
        seen: set[str] = set()
        for item in items:
            if isinstance(item, _Finish):
                out.append(None)
                continue
            # A second copy in the same batch waits for the first.
            out.append(Claim.BUSY if item.internal_id in seen else verdict[item.internal_id])
            seen.add(item.internal_id)
        return out

    async def _verdicts(
        self, claimed: Sequence[Outbound], rows: Sequence[asyncpg.Record]
    ) -> dict[str, Claim]:
        verdict: dict[str, Claim] = {
            row["internal_id"]: (
                Claim.CRASH_LOOP if row["deliveries"] > self._max_deliveries else Claim.CLAIMED
            )
            for row in rows
        }
        if len(verdict) < len(claimed):
            missed = [m.internal_id for m in claimed if m.internal_id not in verdict]
            for row in await self._pool.fetch(_STATUS, missed):
                sent = row["status"] == "sent"
                verdict[row["internal_id"]] = Claim.ALREADY_SENT if sent else Claim.BUSY
            for internal_id in missed:
                verdict.setdefault(internal_id, Claim.BUSY)
        return verdict

    async def close(self) -> None:
        await self._writes.close()
        await self._pool.close()
