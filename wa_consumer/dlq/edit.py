"""Edit and retry: send an edited copy of one dead message, then remove the original.

The console (``console.actions``) and ``dlq edit`` both call these two steps:

- ``prepare_edit``: the edited body is validated like any message (``message.parse``), and
  must keep the dead message's ``tenantId`` and ``internalId``: the edit replaces that
  message, it does not make another. Only a message still dead in the ledger can be edited.
- ``send_edit``: the edit is published to the main queue with a publisher confirm and an
  ``x-replay-count`` one above the dead copy's (so the ledger lets the daemon claim it
  again); only then is the original removed from the DLQ, by a purge of that one message
  that died before the edit (a copy of the edit that dies again meanwhile is not touched).
  The original body stays in the ledger's mirror of the DLQ, its row marked ``edited``; the
  action, with the original, goes into the audit trail.

Errors: ``EditRefused`` (an ``InvalidMessage``) for an edit that would not replace this
message; ``InvalidMessage`` for a body that can never be sent; a ``PublishError`` when the
broker does not take the edit (nothing changed); ``DlqError`` or ``LedgerUnavailable`` from
the purge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Protocol

import aio_pika
import aiormq
import orjson

from .. import headers as h
from ..errors import InvalidMessage
from ..ledger.audit import Db as AuditDb
from ..ledger.audit import record_action
from ..message import Outbound, parse
from ..publisher import NotConfirmed, Refused, Unroutable
from ..settle import now_iso
from .filters import Filter
from .ledger import DeadKey, DlqLedger, Key, open_ledger
from .replay import H_REPLAYED_AT, purge
from .sweep import PassOptions

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from ..ledger.dead import DeadDetail
    from ..settings import Settings

H_EDITED_BY: Final = "x-edited-by"
_CONFIRM_TIMEOUT: Final = 10.0
_BOM: Final = b"\xef\xbb\xbf"


class EditRefused(InvalidMessage):
    """The edit cannot replace this dead message (its ids changed, or it is dead no more)."""


class Marks(Protocol):
    """The ledger's mirror of the DLQ, to mark a row (``ledger.dead.DeadLetters``)."""

    async def mark(self, ids: Sequence[int], state: str, resolution: str | None) -> int: ...


@dataclass(frozen=True, slots=True)
class Edit:
    """An edited body, checked against the dead message it replaces."""

    detail: DeadDetail
    message: Outbound
    body: bytes  # compact JSON, as producers send it


class _AsEdited:
    """The purge's ledger seam, the original's row in the DLQ's mirror marked ``edited``
    (sent again, changed) rather than ``resolved``."""

    def __init__(self, inner: DlqLedger) -> None:
        self._inner = inner

    async def sent(self, keys: Sequence[Key]) -> set[Key]:
        return await self._inner.sent(keys)

    async def resolve(self, keys: Sequence[Key], note: str) -> int:
        return await self._inner.resolve(keys, note)

    async def settle_dead(self, keys: Sequence[DeadKey], state: str, note: str | None) -> int:
        return await self._inner.settle_dead(keys, "edited", note)

    async def record(self, **action: Any) -> None:
        await self._inner.record(**action)


def prepare_edit(detail: DeadDetail, body: bytes, max_bytes: int) -> Edit:
    """``body`` validated as the replacement of ``detail``'s message (see the docstring)."""
    row = detail.row
    if detail.state != "dead":
        raise EditRefused(
            f"dead message {row.id} is {detail.state} already"
            + (f" ({detail.resolution})" if detail.resolution else "")
            + ": only a message still in the DLQ can be edited"
        )
    raw = body.strip().removeprefix(_BOM)
    message = parse(raw, max_bytes)
    if message.internal_id != row.internal_id or (
        row.tenant_id is not None and message.tenant_id != row.tenant_id
    ):
        raise EditRefused(
            "metadata.tenantId and metadata.internalId must stay as they were: the edit "
            "replaces this message, it does not make another"
        )
    return Edit(detail, message, orjson.dumps(orjson.loads(raw)))


def _replays(detail: DeadDetail) -> int:
    """The dead copy's replay count: the highest the row, its headers or its record say."""
    replays = max(detail.row.replays, h.count_or_zero(detail.headers, h.REPLAY_COUNT))
    if detail.record is not None:
        replays = max(replays, int(detail.record.get("replays") or 0))
    return replays


def _copy(edit: Edit, replays: int, actor: str, at: datetime) -> aio_pika.Message:
    headers = h.carry(edit.detail.headers)
    headers.pop(h.DELIVERIES, None)
    headers.update(
        {
            h.RETRY_COUNT: 0,
            h.REPLAY_COUNT: replays,
            H_REPLAYED_AT: now_iso(),
            H_EDITED_BY: h.text(actor),
        }
    )
    return aio_pika.Message(
        edit.body,
        headers=headers,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=edit.message.internal_id,
        timestamp=at,
    )


async def _publish(broker: AbstractConnection, queue: str, copy: aio_pika.Message) -> None:
    """To ``queue`` through the default exchange, confirmed; a ``PublishError`` otherwise."""
    what = f"the edited message {copy.message_id!r}"
    try:
        async with asyncio.timeout(_CONFIRM_TIMEOUT):
            channel = await broker.channel(publisher_confirms=True, on_return_raises=True)
            try:
                confirmed = await channel.default_exchange.publish(
                    copy, routing_key=queue, mandatory=True
                )
            finally:
                await channel.close()
    except aiormq.exceptions.PublishError as exc:  # basic.return
        raise Unroutable(f"{what} is unroutable: queue {queue!r} does not exist") from exc
    except aiormq.exceptions.DeliveryError as exc:  # basic.nack
        raise Refused(f"{what} was refused by the broker; nothing changed") from exc
    except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise NotConfirmed(
            f"{what} was not confirmed ({type(exc).__name__}); the original stays in the "
            "DLQ: look in the main queue before editing again"
        ) from exc
    if not isinstance(confirmed, aiormq.spec.Basic.Ack):
        raise Refused(f"the broker did not confirm {what}; nothing changed")


async def send_edit(
    edit: Edit,
    broker: AbstractConnection,
    settings: Settings,
    *,
    dead: Marks,
    db: AuditDb,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Publish the edit, then purge the original and record the action (see the docstring)."""
    detail, message = edit.detail, edit.message
    row = detail.row
    replays = _replays(detail) + 1
    edited_at = datetime.now(UTC)
    await _publish(broker, settings.queue, _copy(edit, replays, actor, edited_at))
    note = f"edited and retried by {actor}"
    tenants = frozenset({row.tenant_id}) if row.tenant_id else frozenset()
    original = Filter(ids=frozenset({message.internal_id}), tenants=tenants, before=edited_at)
    async with open_ledger(settings.database_url) as ledger:
        purged = await purge(
            broker, settings.dead_letter_queue, original, _AsEdited(ledger), note,
            options=PassOptions.for_queue_type(settings.queue_type),
        )  # fmt: skip
    if not purged.removed:  # no copy left in the DLQ: the row is all there is to mark
        await dead.mark([row.id], "edited", note)
    result = {
        "dead_id": row.id,
        "tenant_id": message.tenant_id,
        "internal_id": message.internal_id,
        "replay_count": replays,
        "published_to": settings.queue,
        "removed_from_dlq": purged.removed,
    }
    await record_action(
        db, actor=actor, action="message_edit_retry", target=f"message:{message.internal_id}",
        reason=reason, details={**result, "original": detail.body.decode("utf-8", "replace")},
    )  # fmt: skip
    return result
