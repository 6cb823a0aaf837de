"""The Cloud API stand-in: ``POST /{version}/{phone_number_id}/messages``.

Checks run in Meta's order: the token, the number's ownership, the body, the number's
throughput, then the recipient rules and the random failure rate. The decision is made
synchronously and recorded at once, so the request log is in arrival order whatever the
latency; only the wait (latency, hang) is asynchronous. This is the hot path: no logging,
no per-request objects beyond the answer itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from wa_consumer.sandbox import meta
from wa_consumer.sandbox.config import FailureRule, TenantConfig
from wa_consumer.sandbox.state import SandboxState
from wa_consumer.sandbox.webhooks import WebhookSender

_NON_DIGITS = re.compile(r"\D")
_HTML_HEADERS = {"Content-Type": "text/html"}
_EMPTY_HEADERS: dict[str, str] = {}


class Answer(NamedTuple):
    """What to send back, and what to record about it."""

    status: int
    body: bytes
    code: int | None = None
    wamid: str | None = None
    headers: dict[str, str] = meta.JSON_HEADERS
    hang: bool = False
    # Of an accepted message, for its status webhooks.
    tenant: TenantConfig | None = None
    recipient: str = ""

    @property
    def outcome(self) -> str:
        if self.hang:
            return "hang"
        return "sent" if self.wamid is not None else "failed"


def _error(status: int, payload: dict[str, Any]) -> Answer:
    return Answer(status, orjson.dumps(payload), payload["error"]["code"])


def _rule_answer(rule: FailureRule) -> Answer:
    if rule.hang:
        return Answer(0, b"", rule.code, hang=True)
    if rule.body == "html":
        return Answer(rule.status or 502, meta.HTML_502, rule.code, headers=_HTML_HEADERS)
    if rule.body == "empty":
        status = rule.status or (meta.status_of(rule.code) if rule.code else 503)
        return Answer(status, b"", rule.code, headers=_EMPTY_HEADERS)
    assert rule.code is not None  # FailureRule validates: a JSON rule has a code
    payload = meta.error_for(rule.code, details=rule.details, subcode=rule.subcode)
    return Answer(rule.status or meta.status_of(rule.code), orjson.dumps(payload), rule.code)


class CloudApi:
    """Handler of ``/messages``; ``wake`` ends every hanging request (set on shutdown)."""

    def __init__(self, state: SandboxState, webhooks: WebhookSender) -> None:
        self._state = state
        self._webhooks = webhooks
        self.wake = asyncio.Event()

    def decide(self, number: str, token: str, body: Any) -> Answer:
        """The answer Meta would give, from the current behaviour settings."""
        state = self._state
        tenant = state.by_token(token)
        if tenant is None:
            return _error(401, meta.invalid_token(expired=state.is_expired(token)))
        if not state.owns(tenant, number):
            return _error(400, meta.unknown_object(number))
        if not isinstance(body, dict):
            return _error(400, meta.invalid_parameter("Invalid parameter"))
        if body.get("messaging_product") != "whatsapp":
            return _error(
                400, meta.invalid_parameter("The parameter messaging_product is required.")
            )
        if not state.take(number, time.monotonic()):
            return _error(400, meta.cloud_error(130429))
        if "status" in body and "to" not in body:  # read receipt / typing indicator
            return Answer(200, b'{"success":true}', wamid="")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            return _error(400, meta.invalid_parameter("The parameter to is required."))
        digits = to if to.isdigit() else _NON_DIGITS.sub("", to)
        matched, rule = state.rule_for(digits)
        if rule is not None:
            return _rule_answer(rule)
        if not matched and state.random_failure():
            code = state.config.failure_code
            return _error(meta.status_of(code), meta.error_for(code))
        wamid = state.next_wamid()
        message: dict[str, str] = {"id": wamid}
        if body.get("type") == "template":
            message["message_status"] = "accepted"
        payload = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": digits}],
            "messages": [message],
        }
        return Answer(200, orjson.dumps(payload), wamid=wamid, tenant=tenant, recipient=digits)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """Decide, record, wait (latency or hang), answer."""
        state = self._state
        number = request.match_info["phone_number_id"]
        auth = request.headers.get("Authorization")
        if auth is not None and auth.startswith("Bearer "):
            token = auth[7:]
        else:
            token = request.query.get("access_token", "")
        raw = await request.read()
        body: Any
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
            answer = self.decide(number, token, None)
        else:
            answer = self.decide(number, token, body)
        state.record(
            path=request.path,
            number=number,
            token=token,
            body=body,
            status=answer.status or None,
            code=answer.code,
            wamid=answer.wamid or None,
            outcome=answer.outcome,
        )
        if answer.tenant is not None and answer.wamid:
            # Planned at acceptance, not after the answer: a client that times out waiting
            # still gets the statuses, as from Meta (how an ambiguous send is reconciled).
            self._webhooks.accepted(
                wamid=answer.wamid,
                number=number,
                tenant=answer.tenant,
                recipient=answer.recipient,
                body=body,
            )
        delay = state.delay()
        if delay:
            await asyncio.sleep(delay)
        if answer.hang:
            await self._hang(request)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def _hang(self, request: web.Request) -> None:
        """Never answer: wait for shutdown (or ``hang_seconds``), then drop the connection."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), self._state.config.hang_seconds)
        if request.transport is not None:
            request.transport.close()
        # aiohttp's own path for a client that went away: no answer, no error logged.
        raise asyncio.CancelledError
