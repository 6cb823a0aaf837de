"""What one webhook body from Meta holds: statuses of our sends, and customers' messages.

``read`` takes the raw body (as Meta signed it) and returns a ``Webhook``. Meta's shape is
``entry[].changes[].value`` with ``statuses[]`` and/or ``messages[]``. Every value taken from
it is bounded here, where it enters: a status the ledger could not store is skipped and
counted, never a failed batch for the others. A body that is no webhook at all raises
``UnreadableWebhook``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ..categories import Category
from ..classify import BY_CODE

__all__ = ["Inbound", "StatusUpdate", "UnreadableWebhook", "Webhook", "merge", "read"]

#: The statuses of a message, in the order they happen; ``failed`` is final.
ORDER: Final = ("accepted", "sent", "delivered", "read", "failed")
_RANK: Final = {name: rank for rank, name in enumerate(ORDER)}
_MAX_ID: Final = 256
_MAX_TEXT: Final = 1024
_MAX_CALLBACK: Final = 512
# Meta's timestamps are unix seconds; anything outside these years is no real time.
_EARLIEST: Final = datetime(2009, 1, 1, tzinfo=UTC).timestamp()
_LATEST: Final = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
_NUMBER_ID: Final = re.compile(r"[0-9]{1,32}")


class UnreadableWebhook(ValueError):
    """The body is not a webhook (not JSON, not an object, no ``entry`` list)."""


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One entry of ``statuses[]``, or several of one wamid merged (``merge``)."""

    wamid: str
    status: str  # sent | delivered | read | failed (the furthest, after a merge)
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    recipient: str | None = None
    phone_number_id: str | None = None
    callback: str | None = None
    error_code: str | None = None
    error_category: str | None = None
    error_title: str | None = None
    error_message: str | None = None
    billable: bool | None = None
    pricing_category: str | None = None
    pricing_model: str | None = None
    conversation_id: str | None = None
    conversation_origin: str | None = None
    conversation_expires_at: datetime | None = None

    def row(self) -> tuple[Any, ...]:
        """The values in the order ``ledger.statuses`` reads them."""
        return (
            self.wamid, self.status, self.sent_at, self.delivered_at, self.read_at,
            self.failed_at, self.recipient, self.phone_number_id, self.callback,
            self.error_code, self.error_category, self.error_title, self.error_message,
            self.billable, self.pricing_category, self.pricing_model, self.conversation_id,
            self.conversation_origin, self.conversation_expires_at,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Inbound:
    """One ``value`` holding customers' messages, forwarded as it came."""

    phone_number_id: str
    body: bytes
    count: int
    waba_id: str | None = None
    first_id: str | None = None
    """The first message's id: the forwarded copy's ``message_id``, so repeats can be told."""


@dataclass(slots=True)
class Webhook:
    statuses: list[StatusUpdate] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)
    skipped: int = 0
    """Statuses that could not be read (no wamid, an unknown status, no time)."""
    ignored: int = 0
    """Values with neither statuses nor messages (another webhook field)."""


def read(body: bytes) -> Webhook:
    """Every status and every batch of customers' messages in one webhook body."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UnreadableWebhook(f"not JSON: {exc}"[:300]) from None
    if not isinstance(document, dict) or not isinstance(document.get("entry"), list):
        raise UnreadableWebhook("not a webhook: expected an object with an 'entry' list")
    found = Webhook()
    for entry in document["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        waba_id = _text(entry.get("id"), 64) if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                _read_value(value, waba_id, found)
    return found


def _read_value(value: dict[str, Any], waba_id: str | None, found: Webhook) -> None:
    metadata = value.get("metadata")
    number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
    number = number if isinstance(number, str) and _NUMBER_ID.fullmatch(number) else None
    statuses = value.get("statuses")
    for item in statuses if isinstance(statuses, list) else ():
        update = _status(item, number)
        if update is None:
            found.skipped += 1
        else:
            found.statuses.append(update)
    messages = value.get("messages")
    if isinstance(messages, list) and messages:
        first = messages[0].get("id") if isinstance(messages[0], dict) else None
        found.inbound.append(
            Inbound(number or "unknown", orjson.dumps(value), len(messages), waba_id,
                    _text(first, _MAX_ID))
        )  # fmt: skip
    elif not isinstance(statuses, list) or not statuses:
        found.ignored += 1


def _status(item: object, number: str | None) -> StatusUpdate | None:
    if not isinstance(item, dict):
        return None
    wamid = _text(item.get("id"), _MAX_ID)
    status = item.get("status")
    at = _time(item.get("timestamp"))
    if wamid is None or status not in _RANK or status == "accepted" or at is None:
        return None
    error: dict[str, Any] = {}
    if status == "failed":
        error = _error(item.get("errors"))
    pricing = _object(item.get("pricing"))
    conversation = _object(item.get("conversation"))
    origin = _object(conversation.get("origin"))
    billable = pricing.get("billable")
    times: dict[str, Any] = {f"{status}_at": at}
    return StatusUpdate(
        wamid=wamid,
        status=status,
        **times,
        recipient=_text(item.get("recipient_id"), 64),
        phone_number_id=number,
        callback=_text(item.get("biz_opaque_callback_data"), _MAX_CALLBACK),
        **error,
        billable=billable if isinstance(billable, bool) else None,
        pricing_category=_text(pricing.get("category"), 64),
        pricing_model=_text(pricing.get("pricing_model"), 64),
        conversation_id=_text(conversation.get("id"), _MAX_ID),
        conversation_origin=_text(origin.get("type"), 64),
        conversation_expires_at=_time(conversation.get("expiration_timestamp")),
    )


def _error(errors: object) -> dict[str, Any]:
    """The first of ``errors[]``, classified by the same table as a send's error."""
    first = errors[0] if isinstance(errors, list) and errors else None
    if not isinstance(first, dict):
        return {"error_category": Category.PERMANENT.value, "error_code": "unknown"}
    code = first.get("code")
    # A Meta code is a small whole number; anything else (a bool, 10**100) is no code: the
    # code becomes a metric label and a ledger value, so it is bounded here.
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < 10**9:
        code = None
    known = BY_CODE.get(code) if code is not None else None
    data = first.get("error_data")
    details = _text(data.get("details"), _MAX_TEXT) if isinstance(data, dict) else None
    message = _text(first.get("message"), _MAX_TEXT)
    # A failure after acceptance is never retried by Meta: an unknown code is permanent.
    return {
        "error_code": str(code) if code is not None else "unknown",
        "error_category": (known or Category.PERMANENT).value,
        "error_title": _text(first.get("title"), _MAX_TEXT),
        "error_message": details if details else message,
    }


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object, limit: int) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    value = value.replace("\x00", "")
    return value[:limit] if value else None


def _time(value: object) -> datetime | None:
    """Unix seconds, as Meta sends them (a string), or a number."""
    if isinstance(value, str):
        try:
            value = int(value) if value.isdigit() else float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not _EARLIEST <= value <= _LATEST:
        return None
    return datetime.fromtimestamp(value, UTC)


def merge(updates: list[StatusUpdate]) -> list[StatusUpdate]:
    """One update per wamid, sorted by wamid (the order rows are locked in: no deadlocks)."""
    by_wamid: dict[str, StatusUpdate] = {}
    for update in updates:
        known = by_wamid.get(update.wamid)
        by_wamid[update.wamid] = update if known is None else _merged(known, update)
    return [by_wamid[w] for w in sorted(by_wamid)]


def _merged(a: StatusUpdate, b: StatusUpdate) -> StatusUpdate:
    """Never backwards, ``failed`` final, each time the first seen; the ledger's rule too."""
    status = furthest(a.status, b.status)
    failure = a if a.status == "failed" else b
    values: dict[str, Any] = {}
    for name in StatusUpdate.__slots__:
        first, second = getattr(a, name), getattr(b, name)
        if name.endswith("_at") and name != "conversation_expires_at":
            values[name] = (
                min(x for x in (first, second) if x is not None) if (first or second) else None
            )
        elif name.startswith("error_"):
            values[name] = getattr(failure, name)
        elif name.startswith(("pricing_", "conversation_")) or name == "billable":
            values[name] = second if second is not None else first
        else:
            values[name] = first if first is not None else second
    values["status"] = status
    return StatusUpdate(**values)


def furthest(a: str, b: str) -> str:
    if a == "failed" or b == "failed":
        return "failed"
    return a if _RANK[a] >= _RANK[b] else b
