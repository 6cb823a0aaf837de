"""Meta's status webhooks for the delivery-status scenarios, and the sends they refer to.

A measurement has messages of its own, already sent (a ``wa_messages`` row with its wamid, a
``wa_deliveries`` row ``accepted``, as the daemon leaves them), under a tenant of its own, and
N webhook bodies with their statuses in the order Meta sends them after a campaign: every
message ``sent``, then every one ``delivered``, then every other one ``read``; each body holds
1, 2 or 3 statuses (in turn) of different messages, ``sent`` and ``delivered`` with pricing
and conversation as the sandbox sends them. Each status moves its row one step on
(accepted -> sent -> delivered -> read), so the sum of the rows' steps is the number of
statuses applied, read from outside the daemon.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from wa_consumer.webhooks.payload import read

STEPS = ("accepted", "sent", "delivered", "read")
PER_BODY = (1, 2, 3)  # statuses per body, in turn
READ_EVERY = 2  # one message in this many is read
PHONE_NUMBER_ID = "106540352242922"
CAMPAIGN_AT = 1_765_000_000  # unix seconds of the sends; statuses follow within minutes
_DAY = 86_400


@dataclass(frozen=True)
class Traffic:
    """The statuses of one measurement: its sends, the bodies, what the rows must end as."""

    tenant: str
    sends: list[tuple[str, str, str]]  # (internal id, wamid, recipient), one per message
    bodies: list[bytes]
    statuses: int  # in all the bodies
    final: dict[str, int]  # rows by the status they must end in

    @property
    def steps(self) -> int:
        """The sum of the rows' steps once every status is applied (= ``statuses``)."""
        return sum(STEPS.index(status) * count for status, count in self.final.items())


def _status(wamid: str, recipient: str, status: str, at: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(at),
        "recipient_id": recipient,
    }
    if status in ("sent", "delivered"):
        item["conversation"] = {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, recipient).hex,
            "expiration_timestamp": str(CAMPAIGN_AT + _DAY),
            "origin": {"type": "marketing"},
        }
        item["pricing"] = {
            "billable": True,
            "pricing_model": "PMP",
            "category": "marketing",
            "type": "regular",
        }
    return item


def body(statuses: list[dict[str, Any]]) -> bytes:
    """One POST body as Meta sends it: one WABA, one number, these statuses."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_NUMBER_ID},
        "statuses": statuses,
    }
    entry = {"id": "102290129340398", "changes": [{"field": "messages", "value": value}]}
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [entry]})


def traffic(n: int) -> Traffic:
    """``n`` bodies, and as many messages as their statuses need, all new."""
    per_body = [PER_BODY[i % len(PER_BODY)] for i in range(n)]
    total = sum(per_body)
    # sent + delivered for each message, read for one in READ_EVERY: enough for ``total``.
    count = -(-total * READ_EVERY // (2 * READ_EVERY + 1))
    tag = secrets.token_hex(4)
    sends = [
        (str(uuid.uuid4()), f"wamid.bench{tag}{j:08d}", f"2783{j % 10_000_000:07d}")
        for j in range(count)
    ]
    stream = [(j, "sent", 1) for j in range(count)]
    stream += [(j, "delivered", 20) for j in range(count)]
    stream += [(j, "read", 300) for j in range(0, count, READ_EVERY)]
    stream = stream[:total]
    furthest = [0] * count
    items = []
    for j, status, after in stream:
        _, wamid, recipient = sends[j]
        items.append(_status(wamid, recipient, status, CAMPAIGN_AT + after))
        furthest[j] = STEPS.index(status)
    bodies, at = [], 0
    for size in per_body:
        bodies.append(body(items[at : at + size]))
        at += size
    final = Counter(STEPS[step] for step in furthest)
    made = Traffic(f"bench-{tag}", sends, bodies, total, dict(final))
    checked = read(bodies[-1])  # the daemon's own reading: the bench's bodies have not drifted
    if len(checked.statuses) != per_body[-1] or checked.skipped or made.steps != total:
        raise ValueError("bench webhook bodies do not read as the statuses they carry")
    return made


def ledger_rows(
    made: Traffic,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(``wa_messages`` rows, ``wa_deliveries`` rows) of the sends, as the daemon writes them."""
    now = dt.datetime.now(dt.UTC)
    messages = [
        (made.tenant, internal_id, PHONE_NUMBER_ID, recipient, "text", "sent", wamid, now, now)
        for internal_id, wamid, recipient in made.sends
    ]
    deliveries = [
        (wamid, made.tenant, internal_id, "accepted", now) for internal_id, wamid, _ in made.sends
    ]
    return messages, deliveries


MESSAGE_COLUMNS = (
    "tenant_id", "internal_id", "phone_number_id", "recipient", "type", "status", "wamid",
    "sent_at", "created_at",
)  # fmt: skip
DELIVERY_COLUMNS = ("wamid", "tenant_id", "internal_id", "status", "accepted_at")
