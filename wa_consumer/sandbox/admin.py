"""Admin endpoints under ``/_sandbox/``: inspect traffic and change behaviour at run time.

Tokens are fake, so listing them here is fine; the endpoints exist for tests and demos and
answer plain JSON (``SandboxClient`` wraps them).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from wa_consumer.sandbox import meta
from wa_consumer.sandbox.state import SandboxState


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


class Admin:
    """Handlers of ``/_sandbox/*``."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state

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
        """Counts by outcome, status, code, number; credential fetches by tenant."""
        return _json(self._state.stats())

    async def tenants(self, request: web.Request) -> web.Response:
        """Every tenant with its current token, numbers and suspension."""
        return _json(
            [
                {
                    "id": t.id,
                    "accessToken": t.token,
                    "phoneNumberIds": list(t.phone_number_ids),
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
        return _json({"reset": True})
