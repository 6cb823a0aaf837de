"""Changing the DLQ: ``replay`` (back to the main queue) and ``purge`` (gone, with a reason).

Both are one pass (see ``sweep``): a message they act on is republished and confirmed (replay)
or recorded in the ledger (purge) before its ack; every other message is kept in its order.

A replayed copy has the body unchanged, drops the broker's ``x-death`` bookkeeping, starts
``x-retry-count`` again at 0 and adds one to ``x-replay-count``. It goes to the main queue
through the default exchange, so no other queue bound to the exchange gets a second copy.
Its ``timestamp`` is the replay's: the daemon measures a message's maximum age from it, and
an operator replaying after a fix has decided to send again (a producer's own deadline,
``expiresAt`` in the body, still holds). The daemon claims any message it does not record as
sent, so a dead one is claimed again. The ledger is asked by (tenant, internalId): another
tenant's sent message with the same id does not hold one back.

The ledger's mirror of the DLQ (``wa_dead``) follows: a replayed message's row becomes
``replayed`` once its copy is confirmed in the main queue, before the DLQ ack; a purged one's
``resolved``, with the reason, before the ack, as the reason on its record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from .. import headers as h
from ..settle import now_iso
from .filters import Filter
from .ledger import DeadKey, DlqLedger, NoLedger, dead_key, ledger_key
from .record import describe
from .sweep import (
    DROP,
    KEEP,
    Action,
    DeadLetterPass,
    DlqError,
    Move,
    Pacer,
    PassOptions,
    PassReport,
    Progress,
)

SKIP_REPLAY_LIMIT = "replay limit"
SKIP_ALREADY_SENT = "already sent"
SKIP_LIMIT = "--limit reached"
H_REPLAYED_AT = "x-replayed-at"
_SAMPLE = 20  # messages a dry run names


def replay_message(delivery: AbstractIncomingMessage, replays: int) -> aio_pika.Message:
    """The copy that goes back to the main queue (see the module docstring)."""
    headers = h.carry(delivery.headers)
    headers.pop(h.DELIVERIES, None)
    headers[h.RETRY_COUNT] = 0
    headers[h.REPLAY_COUNT] = replays + 1
    headers[H_REPLAYED_AT] = now_iso()
    return aio_pika.Message(
        delivery.body,
        headers=headers,
        content_type=delivery.content_type or "application/json",
        content_encoding=delivery.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=delivery.priority,
        correlation_id=delivery.correlation_id,
        message_id=delivery.message_id,
        timestamp=datetime.now(UTC),
        type=delivery.type,
        app_id=delivery.app_id,
    )


@dataclass(slots=True)
class ReplaySummary:
    """What a replay did (or, dry, would do)."""

    queue: str
    target: str
    dry_run: bool
    report: PassReport = field(default_factory=PassReport)
    matched: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    sample: list[dict[str, Any]] = field(default_factory=list)
    mirrored: int = 0  # rows of the ledger's mirror marked replayed

    @property
    def left(self) -> int:
        """Messages of this pass still in the DLQ afterwards."""
        return self.report.seen - (0 if self.dry_run else self.replayed)

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "target": self.target,
            "dry_run": self.dry_run,
            "messages": self.report.seen,
            "matched": self.matched,
            "replayed": self.replayed,
            "skipped": dict(self.skipped),
            "left": self.left,
            "by_category": dict(self.by_category.most_common()),
            "sample": self.sample,
            "marked_in_ledger": self.mirrored,
        }


async def _check_target(connection: AbstractConnection, queue: str) -> None:
    async with connection.channel() as channel:
        try:
            await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise DlqError(
                f"queue {queue!r} does not exist; nothing to replay into "
                "(wa-consumer topology declare)"
            ) from None


async def replay(
    connection: AbstractConnection,
    queue: str,
    target: str,
    selection: Filter,
    ledger: DlqLedger,
    *,
    max_replays: int = 3,
    limit: int | None = None,
    rate: float | None = None,
    dry_run: bool = False,
    options: PassOptions | None = None,
    progress: Progress | None = None,
) -> ReplaySummary:
    """Move the dead messages matching ``selection`` from ``queue`` back to ``target``."""
    summary = ReplaySummary(queue, target, dry_run)
    await _check_target(connection, target)
    keys: dict[int, DeadKey] = {}  # the moved messages' rows in the mirror, by delivery

    async def moved(deliveries: Sequence[AbstractIncomingMessage]) -> None:
        # Their copies are confirmed in the main queue; their DLQ acks come next.
        done = [keys.pop(id(d)) for d in deliveries]
        summary.mirrored += await ledger.settle_dead(done, "replayed", "replayed to " + target)

    async def decide(batch: Sequence[AbstractIncomingMessage], first: int) -> list[Action]:
        records = [describe(d, first + i) for i, d in enumerate(batch)]
        chosen: list[int] = []
        for i, record in enumerate(records):
            if selection.matches(record):
                summary.matched += 1
                if record.replay_count >= max_replays:
                    summary.skipped[SKIP_REPLAY_LIMIT] += 1
                else:
                    chosen.append(i)
        sent = await ledger.sent([ledger_key(records[i]) for i in chosen])
        actions: list[Action] = [KEEP] * len(batch)
        for i in chosen:
            record = records[i]
            if ledger_key(record) in sent:
                summary.skipped[SKIP_ALREADY_SENT] += 1
            elif limit is not None and summary.replayed >= limit:
                summary.skipped[SKIP_LIMIT] += 1
            else:
                summary.replayed += 1
                summary.by_category[record.category] += 1
                if dry_run:
                    if len(summary.sample) < _SAMPLE:
                        summary.sample.append(record.to_json())
                else:
                    actions[i] = Move(replay_message(batch[i], record.replay_count), target)
                    keys[id(batch[i])] = dead_key(record, batch[i].headers)
        return actions

    summary.report = await DeadLetterPass(
        connection,
        queue,
        decide,
        options=options,
        pacer=Pacer(rate) if rate and not dry_run else None,
        progress=progress,
        moved=moved,
    ).run()
    return summary


@dataclass(slots=True)
class PurgeSummary:
    """What a purge removed (or, dry, would remove)."""

    queue: str
    reason: str
    dry_run: bool = False
    report: PassReport = field(default_factory=PassReport)
    recorded: bool = False  # a ledger was there to record the reason
    removed: int = 0
    resolved: int = 0  # ledger rows given the reason
    mirrored: int = 0  # rows of the ledger's mirror marked resolved
    by_category: Counter[str] = field(default_factory=Counter)

    @property
    def left(self) -> int:
        return self.report.seen - (0 if self.dry_run else self.removed)

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "dry_run": self.dry_run,
            "messages": self.report.seen,
            "removed": self.removed,
            "left": self.left,
            "resolved_in_ledger": self.resolved if self.recorded else None,
            "marked_in_ledger": self.mirrored if self.recorded else None,
            "by_category": dict(self.by_category.most_common()),
        }


async def purge(
    connection: AbstractConnection,
    queue: str,
    selection: Filter,
    ledger: DlqLedger,
    reason: str,
    *,
    dry_run: bool = False,
    options: PassOptions | None = None,
    progress: Progress | None = None,
) -> PurgeSummary:
    """Delete the dead messages matching ``selection``, recording ``reason`` in the ledger.

    The reason is written before the acks of each batch: a purge that stops half-way may
    leave a message with its reason recorded, never one gone without it. A dry run keeps
    every message and writes nothing: it counts what would go.
    """
    recorded = not isinstance(ledger, NoLedger) and not dry_run
    summary = PurgeSummary(queue, reason, dry_run, recorded=recorded)

    async def decide(batch: Sequence[AbstractIncomingMessage], first: int) -> list[Action]:
        records = [describe(d, first + i) for i, d in enumerate(batch)]
        actions: list[Action] = [DROP if selection.matches(r) else KEEP for r in records]
        gone = [(r, d) for r, d, a in zip(records, batch, actions, strict=True) if a is DROP]
        summary.removed += len(gone)
        summary.by_category.update(r.category for r, _ in gone)
        if dry_run:
            return [KEEP] * len(batch)
        keys = list(dict.fromkeys(ledger_key(r) for r, _ in gone if r.internal_id))
        summary.resolved += await ledger.resolve(keys, reason)
        dead = [dead_key(r, d.headers) for r, d in gone if r.internal_id]
        summary.mirrored += await ledger.settle_dead(dead, "resolved", reason)
        return actions

    summary.report = await DeadLetterPass(
        connection, queue, decide, options=options, progress=progress
    ).run()
    return summary
