"""The tenant service stand-in: ``GET /tenants/{tenant_id}/whatsapp-credentials``.

Answers as SPEC §6 describes the real one: 200 with the credentials, 404 for an unknown
tenant, 403 for a suspended one, and 401 without the service token when one is configured.
Every call is counted per tenant (``credential_fetches`` in the stats), so tests can see
whether a client caches and shares fetches.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from wa_consumer.sandbox import meta
from wa_consumer.sandbox.state import SandboxState


def _json(status: int, value: object) -> web.Response:
    return web.Response(status=status, body=meta.dumps(value), headers=meta.JSON_HEADERS)


class TenantService:
    """Handler of the credentials endpoint."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state

    async def credentials(self, request: web.Request) -> web.Response:
        """The tenant's current token and numbers, or why not."""
        state = self._state
        expected = state.config.service_token
        if expected is not None:
            given = request.headers.get("Authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {expected}".encode()):
                return _json(401, {"error": "unauthorized"})
        tenant_id = request.match_info["tenant_id"]
        state.credential_fetches[tenant_id] = state.credential_fetches.get(tenant_id, 0) + 1
        tenant = state.tenant(tenant_id)
        if tenant is None:
            return _json(404, {"error": "tenant not found", "tenantId": tenant_id})
        if tenant.service_error is not None:
            return _json(tenant.service_error, {"error": "tenant service error"})
        if tenant.suspended:
            return _json(403, {"error": "tenant suspended", "tenantId": tenant_id})
        return _json(200, state.credentials(tenant))
