"""Status webhooks as Meta words them: the status objects, the body, the signature.

Pure functions, no I/O: ``webhooks.WebhookSender`` decides when each status goes out and
calls these to say it. Shapes follow ``WebhookPayload`` / ``StatusMessageValue`` /
``Statuses`` in Meta's OpenAPI description (``../shared/meta``), plus what Meta sends beyond
it: ``biz_opaque_callback_data`` echoed from the request, and ``pricing.type`` under
per-message pricing (PMP).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from wa_consumer.sandbox import meta
from wa_consumer.sandbox.config import TenantConfig, WebhookFailure

ERROR_CODES_URL = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
_DAY = 86_400
# Words in a template's name that say its pricing category, checked in this order.
_NAME_HINTS = (
    ("marketing", ("promo", "offer", "sale", "discount", "marketing", "newsletter", "campaign")),
    ("authentication", ("otp", "verif", "auth", "login", "passcode", "2fa")),
)


class Message(NamedTuple):
    """What every status of one accepted message repeats."""

    wamid: str
    phone_number_id: str
    waba_id: str
    recipient: str
    category: str
    biz_opaque_callback_data: str | None
    accepted_at: float  # unix seconds


def waba_id(tenant: TenantConfig) -> str:
    """The tenant's WABA id: configured, or derived from its id (stable across runs)."""
    if tenant.waba_id is not None:
        return tenant.waba_id
    digest = hashlib.sha256(tenant.id.encode()).digest()
    return str(100_000_000_000_000 + int.from_bytes(digest[:8]) % 900_000_000_000_000)


def display_number(phone_number_id: str) -> str:
    """A display number for a phone number id (the sandbox's numbers have none of their own)."""
    return f"1555{phone_number_id[-7:]:0>7}"


def category_of(body: Mapping[str, Any], named: Mapping[str, str]) -> str:
    """The pricing category Meta would charge: a template's own, or ``service`` otherwise.

    Real categories are set when a template is approved; here ``named`` maps template names
    to one, and other names are guessed from their words (``utility`` when nothing fits).
    """
    if body.get("type") != "template":
        return "service"
    template = body.get("template")
    name = template.get("name") if isinstance(template, dict) else None
    if not isinstance(name, str):
        return "utility"
    if name in named:
        return named[name]
    lowered = name.lower()
    for category, hints in _NAME_HINTS:
        if any(hint in lowered for hint in hints):
            return category
    return "utility"


def failure_error(rule: WebhookFailure) -> dict[str, Any]:
    """The ``errors[]`` item of a ``failed`` status, in Meta's wording unless overridden."""
    known = meta.CATALOGUE.get(rule.code)
    title = rule.title or (known.title if known else "Unknown error")
    details = rule.details or (known.details if known else title)
    return {
        "code": rule.code,
        "title": title,
        "message": rule.message or title,
        "error_data": {"details": details},
        "href": ERROR_CODES_URL,
    }


def status_object(
    message: Message, status: str, at: float, error: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One ``statuses[]`` item; ``sent`` and ``delivered`` carry conversation and pricing."""
    item: dict[str, Any] = {
        "id": message.wamid,
        "status": status,
        "timestamp": str(int(at)),
        "recipient_id": message.recipient,
    }
    if status in ("sent", "delivered"):
        item["conversation"] = _conversation(message)
        billable = message.category != "service"
        item["pricing"] = {
            "billable": billable,
            "pricing_model": "PMP",
            "category": message.category,
            "type": "regular" if billable else "free_customer_service",
        }
    if status == "failed" and error is not None:
        item["errors"] = [error]
    if message.biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = message.biz_opaque_callback_data
    return item


def _conversation(message: Message) -> dict[str, Any]:
    # One conversation per number, recipient and category per 24 h window, without keeping
    # any state: the id is a hash of those, the window a calendar day.
    window = int(message.accepted_at) // _DAY
    key = f"{message.phone_number_id}:{message.recipient}:{message.category}:{window}"
    return {
        "id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "expiration_timestamp": str((window + 1) * _DAY),
        "origin": {"type": message.category},
    }


def webhook_body(items: Iterable[tuple[Message, dict[str, Any]]]) -> bytes:
    """The POST body: statuses grouped by WABA (``entry``) and phone number (``changes``)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for message, status in items:
        numbers = grouped.setdefault(message.waba_id, {})
        numbers.setdefault(message.phone_number_id, []).append(status)
    entries = [
        {
            "id": waba,
            "changes": [
                {
                    "value": {
                        "messaging_product": "whatsapp",
                        "metadata": {
                            "display_phone_number": display_number(number),
                            "phone_number_id": number,
                        },
                        "statuses": statuses,
                    },
                    "field": "messages",
                }
                for number, statuses in numbers.items()
            ],
        }
        for waba, numbers in grouped.items()
    ]
    return orjson.dumps({"object": "whatsapp_business_account", "entry": entries})


def sign(body: bytes, secret: bytes) -> str:
    """``X-Hub-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    # Kept here rather than imported from wa_consumer.webhooks: the sandbox plays Meta and
    # must not share the receiver's code, or a bug in one would hide in the other.
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
