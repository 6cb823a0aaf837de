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
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from ..errors import LedgerUnavailable, LedgerUnreachable
from ..logs import get_logger
from ..message import Outbound
from ..outcomes import Failure
from ..seams import Attempt, Claim, Death, Record
from ..settings import masked
from ..startup import transient
from .batch import Batcher, Waits
from .dead_write import DeadWriter
from .heartbeat import OUTAGE as _OUTAGE
from .heartbeat import Heartbeat
from .migrate import migrate
from .statuses import PostgresStatuses

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
    INSERT INTO wa_attempts (tenant_id, internal_id, attempt, started_at, latency_ms, outcome,
        http_status, code, subcode, category, message, ambiguous, fbtrace_id, consumer)
    SELECT a->>0, a->>1, (a->>2)::int, (a->>3)::timestamptz, (a->>4)::real, a->>5,
        (a->>6)::int, a->>7, (a->>8)::int, a->>9, a->>10, (a->>11)::bool, a->>12, $4
    FROM jsonb_array_elements($2::jsonb) AS a
), finished AS (
    UPDATE wa_messages m SET
        status = f->>2,
        wamid = COALESCE(f->>3, m.wamid),
        retries = (f->>4)::int,
        last_error_code = COALESCE(f->>5, m.last_error_code),
        last_error_category = COALESCE(f->>6, m.last_error_category),
        last_error_message = COALESCE(f->>7, m.last_error_message),
        next_attempt_at = now() + make_interval(secs => (f->>8)::float8),
        sent_at = CASE WHEN f->>2 = 'sent' THEN now() ELSE m.sent_at END,
        deliveries = 0, claimed_by = NULL, claim_expires_at = NULL, updated_at = now()
    FROM jsonb_array_elements($1::jsonb) AS f
    WHERE m.tenant_id = f->>0 AND m.internal_id = f->>1
      AND (m.status <> 'sent' OR f->>2 = 'sent')
      -- Only while the claim is still ours (or a dying message is dead-lettered again); a
      -- send Meta accepted is recorded whoever holds it.
      AND (m.claimed_by = $4 OR f->>2 = 'sent'
           OR (m.claimed_by IS NULL AND m.status = 'dying' AND f->>2 IN ('dead', 'dying')))
), accepted AS (
    -- The wamid's row, where its statuses land; one that came first (its send's result was
    -- not written yet) is tied to its message now.
    INSERT INTO wa_deliveries AS d (wamid, tenant_id, internal_id, status, accepted_at)
    -- One row per wamid: ON CONFLICT cannot touch a row twice in one statement, and a
    -- wamid the API gave twice (a broken proxy, a stub) must not fail the batch.
    -- In byte order, as the status statement locks them (payload.merge): no deadlock.
    SELECT DISTINCT ON ((f->>3) COLLATE "C") f->>3, f->>0, f->>1, 'accepted', now()
    FROM jsonb_array_elements($1::jsonb) AS f
    WHERE f->>2 = 'sent' AND f->>3 <> ''  -- a read receipt is accepted with no wamid
    ORDER BY (f->>3) COLLATE "C"
    ON CONFLICT (wamid) DO UPDATE SET
        tenant_id = COALESCE(d.tenant_id, EXCLUDED.tenant_id),
        internal_id = COALESCE(d.internal_id, EXCLUDED.internal_id),
        accepted_at = COALESCE(d.accepted_at, EXCLUDED.accepted_at), updated_at = now()
    WHERE d.tenant_id IS NULL OR d.accepted_at IS NULL
)
INSERT INTO wa_messages AS m (tenant_id, internal_id, phone_number_id, recipient, type,
    metadata, replays, callback, status, claimed_by, claim_expires_at, deliveries)
SELECT c->>0, c->>1, c->>2, c->>3, c->>4, NULLIF(c->5, 'null'), (c->>6)::int, c->>7,
    'claimed', $4, now() + make_interval(secs => $5), 1
FROM jsonb_array_elements($3::jsonb) AS c
ON CONFLICT (tenant_id, internal_id) DO UPDATE SET
    status = 'claimed', claimed_by = EXCLUDED.claimed_by,
    claim_expires_at = EXCLUDED.claim_expires_at, deliveries = m.deliveries + 1,
    replays = EXCLUDED.replays, callback = EXCLUDED.callback, updated_at = now()
WHERE m.status <> 'sent'
  -- Dead (its copy in the DLQ, or dying: a copy not confirmed): only a replay brings it back.
  AND NOT (m.status IN ('dead', 'dying') AND m.replays >= EXCLUDED.replays)
  -- Held by another consumer: only while its lease runs and it is alive (its heartbeat is
  -- recent). A consumer killed with its claims is taken over within seconds.
  AND NOT (m.status = 'claimed' AND m.claim_expires_at > now()
           AND m.claimed_by <> EXCLUDED.claimed_by
           AND EXISTS (SELECT 1 FROM wa_consumers c WHERE c.id = m.claimed_by
                       AND c.alive_until > now()))
RETURNING m.tenant_id, m.internal_id, m.deliveries
"""

# Only for the keys a claim did not get (rare): sent already, or held by another consumer.
_STATUS = """
SELECT m.tenant_id, m.internal_id, m.status, m.last_error_category, m.last_error_code,
    m.last_error_message
FROM wa_messages m
JOIN unnest($1::text[], $2::text[]) AS k (tenant_id, internal_id)
  ON m.tenant_id = k.tenant_id AND m.internal_id = k.internal_id
"""

# Claims whose answer an outage took: released once the database is back (peers need not
# wait out the lease), unless the message is ours again by then.
_RELEASE = """
UPDATE wa_messages m SET status = 'pending', claimed_by = NULL, claim_expires_at = NULL,
    updated_at = now()
FROM unnest($1::text[], $2::text[]) AS k (tenant_id, internal_id)
WHERE m.tenant_id = k.tenant_id AND m.internal_id = k.internal_id
  AND m.claimed_by = $3 AND m.status = 'claimed'
"""

# ``_OUTAGE`` (heartbeat.py): the database away or overloaded: consuming pauses, results kept.
#: A conflict between two daemons' statements: tried again at once before it counts.
_CONFLICT = asyncpg.TransactionRollbackError
#: Refused rows in a row, with none taken between, that say the statement or the schema is
#: wrong for every message, not one message wrong for the statement: then it is an outage.
_SYSTEMIC_AFTER = 20
#: Errors that say one row cannot be stored: that message's own problem, found by splitting.
_DATA = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    orjson.JSONEncodeError,
)


class LedgerRefusesEverything(LedgerUnavailable):
    """Every row is refused: a schema or statement problem, handled as an outage."""


def _is_outage(exc: BaseException) -> bool:
    outage = (*_OUTAGE, LedgerRefusesEverything)
    return isinstance(exc, outage) and not isinstance(exc, _DATA)


Key = tuple[str, str]  # (tenant_id, internal_id)

# What a claim that did not take a row says, by the row's status.
_SETTLED = {"sent": Claim.ALREADY_SENT, "dead": Claim.ALREADY_DEAD, "dying": Claim.DYING}


@dataclass(slots=True)  # not frozen, as seams.Attempt
class _Claim:
    """A message to claim, with the replay count of the delivery (see the claim statement)."""

    message: Outbound
    replays: int


@dataclass(slots=True)  # not frozen, as seams.Attempt
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


def _is_finish(item: _Claim | _Finish) -> bool:
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
        heartbeat_seconds: float = 2.0,
        url: str | None = None,
    ) -> None:
        self._pool = pool
        self._lease = lease_seconds
        self._max_deliveries = max_deliveries
        self._finish_timeout = finish_timeout
        # A consumer unseen for this long is gone: its claims may be taken over.
        self.consumer = consumer_id()
        # Keys this process holds a claim on now. A claim of our own that is in the database but
        # not here (its answer was lost in an outage) may be taken again at once, no lease wait.
        # The value: a future a second copy of the message waits on, made only when one comes.
        self._active: dict[Key, asyncio.Future[None] | None] = {}
        self._failures: dict[Key, Failure] = {}  # why a dying message died, for its next copy
        self._own_copy_wait = min(lease_seconds / 2, 30.0)
        self._unknown: set[Key] = set()  # claims whose answer an outage took
        self._refused_in_a_row = 0
        # The heartbeat's own connection needs the URL; without one it beats on the pool.
        self.heartbeat = Heartbeat(pool, self.consumer, heartbeat_seconds, url)
        self._healthy = True
        # Claims fail fast in an outage (the message goes back to the queue); a finish is kept
        # and written when the database is back.
        self._writes: Batcher[_Claim | _Finish, Claim | None] = Batcher(
            self._write, keep=_is_finish, transient=_is_outage, on_error=self._down
        )
        self._finishing = Waits(finish_timeout)
        # Connections the batched statement keeps between its statements, never the pool's
        # last: taking one from the pool and giving it back was half of a statement's round
        # trip in the client (13 of 25 µs).
        self._parked: list[Any] = []
        self._park_at_most = min(self._writes.concurrency, pool.get_max_size() - 1)
        # Deaths (the DLQ's mirror, wa_dead) in batches of their own: a send's statement
        # stays as it was.
        self._deaths = DeadWriter(
            pool,
            transient=_is_outage,
            data_errors=_DATA,
            conflict=_CONFLICT,
            on_error=self._down,
            describe=_no_secrets,
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
                try:
                    async with pool.acquire() as connection:
                        applied = await migrate(connection)
                except BaseException:
                    pool.terminate()  # start-up may try again: no pool left behind
                    raise
                if applied:
                    log.info("ledger_migrated", applied=applied)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            error = LedgerUnreachable if transient(exc) else LedgerUnavailable  # start-up waits?
            raise error(f"cannot open the ledger: {_no_secrets(exc)}") from None
        return cls(pool, url=url, **kwargs)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def results_held(self) -> int:
        """Results (finishes and deaths) in memory, not yet written: queued, being written,
        or kept through an outage. Read at scrape time."""
        return self._writes.held(_is_finish) + self._deaths.held()

    def observe_batches(self, on_batch: Callable[[int, float], None]) -> None:
        """Have ``on_batch(items, seconds)`` called for each statement written (metrics)."""
        self._writes.on_batch = on_batch

    async def start(self) -> None:
        """Say this consumer is alive now, and keep saying it (``heartbeat``)."""
        await self.heartbeat.start()

    def _down(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("ledger_unreachable", error=_no_secrets(exc))
        self._healthy = False

    async def ping(self) -> bool:
        """True when the database answers; marks the ledger healthy again."""
        try:
            async with asyncio.timeout(2):
                await self._pool.fetchval("SELECT 1")
        except _OUTAGE:
            return False
        if not self._healthy:
            log.info("ledger_reachable")
        self._healthy = True
        await self._release_unknown()
        return True

    async def _release_unknown(self) -> None:
        keys = [k for k in self._unknown if k not in self._active]
        self._unknown.clear()
        if not keys:
            return
        try:
            async with asyncio.timeout(5):
                await self._pool.execute(
                    _RELEASE, [k[0] for k in keys], [k[1] for k in keys], self.consumer
                )
        except _OUTAGE:
            self._unknown.update(keys)  # the next ping tries again

    async def claim(self, message: Outbound, replays: int = 0) -> Claim:
        key = (message.tenant_id, message.internal_id)
        if key in self._active:
            # A copy of a message this process is handling right now (the broker redelivered
            # it after a cut): wait for the first to be recorded, then this one is a duplicate.
            held = self._active[key]
            if held is None:
                held = self._active[key] = asyncio.get_running_loop().create_future()
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(held), self._own_copy_wait)
            if key in self._active:
                return Claim.BUSY
        self._active[key] = None
        try:
            claim = await self._writes.submit(_Claim(message, replays))
        except BaseException as exc:
            self._release(key)
            if _is_outage(exc):
                self._unknown.add(key)  # it may have been written: released when back
                raise LedgerUnavailable(f"claim failed: {type(exc).__name__}") from exc
            raise
        assert claim is not None  # a claim's result is always a Claim
        if claim is not Claim.CLAIMED and claim is not Claim.CRASH_LOOP:
            self._release(key)
        return claim

    def statuses(self) -> PostgresStatuses:
        """Statuses are applied on the same pool (one batch at a time)."""
        return PostgresStatuses(self._pool)

    def recorded_failure(self, message: Outbound) -> Failure | None:
        """Why a message the last claim found ``DYING`` died (once, then forgotten)."""
        return self._failures.pop((message.tenant_id, message.internal_id), None)

    def _release(self, key: Key) -> None:
        done = self._active.pop(key, None)
        if done is not None and not done.done():
            done.set_result(None)

    async def finish(self, message: Outbound, record: Record, attempts: Sequence[Attempt]) -> None:
        key = (message.tenant_id, message.internal_id)
        future = self._writes.submit(_Finish(message, record, attempts))
        # Held until the outcome is written: until then the row still shows our claim.
        future.add_done_callback(lambda _: self._release(key))
        try:
            if not await self._finishing.wait(future):
                raise TimeoutError
            future.result()  # what the write raised, if it did
        except TimeoutError:
            # Kept in the batch and written when the database is back; the message is settled
            # now so the broker is not held up by the ledger.
            log.warning("ledger_finish_deferred", internal_id=message.internal_id)
        except Exception as exc:  # noqa: BLE001 - never raises: the message is settled anyway
            log.error(
                "ledger_finish_failed",
                tenant_id=message.tenant_id,
                internal_id=message.internal_id,
                status=record.status,
                error=_no_secrets(exc),
            )

    async def dead(self, death: Death) -> None:
        """Record a death whose copy went to the DLQ (``dead_write``); never raises."""
        await self._deaths.record(death, self._finish_timeout)

    async def _write(self, items: Sequence[_Claim | _Finish]) -> list[Claim | None]:
        """Write a batch; a row the database refuses is found by halving, and only it fails."""
        try:
            try:
                return await self._statement(items)
            except _CONFLICT:  # a deadlock or serialization failure with another daemon
                await asyncio.sleep(0.05)
                return await self._statement(items)
        except _DATA as exc:
            if len(items) > 1:
                half = len(items) // 2
                return [*await self._write(items[:half]), *await self._write(items[half:])]
            return [await self._refused(items[0], exc)]

    async def _refused(self, item: _Claim | _Finish, exc: BaseException) -> Claim | None:
        """The one row the database cannot take: a claim is that message's ``REFUSED``; a
        result is written again without its texts, the outcome itself never lost."""
        if not isinstance(item, _Finish):
            self._refused_in_a_row += 1
            if self._refused_in_a_row > _SYSTEMIC_AFTER:
                raise LedgerRefusesEverything(
                    f"{self._refused_in_a_row} claims in a row refused: {_no_secrets(exc)}"
                ) from exc
            log.warning(
                "ledger_refused_claim",
                tenant_id=item.message.tenant_id,
                internal_id=item.message.internal_id,
                error=_no_secrets(exc),
            )
            return Claim.REFUSED
        r = item.record
        plain = _Finish(item.message, Record(r.status, r.retries, r.wamid, next_in=r.next_in), ())
        log.error(
            "ledger_refused_result",
            tenant_id=item.message.tenant_id,
            internal_id=item.message.internal_id,
            status=r.status,
            error=_no_secrets(exc),
        )
        try:
            await self._statement([plain])
        except _DATA:
            log.error("ledger_result_dropped", internal_id=item.message.internal_id)
        return None

    async def _statement(self, items: Sequence[_Claim | _Finish]) -> list[Claim | None]:
        finishes = [i for i in items if isinstance(i, _Finish)]
        claims = [i for i in items if isinstance(i, _Claim)]
        # One claim per key per statement: ON CONFLICT cannot touch a row twice.
        unique = list(
            {(c.message.tenant_id, c.message.internal_id): c for c in reversed(claims)}.values()
        )
        finished = [
            (f.message.tenant_id, f.message.internal_id, r.status, r.wamid, r.retries, r.code,
             r.category, _clean(r.message), r.next_in)
            for f in finishes
            for r in (f.record,)
        ]  # fmt: skip
        attempts = [
            (f.message.tenant_id, f.message.internal_id, a.number, a.started_at, a.latency_ms,
             a.outcome, a.http_status, a.code, _int32(a.subcode), a.category, _clean(a.message),
             a.ambiguous, _clean(a.fbtrace_id))
            for f in finishes
            for a in f.attempts
        ]  # fmt: skip
        claimed = [
            (m.tenant_id, m.internal_id, m.phone_number_id, m.to, m.type, m.extra or None,
             c.replays, m.callback)
            for c in unique
            for m in (c.message,)
        ]  # fmt: skip
        rows = await self._fetch(
            _WRITE,
            _json(finished),
            _json(attempts),
            _json(claimed),
            self.consumer,
            self._lease,
        )
        self._healthy = True
        if unique:
            self._refused_in_a_row = 0
        verdict = await self._verdicts([c.message for c in unique], rows) if unique else {}
        out: list[Claim | None] = []
        seen: set[Key] = set()
        for item in items:
            if isinstance(item, _Finish):
                out.append(None)
                continue
            key = (item.message.tenant_id, item.message.internal_id)
            # A second copy in the same batch waits for the first.
            out.append(Claim.BUSY if key in seen else verdict[key])
            seen.add(key)
        return out

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        parked = self._parked
        connection = parked.pop() if parked else await self._pool.acquire()
        try:
            rows: list[asyncpg.Record] = await connection.fetch(query, *args)
        except BaseException:
            await self._pool.release(connection)  # the pool replaces a broken one
            raise
        if len(parked) < self._park_at_most:
            parked.append(connection)
        else:
            await self._pool.release(connection)
        return rows

    async def _verdicts(
        self, claimed: Sequence[Outbound], rows: Sequence[asyncpg.Record]
    ) -> dict[Key, Claim]:
        verdict: dict[Key, Claim] = {
            (row["tenant_id"], row["internal_id"]): (
                Claim.CRASH_LOOP if row["deliveries"] > self._max_deliveries else Claim.CLAIMED
            )
            for row in rows
        }
        if len(verdict) < len(claimed):
            missed = [(m.tenant_id, m.internal_id) for m in claimed]
            missed = [k for k in missed if k not in verdict]
            tenants, ids = [k[0] for k in missed], [k[1] for k in missed]
            for row in await self._pool.fetch(_STATUS, tenants, ids):
                key = (row["tenant_id"], row["internal_id"])
                verdict[key] = _SETTLED.get(row["status"], Claim.BUSY)
                if verdict[key] is Claim.DYING:
                    self._failures[key] = Failure(
                        row["last_error_category"] or "unknown",
                        row["last_error_code"] or "unknown",
                        row["last_error_message"] or "dead (recorded before a broker cut)",
                    )
            for key in missed:
                verdict.setdefault(key, Claim.BUSY)
        return verdict

    async def close(self, grace: float = 5.0) -> None:
        """Write what is queued (up to ``grace``), say so of what could not be, and leave."""
        deaths, left = await asyncio.gather(self._deaths.close(grace), self._writes.close(grace))
        if deaths:
            log.error(
                "ledger_deaths_unwritten",
                count=len(deaths),
                reason="the database did not come back before exit; the messages are in the DLQ",
                deaths=[f"{d[0]}/{d[1]}" for d in deaths[:100]],
            )
        lost = [i for i in left if isinstance(i, _Finish)]
        if lost:
            log.error(
                "ledger_results_unwritten",
                count=len(lost),
                reason="the database did not come back before exit; the messages are settled",
                results=[
                    f"{f.message.tenant_id}/{f.message.internal_id}:{f.record.status}"
                    for f in lost[:100]
                ],
            )
        # With no result left unwritten, no claim of ours is open: the heartbeat row goes.
        await self.heartbeat.close(gone=not lost)
        parked, self._parked = self._parked, []
        for connection in parked:
            await self._pool.release(connection)
        await self._pool.close()


def _clean(text: str | None) -> str | None:
    """PostgreSQL's text refuses NUL; everything else is kept."""
    return text.replace("\x00", "") if text and "\x00" in text else text


def _int32(value: int | None) -> int | None:
    return value if value is not None and -(2**31) <= value < 2**31 else None


def _no_secrets(exc: BaseException) -> str:
    """An error line without what a DSN may carry (asyncpg quotes neither, but be sure)."""
    return masked(f"{type(exc).__name__}: {exc}")[:300]
