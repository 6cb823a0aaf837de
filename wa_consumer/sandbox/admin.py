"""Admin endpoints under ``/_sandbox/``: inspect traffic and change behaviour at run time.

Tokens are fake, so listing them here is fine; the endpoints exist for tests and demos and
answer plain JSON (``SandboxClient`` wraps them).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wa_consumer.sandbox import meta
from wa_consumer.sandbox.config import WebhookFailure
from wa_consumer.sandbox.connections import CONNECTIONS_KEY
from wa_consumer.sandbox.state import SandboxState
from wa_consumer.sandbox.statuses import Message, category_of, failure_error, waba_id
from wa_consumer.sandbox.webhooks import Plan, Step, WebhookSender


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=meta.dumps(value), headers=meta.JSON_HEADERS)


async def _json_object(request: web.Request, *, required: bool) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and not required:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return value


class OneStatus(BaseModel):
    """``POST /_sandbox/webhooks/status``: one status for a wamid, sent now (a late failure).

    The number, recipient, callback data and category come from the request log when the
    wamid is in it; give them here otherwise (or to override). ``code`` and the texts
    make the error of a ``failed`` status (Meta's wording of the code by default).
    """

    model_config = ConfigDict(extra="forbid")

    wamid: str = Field(min_length=1)
    status: Literal["sent", "delivered", "read", "failed"]
    phone_number_id: str | None = None
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = None
    category: str | None = None
    timestamp: int | None = None
    code: int = 131026
    title: str | None = None
    message: str | None = None
    details: str | None = None


class Admin:
    """Handlers of ``/_sandbox/*``."""

    def __init__(self, state: SandboxState, webhooks: WebhookSender) -> None:
        self._state = state
        self._webhooks = webhooks

    def routes(self) -> list[web.RouteDef]:
        """Every admin route, to register before the catch-all ``/messages`` route."""
        return [
            web.get("/_sandbox/config", self.get_config),
            web.post("/_sandbox/config", self.set_config),
            web.get("/_sandbox/requests", self.requests),
            web.get("/_sandbox/stats", self.stats),
            web.get("/_sandbox/tenants", self.tenants),
            web.post("/_sandbox/tenants/{tenant_id}/rotate", self.rotate),
            web.post("/_sandbox/reset", self.reset),
            web.post("/_sandbox/webhooks/status", self.webhook_status),
        ]

    async def get_config(self, request: web.Request) -> web.Response:
        """The effective behaviour, default rules and tenants' tokens included."""
        return _json(self._state.config.model_dump(mode="json"))

    async def set_config(self, request: web.Request) -> web.Response:
        """Replace the top-level settings given in the body; answers the new config."""
        changes = await _json_object(request, required=True)
        try:
            config = self._state.configure(**changes)
        except (ValidationError, ValueError) as exc:
            return _json({"error": str(exc)}, status=400)
        return _json(config.model_dump(mode="json"))

    async def requests(self, request: web.Request) -> web.Response:
        """The logged ``/messages`` requests after ``?since=N``; ``last`` pages on."""
        try:
            since = int(request.query.get("since", "0"))
        except ValueError as exc:
            raise web.HTTPBadRequest(text="since must be an integer") from exc
        found = self._state.requests(since)
        last = found[-1]["seq"] if found else max(since, 0)
        return _json({"requests": found, "last": last})

    async def stats(self, request: web.Request) -> web.Response:
        """Counts by outcome, status, code, number; credential fetches; ``webhooks``;
        ``connections`` opened since start and open now."""
        connections = request.app.get(CONNECTIONS_KEY)
        return _json(
            {
                **self._state.stats(),
                "webhooks": self._webhooks.stats(),
                "connections": connections.stats() if connections is not None else None,
            }
        )

    async def tenants(self, request: web.Request) -> web.Response:
        """Every tenant with its current token, numbers and suspension."""
        return _json(
            [
                {
                    "id": t.id,
                    "accessToken": t.token,
                    "phoneNumberIds": list(t.phone_number_ids),
                    "wabaId": waba_id(t),
                    "suspended": t.suspended,
                }
                for t in self._state.config.tenants
            ]
        )

    async def rotate(self, request: web.Request) -> web.Response:
        """New token for the tenant (optional ``{"token": ...}``); the old one now gets 190."""
        body = await _json_object(request, required=False)
        token = body.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise web.HTTPBadRequest(text="token must be a non-empty string")
        try:
            tenant = self._state.rotate(request.match_info["tenant_id"], token)
        except KeyError:
            return _json({"error": "tenant not found"}, status=404)
        return _json(self._state.credentials(tenant))

    async def reset(self, request: web.Request) -> web.Response:
        """Forget requests, stats, ``times`` counters and throughput buckets."""
        self._state.reset()
        self._webhooks.reset()
        return _json({"reset": True})

    async def webhook_status(self, request: web.Request) -> web.Response:
        """Send one status now; 404 for a wamid unknown and unexplained, 409 when off."""
        try:
            ask = OneStatus.model_validate(await _json_object(request, required=True))
        except ValidationError as exc:
            return _json({"error": str(exc)}, status=400)
        if self._state.config.webhooks.url is None:
            return _json({"error": "webhooks are off: set webhooks.url"}, status=409)
        logged = next((r for r in reversed(self._state.log) if r["wamid"] == ask.wamid), None)
        body = logged["body"] if logged is not None and isinstance(logged["body"], dict) else {}
        number = ask.phone_number_id or (logged["phone_number_id"] if logged else None)
        recipient = ask.recipient_id or body.get("to")
        tenant = next((t for t in self._state.config.tenants if number in t.phone_number_ids), None)
        if tenant is None or number is None or not isinstance(recipient, str):
            return _json(
                {"error": "wamid not logged: give phone_number_id (a tenant's) and recipient_id"},
                status=404,
            )
        biz = ask.biz_opaque_callback_data or body.get("biz_opaque_callback_data")
        at = time.time() if ask.timestamp is None else float(ask.timestamp)
        message = Message(
            wamid=ask.wamid,
            phone_number_id=number,
            waba_id=waba_id(tenant),
            recipient="".join(c for c in recipient if c.isdigit()),
            category=ask.category
            or category_of(body, self._state.config.webhooks.template_categories),
            biz_opaque_callback_data=biz if isinstance(biz, str) else None,
            accepted_at=at,
        )
        rule = WebhookFailure(
            match=".", code=ask.code, title=ask.title, message=ask.message, details=ask.details
        )
        error = failure_error(rule) if ask.status == "failed" else None
        plan = Plan(message, [Step(0.0, ask.status, at)], error)
        queued = plan.status()
        if not self._webhooks.add(plan):
            return _json({"error": "too many statuses pending"}, status=503)
        return _json({"queued": queued})
