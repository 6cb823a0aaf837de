"""What an operator does from the console (the group replay is ``jobs``): replay one dead
message, edit one and send it again, resolve a group, pause, resume or drain a tenant.

Each takes a reason and records who did it, when and why in the audit trail (the tenant
controls record themselves). Moving and removing dead messages goes through the DLQ tools
(``dlq.replay``, ``dlq.purge``, ``dlq.edit``, shared with the CLI), one pass at a time
(``Console.claim_dlq``); their errors become the console's here (``_translated``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import aiormq

from ..dlq.canary import MAX_REPLAYS
from ..dlq.edit import prepare_edit, send_edit
from ..dlq.filters import Filter
from ..dlq.ledger import open_ledger
from ..dlq.replay import purge, replay
from ..dlq.sweep import PassOptions
from ..errors import InvalidMessage, WaConsumerError
from ..ledger.audit import record_action
from .problems import Invalid, NotFound, Unavailable

if TYPE_CHECKING:
    from ..controls import TenantState
    from ..ledger.dead import DeadDetail
    from .state import Console

_MAX_REASON: Final = 500
TENANT_ACTIONS: Final = ("pause", "resume", "drain")


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
    """Send an edited copy of a dead message, then remove the original from the DLQ
    (``dlq.edit``: validated like any message, confirmed, the original kept in the ledger)."""
    detail = await _detail(console, dead_id)
    s = console.settings
    async with _translated():
        edit = prepare_edit(detail, body.encode(), s.max_message_bytes)  # a 422 with the reason
        async with console.claim_dlq(), console.pass_connection() as broker:
            return await send_edit(
                edit, broker, s, dead=console.dead, db=console.db, actor=actor, reason=reason
            )


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
