"""Running a group replay (``jobs.ReplayJob``): a canary first, then the rest, in the
background of the console.

1. **Canary**: ``canary`` messages of the group, picked from the ledger's mirror of the DLQ
   (so which ones is known), are replayed at once: ``replay`` with the group's fingerprint
   and their ids (``dlq.canary``, shared with ``dlq replay --canary``).
2. **Waiting**: their outcomes are read from the ledger (``wa_messages``: sent, dead again,
   or still pending) while the operator decides: continue or stop.
3. **Running**: the rest of the group is replayed at ``rate`` messages per second.

Every phase moves messages with ``dlq.replay``, so each is acked in the DLQ only after its
copy in the main queue is confirmed. Only messages that died before the job began are
replayed (``Filter.before``): a canary message that died again, or a new failure, stays.

A stop is taken between two batches of the pass, never inside one: ``replay`` reports its
progress after each batch is settled (every copy confirmed, every original acked or held
with a confirmed copy), and the progress callback raises ``_Stopped`` there. The pass then
ends as any pass does: held originals acked, the unseen ones given back to the queue. So a
stop loses and doubles nothing.

A cut connection loses nothing either, but AMQP cannot promise it doubles nothing: an
original whose copy is confirmed and whose ack was still on its way, or held back (see
``sweep``), is given back to the DLQ by the broker. The pass's window is therefore kept to
about 50 ms of work at the rate (one message at 20 per second), so a cut leaves at most that
many in both queues; the ledger sends each internalId once, and a later replay of such a
copy finds it sent. Small batches also make a stop quick.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiormq
import asyncpg

from ..dlq import canary as canaries
from ..dlq.ledger import DeadKey, DlqLedger, Key, open_ledger
from ..dlq.replay import replay
from ..dlq.sweep import QUORUM_SETTLE_GRACE, PassOptions
from ..errors import WaConsumerError
from ..ledger.audit import record_action
from ..logs import get_logger
from .jobs import MAX_REPLAYS, Phase, ReplayJob
from .problems import Busy, ConsoleError, Invalid, NotFound

if TYPE_CHECKING:
    from .state import Console

log = get_logger("console")


class _Stopped(Exception):
    """Raised from the progress callback between two batches: the operator said stop."""


class _Counting:
    """The replay's ledger seam, counting what the pass chose to replay batch by batch.

    ``replay`` asks ``sent`` once per batch for the messages it chose (matching, under the
    replay maximum); those not sent are the ones it replays, so the job shows its progress
    while the pass runs, not only at the end.
    """

    def __init__(self, inner: DlqLedger, count: Callable[[int], None]) -> None:
        self._inner = inner
        self._count = count

    async def sent(self, keys: Sequence[Key]) -> set[Key]:
        found = await self._inner.sent(keys)
        self._count(len(keys) - len(found))
        return found

    async def resolve(self, keys: Sequence[Key], note: str) -> int:
        return await self._inner.resolve(keys, note)

    async def settle_dead(self, keys: Sequence[DeadKey], state: str, note: str | None) -> int:
        return await self._inner.settle_dead(keys, state, note)

    async def record(self, **action: Any) -> None:
        await self._inner.record(**action)


def _options(console: Console, rate: float | None) -> PassOptions:
    grace = QUORUM_SETTLE_GRACE if console.settings.queue_type == "quorum" else 0.0
    # About 50 ms of paced work in hand (see the module docstring); a canary is small.
    window = 10 if rate is None else max(1, min(200, int(rate / 20)))
    return PassOptions(prefetch=window, settle_grace=grace)


async def start(
    console: Console, fingerprint: str, *, actor: str, reason: str, canary: int, rate: float
) -> ReplayJob:
    """Pick the canary, record the action and start replaying it; the job comes back at once."""
    if canary < 1 or not math.isfinite(rate) or rate <= 0:
        raise Invalid("the canary is at least 1 message and the rate more than 0 per second")
    lock = console.claim_dlq()
    await lock.acquire()  # at once (it is free), so no other pass starts meanwhile
    job = ReplayJob(fingerprint, actor, reason, canary, rate)
    try:
        job.canary = await canaries.pick(
            console.dead, job.group, canary, before=job.created_at, max_replays=MAX_REPLAYS
        )
        if not job.canary:
            raise NotFound(f"group {fingerprint} has no dead message that may be replayed")
        await record_action(
            console.db,
            actor=actor,
            action="group_replay_canary",
            target=f"group:{fingerprint}",
            reason=reason,
            details={"job": job.id, "canary": [c.internal_id for c in job.canary], "rate": rate},
        )
    except BaseException:
        lock.release()
        raise
    console.jobs.add(job)
    job.task = asyncio.create_task(_run(console, job, lock, canary=True), name=f"job-{job.id}")
    return job


async def go_on(console: Console, job: ReplayJob, *, actor: str, rate: float | None) -> None:
    """Replay the rest of the group (at ``rate``, else the job's)."""
    if job.phase is not Phase.WAITING:
        raise Busy(f"job {job.id} is {job.phase.value}: only one waiting after its canary goes on")
    if rate is not None:
        if not math.isfinite(rate) or rate <= 0:
            raise Invalid("the rate is more than 0 messages per second")
        job.rate = rate
    lock = console.claim_dlq()
    await lock.acquire()  # at once (it is free); the phase changes before any other await
    job.phase = Phase.RUNNING
    try:
        await record_action(
            console.db, actor=actor, action="group_replay_continue",
            target=f"group:{job.fingerprint}", reason=job.reason,
            details={"job": job.id, "rate": job.rate},
        )  # fmt: skip
    except BaseException:
        job.phase = Phase.WAITING
        lock.release()
        raise
    job.task = asyncio.create_task(_run(console, job, lock, canary=False), name=f"job-{job.id}")


async def stop(console: Console, job: ReplayJob, *, actor: str, reason: str | None) -> None:
    """Stop the job: at once while it waits, else between two batches of its pass."""
    if job.finished_at is not None:
        raise Busy(f"job {job.id} is already {job.phase.value}")
    await record_action(
        console.db, actor=actor, action="group_replay_stop", target=f"group:{job.fingerprint}",
        reason=reason, details={"job": job.id, "phase": job.phase.value},
    )  # fmt: skip
    job.stopped_by = actor
    job.stop_requested = True
    if job.phase is Phase.WAITING:
        await _finish(console, job, Phase.STOPPED)
    elif job.task is not None:
        await asyncio.shield(job.task)  # a batch: seconds


async def _run(console: Console, job: ReplayJob, lock: asyncio.Lock, *, canary: bool) -> None:
    s = console.settings

    def progress(seen: int, total: int) -> None:
        if not canary:
            job.seen, job.total = seen, total
        if job.stop_requested:
            raise _Stopped

    def counted(n: int) -> None:
        if canary:
            job.canary_replayed += n
        else:
            job.replayed += n

    try:
        async with console.pass_connection() as broker, open_ledger(s.database_url) as opened:
            ledger = _Counting(opened, counted)
            if canary:
                selection = canaries.canary_filter(job.group, job.canary, job.created_at)
                summary = await replay(
                    broker, s.dead_letter_queue, s.queue, selection, ledger,
                    max_replays=MAX_REPLAYS, limit=len(job.canary),
                    options=_options(console, None), progress=progress,
                )  # fmt: skip
                job.canary_replayed = summary.replayed
            else:
                summary = await replay(
                    broker, s.dead_letter_queue, s.queue, job.selection, ledger,
                    max_replays=MAX_REPLAYS, rate=job.rate, options=_options(console, job.rate),
                    progress=progress,
                )  # fmt: skip
                job.replayed = summary.replayed
            job.skipped = dict(summary.skipped)
    except _Stopped:
        await _finish(console, job, Phase.STOPPED)
    except (WaConsumerError, ConsoleError, aiormq.exceptions.AMQPError, OSError) as exc:
        job.error = str(exc) or type(exc).__name__
        log.warning("console_job_failed", job=job.id, error=job.error)
        await _finish(console, job, Phase.FAILED)
    except Exception as exc:
        # aiormq raises some channel errors as RuntimeErrors (ChannelInvalidStateError) when
        # the connection goes under a pass; whatever it is, the pass has stopped and every
        # message without a confirmed copy is back in the DLQ.
        job.error = f"{type(exc).__name__}: {exc}"
        log.error("console_job_failed", job=job.id, error=job.error, exc_info=True)
        await _finish(console, job, Phase.FAILED)
    except asyncio.CancelledError:
        job.error = "cancelled when the console stopped"
        job.phase, job.finished_at = Phase.STOPPED, datetime.now(UTC)
        raise
    else:
        if job.stop_requested:
            await _finish(console, job, Phase.STOPPED)
        elif canary:
            job.phase = Phase.WAITING
        else:
            await _finish(console, job, Phase.DONE)
    finally:
        lock.release()


async def _finish(console: Console, job: ReplayJob, phase: Phase) -> None:
    job.phase, job.finished_at = phase, datetime.now(UTC)
    try:
        await record_action(
            console.db, actor=job.actor, action="group_replay_" + phase.value,
            target=f"group:{job.fingerprint}", reason=job.reason, details=job.to_json(),
        )  # fmt: skip
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # The job's own end is still shown on its page; the trail misses this one line.
        log.warning("console_audit_failed", job=job.id, error=str(exc))
