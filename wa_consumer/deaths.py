"""What the ledger's mirror of the DLQ is told of a death (``seams.Death``).

Every death whose copy reaches the DLQ is told, whether or not the ledger claimed the message
(an invalid body, an expired or unknown tenant's message die before the claim). Built only
for ``Dead`` outcomes: a sent message costs nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import headers as h
from .context import Context
from .delivery import Delivery
from .outcomes import Dead, Failure
from .seams import Death


def death_of(
    ctx: Context,
    dead: Dead,
    delivery: Delivery,
    copied: bool,
    copy_headers: Mapping[str, Any] | None,
    max_body: int,
) -> Death | None:
    """The ``Death`` of this delivery; None when no copy of it reaches the DLQ now.

    A confirmed copy is described by its own headers (the reason as the DLQ holds it, so the
    fingerprint is the one a pass over the queue computes). A copy the broker did not confirm
    is dead-lettered by the broker itself, with the original's headers, where it can take
    them; otherwise (or when no copy was made at all: a fault while settling) the message goes
    back to its queue and dies later.
    """
    if copied:
        headers = copy_headers if copy_headers is not None else h.carry(delivery.headers)
        failure = _as_stated(headers, dead.failure)
    elif copy_headers is not None and h.broker_can_dead_letter(delivery.headers):
        headers, failure = h.carry(delivery.headers), dead.failure
    else:
        return None
    key = headers.get(h.ORIGINAL_KEY)
    internal_id = ctx.internal_id or h.text(delivery.message_id or "", 256) or None
    return Death(
        failure=failure,
        body=delivery.body[:max_body],
        body_bytes=len(delivery.body),
        headers=headers,
        tenant_id=ctx.tenant_id,
        internal_id=internal_id,
        type=ctx.type,
        phone_number_id=ctx.phone_number_id,
        routing_key=key if isinstance(key, str) else delivery.routing_key,
        claimed=ctx.claimed is not None,
    )


def _as_stated(headers: Mapping[str, Any], failure: Failure) -> Failure:
    """The reason as the copy's ``x-error-*`` headers state it (bounded as they are)."""
    category = headers.get(h.ERROR_CATEGORY)
    code = headers.get(h.ERROR_CODE)
    message = headers.get(h.ERROR_MESSAGE)
    subcode = headers.get(h.ERROR_SUBCODE)
    return Failure(
        category if isinstance(category, str) else str(failure.category),
        code if isinstance(code, str) else str(failure.code),
        message if isinstance(message, str) else failure.message,
        subcode if isinstance(subcode, int) and not isinstance(subcode, bool) else None,
    )
