"""What an operator needs to know about one dead message, read from its headers and body.

The daemon's own headers (``x-error-*``, ``x-tenant-id``, ...) come first; a message the
broker dead-lettered by itself (its TTL ran out, or the daemon's DLQ publish failed and it
was rejected) has only the broker's ``x-death`` bookkeeping, and is described from that.

The fingerprint groups one failure cause however many tenants and recipients it hit: the
category, the code and the error text with everything message-specific (quoted values,
wamids, timestamps, ids, numbers) replaced by placeholders, hashed to a short id.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from .. import headers as h
from ..headers import ERROR_CATEGORY as H_CATEGORY
from ..headers import ERROR_CODE as H_CODE
from ..headers import ERROR_MESSAGE as H_MESSAGE
from ..headers import ERROR_SUBCODE as H_SUBCODE
from ..headers import FAILED_AT as H_FAILED
from ..headers import FIRST_FAILED as H_FIRST_FAILED
from ..headers import ORIGINAL_KEY as H_ORIGINAL_KEY
from ..headers import REPLAY_COUNT as H_REPLAY_COUNT
from ..headers import RETRY_COUNT as H_RETRY_COUNT
from ..headers import TENANT as H_TENANT

UNREADABLE = "(unreadable)"

# Order matters: quoted values and wamids before the digits inside them.
_NORMALISE = (
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<q>"),
    (re.compile(r"wamid\.[A-Za-z0-9_=+/-]+"), "<wamid>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ][0-9:.]+(?:Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"\+?\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalise(text: str) -> str:
    """The error text with its message-specific parts replaced by placeholders."""
    for pattern, placeholder in _NORMALISE:
        text = pattern.sub(placeholder, text)
    return text.strip()


def fingerprint(category: str, code: str, message: str) -> str:
    """A short, stable id of one failure cause."""
    key = f"{category}\x00{code}\x00{normalise(message)}".encode()
    return hashlib.sha1(key, usedforsecurity=False).hexdigest()[:10]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int:
    try:
        return max(0, int(_text(value) or 0))
    except ValueError:
        return 0


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[-1], dict):
        return deaths[-1]  # the list is newest first: the last entry is the first death
    return {}


def _broker_reason(headers: dict[str, Any]) -> tuple[str, str, str]:
    """Category, code and text of a message the broker dead-lettered by itself."""
    death = _first_death(headers)
    reason = _text(headers.get("x-first-death-reason") or death.get("reason")) or "unknown"
    queue = _text(headers.get("x-first-death-queue") or death.get("queue")) or "?"
    text = f"dead-lettered by the broker ({reason}) from queue {queue}"
    if reason == "expired":
        return "expired", "queue_ttl", text
    return "unknown", f"broker_{reason}", text


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """One dead message as the DLQ commands show, filter and group it."""

    position: int  # 1-based place in the queue when the pass began
    internal_id: str | None
    message_id: str | None
    tenant: str | None
    type: str
    recipient: str | None
    category: str
    code: str
    subcode: int | None
    message: str
    failed_at: datetime | None
    first_failed_at: datetime | None
    retry_count: int
    replay_count: int
    routing_key: str | None
    fingerprint: str = field(default="")
    # The tenant the daemon keyed its ledger record by: the body's metadata.tenantId, else
    # the x-tenant-id header; None when neither is readable (``tenant`` may then hold a guess
    # from the routing key, good enough to show and filter, not to pick a ledger record).
    ledger_tenant: str | None = None

    def ids(self) -> set[str]:
        return {i for i in (self.internal_id, self.message_id) if i}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            if name == "ledger_tenant":
                continue  # ``tenant`` is the one people read
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def read_body(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def describe(delivery: AbstractIncomingMessage, position: int) -> DeadRecord:
    """Read one delivery of the DLQ (never raises on a strange message)."""
    headers = dict(delivery.headers or {})
    body = read_body(delivery.body) or {}
    metadata = _table(body.get("metadata"))
    payload = _table(body.get("wabaPayload"))

    if H_CATEGORY in headers:
        category = _text(headers[H_CATEGORY]) or "unknown"
        code = _text(headers.get(H_CODE)) or "-"
        text = _text(headers.get(H_MESSAGE)) or ""
    else:
        category, code, text = _broker_reason(headers)
    death = _first_death(headers)
    keys = death.get("routing-keys")
    original_key = _text(headers.get(H_ORIGINAL_KEY)) or (
        _text(keys[0]) if isinstance(keys, list) and keys else None
    )
    header_tenant = _text(headers.get(H_TENANT)) or None
    body_tenant = metadata.get("tenantId")
    # The daemon keys its ledger by the body's tenant; the header is the daemon's copy of it.
    ledger_tenant = body_tenant if isinstance(body_tenant, str) and body_tenant else header_tenant
    tenant = header_tenant or _text(body_tenant)
    if tenant is None and original_key and "." in original_key:
        tenant = original_key.rsplit(".", 1)[-1]
    subcode = headers.get(H_SUBCODE)
    failed_at = h.moment(headers.get(H_FAILED)) or h.moment(death.get("time"))
    return DeadRecord(
        position=position,
        internal_id=_text(metadata.get("internalId")) or delivery.message_id,
        message_id=delivery.message_id,
        tenant=tenant,
        type=_text(payload.get("type")) or UNREADABLE,
        recipient=_text(payload.get("to")),
        category=category,
        code=code,
        subcode=_int(subcode) if subcode is not None else None,
        message=text,
        failed_at=failed_at or h.moment(delivery.timestamp),
        first_failed_at=h.moment(headers.get(H_FIRST_FAILED)) or failed_at,
        retry_count=h.count_or_zero(headers, H_RETRY_COUNT),
        replay_count=h.count_or_zero(headers, H_REPLAY_COUNT),
        routing_key=original_key,
        fingerprint=fingerprint(category, code, text),
        ledger_tenant=ledger_tenant,
    )


def json_safe(value: Any) -> Any:
    """Header values (tables, bytes, timestamps) as JSON can hold them."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        return value.isoformat()
    return value
