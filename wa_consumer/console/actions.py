"""What an operator does from the console (the group replay is ``jobs``): replay one dead
message, edit one and send it again, resolve a group, pause, resume or drain a tenant.

Each takes a reason and records who did it, when and why in the audit trail (the tenant
controls record themselves). Moving and removing dead messages goes through the DLQ tools
(``dlq.replay``, ``dlq.purge``), one pass at a time (``Console.claim_dlq``).

Edit and retry keeps the guarantees of a replay: the edited body is validated like any
message, published to the main queue with a publisher confirm and an ``x-replay-count`` one
above the dead copy's (so the ledger lets the daemon claim it again), and only then is the
original removed from the DLQ, by a purge of that one message that died before the edit
(a copy of the edit that dies again meanwhile is not touched). The original body stays in
the ledger's mirror of the DLQ, its row marked ``edited``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aio_pika
import aiormq
import orjson

from .. import headers as h
from ..dlq.filters import Filter
from ..dlq.ledger import DeadKey, DlqLedger, Key, open_ledger
from ..dlq.replay import H_REPLAYED_AT, purge, replay
from ..dlq.sweep import PassOptions
from ..errors import InvalidMessage, WaConsumerError
from ..ledger.audit import record_action
from ..message import parse
from ..settle import now_iso
from .jobs import MAX_REPLAYS
from .problems import Invalid, NotFound, Unavailable

if TYPE_CHECKING:
    from ..controls import TenantState
    from ..ledger.dead import DeadDetail
    from .state import Console

H_EDITED_BY: Final = "x-edited-by"
_MAX_REASON: Final = 500
_CONFIRM_TIMEOUT: Final = 10.0
TENANT_ACTIONS: Final = ("pause", "resume", "drain")


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


def reason_of(text: str | None) -> str:
    """The reason an action needs: given, trimmed, bounded."""
    reason = (text or "").strip()
    if not reason:
        raise Invalid("say why: a reason is recorded with every action")
    if len(reason) > _MAX_REASON:
        raise Invalid(f"the reason is longer than {_MAX_REASON} characters")
    return reason


def _options(console: Console) -> PassOptions:
    return PassOptions.for_queue_type(console.settings.queue_type)


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """The broker's and the ledger's errors as the console's (a 503 with their line)."""
    try:
        yield
    except InvalidMessage as exc:
        raise Invalid(str(exc)) from None
    except WaConsumerError as exc:  # DlqError, LedgerUnavailable, PublishError...
        raise Unavailable(str(exc)) from exc
    except (aiormq.exceptions.AMQPError, ConnectionError, TimeoutError) as exc:
        raise Unavailable(f"RabbitMQ: {type(exc).__name__}: {exc}") from exc


async def _detail(console: Console, dead_id: int) -> DeadDetail:
    detail = await console.dead.detail(dead_id)
    if detail is None:
        raise NotFound(f"no dead message {dead_id} in the ledger")
    return detail


def _one(detail: DeadDetail, **more: Any) -> Filter:
    row = detail.row
    if not row.internal_id:
        raise Invalid("this message has no internalId or message_id: it cannot be picked alone")
    tenants = frozenset({row.tenant_id}) if row.tenant_id else frozenset()
    return Filter(ids=frozenset({row.internal_id}), tenants=tenants, **more)


async def replay_one(console: Console, dead_id: int, *, actor: str, reason: str) -> dict[str, Any]:
    """Replay one dead message (every copy of it in the DLQ) to the main queue."""
    detail = await _detail(console, dead_id)
    s = console.settings
    async with (
        console.claim_dlq(),
        _translated(),
        console.pass_connection() as broker,
        open_ledger(s.database_url) as ledger,
    ):
        summary = await replay(
            broker, s.dead_letter_queue, s.queue, _one(detail), ledger,
            max_replays=MAX_REPLAYS, options=_options(console),
        )  # fmt: skip
    result = summary.to_json()
    del result["sample"]
    await record_action(
        console.db,
        actor=actor,
        action="message_replay",
        target=f"message:{detail.row.internal_id}",
        reason=reason,
        details={"dead_id": dead_id, "tenant_id": detail.row.tenant_id, **result},
    )
    return result


async def edit_and_retry(
    console: Console, dead_id: int, body: str, *, actor: str, reason: str
) -> dict[str, Any]:
    """Send an edited copy of a dead message, then remove the original from the DLQ."""
    detail = await _detail(console, dead_id)
    row, s = detail.row, console.settings
    raw = body.strip().encode()
    async with _translated():
        message = parse(raw, s.max_message_bytes)  # InvalidMessage: a 422 with the reason
    if message.internal_id != row.internal_id or (
        row.tenant_id is not None and message.tenant_id != row.tenant_id
    ):
        raise Invalid(
            "metadata.tenantId and metadata.internalId must stay as they were: the edit "
            "replaces this message, it does not make another"
        )
    replays = max(row.replays, h.count_or_zero(detail.headers, h.REPLAY_COUNT))
    if detail.record is not None:
        replays = max(replays, int(detail.record.get("replays") or 0))
    edited_at = datetime.now(UTC)
    headers = h.carry(detail.headers)
    headers.pop(h.DELIVERIES, None)
    headers.update(
        {
            h.RETRY_COUNT: 0,
            h.REPLAY_COUNT: replays + 1,
            H_REPLAYED_AT: now_iso(),
            H_EDITED_BY: h.text(actor),
        }
    )
    copy = aio_pika.Message(
        orjson.dumps(orjson.loads(raw)),  # compact, as producers send it
        headers=headers,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.internal_id,
        timestamp=edited_at,
    )
    note = f"edited and retried by {actor}"
    async with console.claim_dlq(), _translated(), console.pass_connection() as broker:
        channel = await broker.channel(publisher_confirms=True, on_return_raises=True)
        try:
            confirmed = await channel.default_exchange.publish(
                copy, routing_key=s.queue, mandatory=True, timeout=_CONFIRM_TIMEOUT
            )
        finally:
            await channel.close()
        if not isinstance(confirmed, aiormq.spec.Basic.Ack):
            raise Unavailable("the broker did not confirm the edited message; nothing changed")
        async with open_ledger(s.database_url) as ledger:
            purged = await purge(
                broker, s.dead_letter_queue, _one(detail, before=edited_at),
                _AsEdited(ledger), note, options=_options(console),
            )  # fmt: skip
    if not purged.removed:  # no copy left in the DLQ: the row is all there is to mark
        await console.dead.mark([dead_id], "edited", note)
    result = {
        "dead_id": dead_id,
        "tenant_id": message.tenant_id,
        "internal_id": message.internal_id,
        "replay_count": replays + 1,
        "published_to": s.queue,
        "removed_from_dlq": purged.removed,
    }
    await record_action(
        console.db, actor=actor, action="message_edit_retry",
        target=f"message:{message.internal_id}", reason=reason,
        details={**result, "original": detail.body.decode("utf-8", "replace")},
    )  # fmt: skip
    return result


async def resolve_group(
    console: Console, fingerprint: str, *, actor: str, reason: str
) -> dict[str, Any]:
    """Purge the group's dead messages (those that died before now), the reason recorded."""
    s = console.settings
    selection = Filter(fingerprints=(fingerprint,), before=datetime.now(UTC))
    note = f"resolved by {actor}: {reason}"
    async with (
        console.claim_dlq(),
        _translated(),
        console.pass_connection() as broker,
        open_ledger(s.database_url) as ledger,
    ):
        summary = await purge(
            broker, s.dead_letter_queue, selection, ledger, note,
            options=_options(console),
        )  # fmt: skip
    result = summary.to_json()
    await record_action(
        console.db, actor=actor, action="group_resolve", target=f"group:{fingerprint}",
        reason=reason, details=result,
    )  # fmt: skip
    return result


async def control_tenant(
    console: Console, action: str, tenant: str, number: str | None, *, actor: str, reason: str
) -> TenantState:
    """Pause, resume or drain a tenant (or one of its numbers); recorded by the controls."""
    if action not in TENANT_ACTIONS:
        raise NotFound(f"no tenant action {action!r}")
    do = getattr(console.controls, action)
    try:
        state: TenantState = await do(tenant, number or None, reason=reason, actor=actor)
    except ValueError as exc:  # a tenant id or number out of shape
        raise Invalid(str(exc)) from None
    except WaConsumerError as exc:
        raise Unavailable(str(exc)) from exc
    return state
