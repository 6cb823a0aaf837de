"""A small typed client of the sandbox's admin endpoints, for tests and the demo.

It owns one aiohttp session (made on first use); use it as ``async with SandboxClient(url)``
or call ``close()``. Errors from the admin endpoints raise ``aiohttp.ClientResponseError``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypedDict, cast

import aiohttp


class RecordedRequest(TypedDict):
    """One ``/messages`` request as the sandbox saw and answered it."""

    seq: int
    at: float
    path: str
    phone_number_id: str
    token: str
    body: Any
    status: int | None
    code: int | None
    wamid: str | None
    outcome: str  # "sent", "failed" or "hang"


class Credentials(TypedDict):
    """What the tenant service answers (and what a rotation returns)."""

    accessToken: str
    phoneNumberId: str
    phoneNumberIds: list[str]


class TenantInfo(TypedDict):
    """A tenant as ``GET /_sandbox/tenants`` lists it."""

    id: str
    accessToken: str
    phoneNumberIds: list[str]
    wabaId: str
    suspended: bool


class SandboxClient:
    """Inspect and steer a running sandbox at ``url``."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.request(
            method, f"{self.url}{path}", json=body, raise_for_status=True
        ) as response:
            return await response.json()

    async def requests(self, since: int = 0) -> list[RecordedRequest]:
        """The ``/messages`` requests after sequence number ``since``, oldest first."""
        answer = await self._call("GET", f"/_sandbox/requests?since={since}")
        return cast(list[RecordedRequest], answer["requests"])

    async def stats(self) -> dict[str, Any]:
        """Counts by outcome, HTTP status, Meta code and number; credential fetches."""
        return cast(dict[str, Any], await self._call("GET", "/_sandbox/stats"))

    async def config(self) -> dict[str, Any]:
        """The effective behaviour settings."""
        return cast(dict[str, Any], await self._call("GET", "/_sandbox/config"))

    async def configure(self, **changes: Any) -> dict[str, Any]:
        """Replace the given top-level settings; answers the new config."""
        return cast(dict[str, Any], await self._call("POST", "/_sandbox/config", changes))

    async def rotate(self, tenant: str, token: str | None = None) -> Credentials:
        """Rotate the tenant's token; answers its new credentials."""
        body = {"token": token} if token is not None else None
        answer = await self._call("POST", f"/_sandbox/tenants/{tenant}/rotate", body)
        return cast(Credentials, answer)

    async def reset(self) -> None:
        """Forget requests, stats and counters."""
        await self._call("POST", "/_sandbox/reset")

    async def webhook_status(self, wamid: str, status: str, **fields: Any) -> dict[str, Any]:
        """Send one status webhook for ``wamid`` now (e.g. ``failed`` with ``code``)."""
        body = {"wamid": wamid, "status": status, **fields}
        answer = await self._call("POST", "/_sandbox/webhooks/status", body)
        return cast(dict[str, Any], answer["queued"])

    async def tenants(self) -> list[TenantInfo]:
        """Every tenant with its current token."""
        return cast(list[TenantInfo], await self._call("GET", "/_sandbox/tenants"))

    async def close(self) -> None:
        """Close the session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> SandboxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
