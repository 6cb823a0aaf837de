"""The demo's traffic: one sample per message type, then one per outcome the daemon can reach.

Outcomes are provoked through the sandbox's recipient rules (``1555 00D xxxx``, and
``1555 01D xxxx`` for failures after acceptance; see ``wa_consumer.sandbox``) and its default
tenants, so the demo needs no configuration of its own. Every sample gets a recipient of its
own: the sandbox counts ``times`` rules per recipient, and the demo finds a sample's requests
in the sandbox's log by their body.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

SENT = "sent"

ACME_SECOND_NUMBER = "106540352242923"
GLOBEX_NUMBER = "107650492331811"


@dataclass(frozen=True, slots=True)
class Sample:
    """One message the demo publishes, and where it should end."""

    label: str
    """What it demonstrates."""
    tenant: str
    type: str
    expect: str
    """``sent``, or the ``x-error-category`` it should die with."""
    internal_id: str
    body: bytes
    payload: dict[str, Any] | None
    """The ``wabaPayload`` the sandbox should receive (None: never sent)."""
    raw: bool = False
    """Published as bytes, without the publisher's validation (poison input)."""
    fails_after: str | None = None
    """Meta's code of the ``failed`` status webhook that follows its acceptance, if any."""


class _Recipients:
    """Fresh recipient numbers: plain ones (always sent) and ones a sandbox rule picks."""

    def __init__(self) -> None:
        self._plain = itertools.count(1)
        self._ruled = itertools.count(1)

    def plain(self) -> str:
        return f"27820{next(self._plain):06d}"

    def rule(self, digit: int) -> str:
        return f"155500{digit}{next(self._ruled):04d}"

    def late(self, digit: int) -> str:
        """Accepted, then ``failed`` in a status webhook (the sandbox's ``1555 01D`` rules)."""
        return f"155501{digit}{next(self._ruled):04d}"


def _envelope(tenant: str, waba: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    meta = {"tenantId": tenant, "internalId": f"demo-{uuid.uuid4()}", **metadata}
    return {"metadata": meta, "wabaPayload": waba}


def _waba(to: str, kind: str, content: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
    }


def _sample(
    label: str, tenant: str, shown_type: str, expect: str, waba: dict[str, Any], **metadata: Any
) -> Sample:
    message = _envelope(tenant, waba, **metadata)
    return Sample(
        label=label,
        tenant=tenant,
        type=shown_type,
        expect=expect,
        internal_id=message["metadata"]["internalId"],
        body=orjson.dumps(message),
        payload=waba,
    )


def _raw(label: str, shown_type: str, body: bytes | dict[str, Any]) -> Sample:
    """A message the publisher would refuse; published anyway, as a faulty producer would."""
    if isinstance(body, bytes):
        return Sample(
            label, "acme", shown_type, "invalid", f"demo-{uuid.uuid4()}", body, None, True
        )
    internal_id = body["metadata"]["internalId"]
    payload = body["wabaPayload"]
    return Sample(
        label, "acme", shown_type, "invalid", internal_id, orjson.dumps(body), payload, True
    )


def _every_type(to: _Recipients) -> Iterator[Sample]:
    """Each message type once, acme and globex taking turns."""
    wamid = "wamid.HBgLMTU1NTAwMDAwMDAVAgARGBI0QjM4RDc2QkEzNjFEOTUzMzAA"
    body = {"text": "Pick one"}
    contents: list[tuple[str, str, str, Any]] = [
        ("text", "text", "plain text", {"body": "Your order #1042 is ready", "preview_url": False}),
        (
            "template",
            "template",
            "approved template with a parameter",
            {
                "name": "order_ready",
                "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "#1042"}]}],
            },
        ),
        (
            "image",
            "image",
            "image by link, with caption",
            {"link": "https://example.com/a.jpg", "caption": "Your order"},
        ),
        ("video", "video", "video by media id", {"id": "1166846181421424", "caption": "Demo"}),
        (
            "audio",
            "audio",
            "voice note by link",
            {"link": "https://example.com/a.ogg", "voice": True},
        ),
        (
            "document",
            "document",
            "document by link",
            {"link": "https://example.com/invoice.pdf", "filename": "invoice.pdf"},
        ),
        ("sticker", "sticker", "sticker, from acme's 2nd number", {"id": "798882015472548"}),
        (
            "location",
            "location",
            "a pinned location",
            {"latitude": -33.9249, "longitude": 18.4241, "name": "Store", "address": "Cape Town"},
        ),
        (
            "contacts",
            "contacts",
            "a contact card",
            [{"name": {"formatted_name": "Ada Lovelace"}, "phones": [{"phone": "+27821234567"}]}],
        ),
        (
            "interactive",
            "interactive/button",
            "reply buttons",
            {
                "type": "button",
                "body": body,
                "action": {
                    "buttons": [
                        {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                        {"type": "reply", "reply": {"id": "no", "title": "No"}},
                    ]
                },
            },
        ),
        (
            "interactive",
            "interactive/list",
            "a list of options",
            {
                "type": "list",
                "body": body,
                "action": {
                    "button": "Options",
                    "sections": [{"rows": [{"id": "a", "title": "Pickup"}]}],
                },
            },
        ),
        (
            "interactive",
            "interactive/cta_url",
            "a call-to-action link",
            {
                "type": "cta_url",
                "body": {"text": "Track your parcel"},
                "action": {
                    "name": "cta_url",
                    "parameters": {"display_text": "Track", "url": "https://example.com/t"},
                },
            },
        ),
        ("reaction", "reaction", "a reaction to a message", {"message_id": wamid, "emoji": "👍"}),
    ]
    tenants = itertools.cycle(("acme", "globex"))
    for kind, shown, label, content in contents:
        tenant, extra = next(tenants), {}
        if kind == "sticker":  # only acme may send from acme's second number
            tenant, extra = "acme", {"phoneNumberId": ACME_SECOND_NUMBER}
        yield _sample(label, tenant, shown, SENT, _waba(to.plain(), kind, content), **extra)
    receipt = {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}
    yield _sample("read receipt (no recipient)", next(tenants), "status", SENT, receipt)


def _text(to: str) -> dict[str, Any]:
    return _waba(to, "text", {"body": "Hello from the demo"})


def _outcomes(to: _Recipients) -> Iterator[Sample]:
    """Failures on purpose: retried then sent, dead for each reason."""
    retried = [
        (1, "transient 131000 twice, then sent"),
        (3, "throughput limit 130429, then sent"),
        (4, "pair rate limit 131056, then sent"),
        (5, "proxy HTML 502 once, then sent"),
        (7, "no answer (timeout) once, then sent"),
        (8, "empty 503 once, then sent"),
    ]
    for digit, label in retried:
        yield _sample(label, "acme", "text", SENT, _text(to.rule(digit)))
    dead = [
        (9, "retries_exhausted", "service unavailable on every attempt"),
        (0, "permanent", "undeliverable 131026"),
        (6, "permanent", "24 h window closed 131047"),
        (2, "account", "business account locked 131031"),
    ]
    for digit, category, label in dead:
        yield _sample(label, "globex", "text", category, _text(to.rule(digit)))
    # Sent as far as the daemon can tell (a 200 and a wamid); Meta's status says otherwise.
    for digit, code in ((0, "131026"), (1, "131047")):
        label, recipient = f"accepted, then failed {code}", to.late(digit)
        sample = _sample(label, "acme", "text", SENT, _text(recipient))
        yield dataclasses.replace(sample, fails_after=code)
    yield _sample("suspended tenant", "initech", "text", "tenant_suspended", _text(to.plain()))
    yield _sample("unknown tenant", "umbrella", "text", "tenant_unknown", _text(to.plain()))
    yield _sample(
        "acme sending from globex's number",
        "acme",
        "text",
        "tenant_mismatch",
        _text(to.plain()),
        phoneNumberId=GLOBEX_NUMBER,
    )
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    yield _sample(
        "expiresAt an hour ago", "acme", "text", "expired", _text(to.plain()), expiresAt=an_hour_ago
    )


def _invalid(to: _Recipients) -> Iterator[Sample]:
    """What a faulty producer publishes; each dies as ``invalid`` without a call."""
    yield _raw("not JSON", "?", b"<order id=1042>ready</order>")
    yield _raw(
        "text over 4096 characters",
        "text",
        _envelope("acme", _text(to.plain()) | {"text": {"body": "x" * 5000}}),
    )
    yield _raw(
        "unknown type", "hologram", _envelope("acme", _waba(to.plain(), "hologram", {"id": "1"}))
    )
    image = {"id": "1166846181421424", "link": "https://example.com/a.jpg"}
    yield _raw(
        "image with both id and link", "image", _envelope("acme", _waba(to.plain(), "image", image))
    )


def build_samples() -> list[Sample]:
    """The demo's whole traffic, in publishing order."""
    to = _Recipients()
    return [*_every_type(to), *_outcomes(to), *_invalid(to)]
