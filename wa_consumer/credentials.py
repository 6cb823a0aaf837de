"""Tenant credentials: where they come from, how long they are kept, which numbers they allow.

A ``CredentialSource`` fetches one tenant's credentials: ``StaticSource`` from settings,
``TenantServiceSource`` over HTTP, ``FallbackSource`` the first then the second.
``CredentialCache`` keeps them for a TTL and makes concurrent misses of one tenant share one
fetch, so a burst of a cold tenant's messages costs the tenant service one call. Failures
are never cached: a tenant that was unknown a minute ago may exist now.

An access token appears in no repr, log line or error message of this module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import orjson
from cachetools import TTLCache
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential, wait_random
from yarl import URL

from .errors import (
    SettingsError,
    TenantMismatch,
    TenantServiceUnavailable,
    TenantSuspended,
    TenantUnknown,
)
from .settings import safe_url


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a tenant sends with: its token, its default number and every number it may use."""

    access_token: str = field(repr=False)
    phone_number_id: str
    phone_number_ids: frozenset[str]

    @classmethod
    def from_mapping(cls, data: object) -> Credentials:
        """From ``{accessToken, phoneNumberId, phoneNumberIds?}``; ValueError names what is wrong.

        The default number is always among the allowed ones, listed or not.
        """
        if not isinstance(data, Mapping):
            raise ValueError("expected a JSON object")
        token = data.get("accessToken")
        number = data.get("phoneNumberId")
        if not isinstance(token, str) or not token:
            raise ValueError("accessToken is missing or not a non-empty string")
        if not isinstance(number, str) or not number:
            raise ValueError("phoneNumberId is missing or not a non-empty string")
        numbers = data.get("phoneNumberIds")
        if numbers is None:
            numbers = []
        if not isinstance(numbers, list) or not all(isinstance(n, str) and n for n in numbers):
            raise ValueError("phoneNumberIds is not a list of non-empty strings")
        return cls(token, number, frozenset((number, *numbers)))


def resolve_number(creds: Credentials, tenant_id: str, requested: str | None) -> str:
    """The number to send from: the one asked for if the tenant may use it, else its default."""
    if not requested:
        return creds.phone_number_id
    if requested not in creds.phone_number_ids:
        raise TenantMismatch(tenant_id, f"phone number {requested} is not one of the tenant's")
    return requested


class CredentialSource(Protocol):
    """Where one tenant's credentials come from; raises a ``CredentialError`` subclass."""

    async def fetch(self, tenant_id: str) -> Credentials: ...


class StaticSource:
    """Credentials from ``WA_STATIC_CREDENTIALS``: ``{tenantId: {accessToken, phoneNumberId}}``."""

    def __init__(self, mapping: Mapping[str, Mapping[str, Any]]) -> None:
        self._creds: dict[str, Credentials] = {}
        for tenant_id, entry in mapping.items():
            try:
                self._creds[tenant_id] = Credentials.from_mapping(entry)
            except ValueError as exc:
                raise SettingsError(f"WA_STATIC_CREDENTIALS: tenant {tenant_id!r}: {exc}") from None

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._creds

    def __repr__(self) -> str:
        return f"StaticSource(tenants={sorted(self._creds)!r})"

    async def fetch(self, tenant_id: str) -> Credentials:
        try:
            return self._creds[tenant_id]
        except KeyError:
            raise TenantUnknown(tenant_id, "not in WA_STATIC_CREDENTIALS") from None


class FallbackSource:
    """The static mapping for the tenants it names, else the tenant service if there is one."""

    def __init__(self, static: StaticSource, service: CredentialSource | None) -> None:
        self.static = static
        self.service = service

    async def fetch(self, tenant_id: str) -> Credentials:
        if tenant_id in self.static or self.service is None:
            return await self.static.fetch(tenant_id)
        return await self.service.fetch(tenant_id)


class _Retryable(Exception):
    """An answer (or no answer) worth asking the tenant service again for."""


def default_wait() -> wait_base:
    """Exponential backoff with jitter from 0.1 s: three attempts cost well under a second."""
    return wait_exponential(multiplier=0.1, max=2.0) + wait_random(0, 0.1)


class TenantServiceSource:
    """``GET {base}/tenants/{tenantId}/whatsapp-credentials``, retried on what may pass.

    408, 429, 5xx, timeouts and connection errors are tried ``attempts`` times in all, then
    raise ``TenantServiceUnavailable`` (the message then retries through the wait queues).
    ``wait`` and ``sleep`` are tenacity's, injectable so tests need not wait.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        service_token: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        *,
        wait: wait_base | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Accept": "application/json"}
        if service_token:
            self._headers["Authorization"] = f"Bearer {service_token}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._attempts = attempts
        self._wait = wait if wait is not None else default_wait()
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"TenantServiceSource({safe_url(self._base)!r})"

    def url_for(self, tenant_id: str) -> URL:
        """The tenant's credentials URL, the id quoted so it stays one path segment."""
        segment = quote(tenant_id, safe="")
        return URL(f"{self._base}/tenants/{segment}/whatsapp-credentials", encoded=True)

    async def fetch(self, tenant_id: str) -> Credentials:
        if tenant_id in ("", ".", ".."):
            raise TenantUnknown(tenant_id, "not a tenant id")
        url = self.url_for(tenant_id)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return await retrying(self._fetch_once, tenant_id, url)
        except _Retryable as exc:
            raise TenantServiceUnavailable(
                tenant_id, f"tenant service unavailable after {self._attempts} attempts: {exc}"
            ) from exc

    async def _fetch_once(self, tenant_id: str, url: URL) -> Credentials:
        try:
            async with self._session.get(url, headers=self._headers, timeout=self._timeout) as r:
                status = r.status
                body = await r.read()
        except aiohttp.ClientResponseError as exc:
            # Not chained: its repr carries the request headers, our service token among them.
            failure = f"unusable HTTP answer ({exc.status}, {exc.message})"
        except aiohttp.ClientConnectorError as exc:
            raise _Retryable(f"cannot connect ({exc.strerror or type(exc).__name__})") from exc
        except TimeoutError as exc:
            raise _Retryable(f"no answer within {self._timeout.total} s") from exc
        except aiohttp.ClientError as exc:
            raise _Retryable(f"connection failed ({type(exc).__name__})") from exc
        else:
            return _answer(tenant_id, status, body)
        raise _Retryable(failure)


def _answer(tenant_id: str, status: int, body: bytes) -> Credentials:
    """The tenant service's answer made credentials, or the error it stands for."""
    if status == 200:
        try:
            return Credentials.from_mapping(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as exc:
            # The body holds the token: name what is wrong, never quote it.
            reason = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
            raise TenantServiceUnavailable(
                tenant_id, f"tenant service sent malformed credentials: {reason}"
            ) from None
    if status == 404:
        raise TenantUnknown(tenant_id, "the tenant service does not know this tenant (404)")
    if status == 403:
        raise TenantSuspended(tenant_id, "the tenant service says it is suspended (403)")
    if status in (408, 429) or status >= 500:
        raise _Retryable(f"HTTP {status}")
    hint = " (check WA_TENANT_SERVICE_TOKEN)" if status == 401 else ""
    raise TenantServiceUnavailable(tenant_id, f"tenant service answered HTTP {status}{hint}")


class CredentialCache:
    """Credentials per tenant for ``ttl`` seconds; concurrent misses share one fetch.

    ``hits``, ``misses`` and ``fetches`` count as they say (a get that joins a fetch under
    way is a miss, not a fetch); ``observe``, if given, is called with ``"hit"``, ``"miss"``,
    ``"fetch"`` or ``"fetch_error"`` so metrics can plug in. ``timer`` is the cache's clock.
    """

    def __init__(
        self,
        source: CredentialSource,
        ttl: float,
        maxsize: int = 10_000,
        *,
        timer: Callable[[], float] = time.monotonic,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self._cache: TTLCache[str, Credentials] = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)
        self._inflight: dict[str, asyncio.Task[Credentials]] = {}
        self._observe = observe
        self.hits = 0
        self.misses = 0
        self.fetches = 0
        self.fetch_errors = 0

    def __repr__(self) -> str:
        return f"CredentialCache(size={len(self._cache)}, in_flight={len(self._inflight)})"

    async def get(self, tenant_id: str) -> Credentials:
        """The tenant's credentials, from the cache or from the one fetch under way for it."""
        try:
            # Not .get(): a membership test and then the item, two expiry checks; 0.7 µs more.
            creds = self._cache[tenant_id]
        except KeyError:  # never cached, or expired
            pass
        else:
            self.hits += 1
            self._emit("hit")
            return creds
        self.misses += 1
        self._emit("miss")
        task = self._inflight.get(tenant_id)
        if task is None:
            task = asyncio.create_task(self._fetch(tenant_id), name=f"credentials:{tenant_id}")
            self._inflight[tenant_id] = task
            task.add_done_callback(lambda done: self._settled(tenant_id, done))
        # Shielded: one waiter cancelled (a shutdown, a timeout) must not cancel the others.
        return await asyncio.shield(task)

    def invalidate(self, tenant_id: str, stale: Credentials) -> None:
        """Forget the tenant's credentials if they are still ``stale``, the ones Meta refused.

        Compare-and-invalidate: of N concurrent sends refused with one token, the first drops
        it and the next ``get`` fetches again; the others find that fetch under way (never
        dropped: they join it) or its result (a different entry, kept), so the tenant service
        gets one refetch per stale entry. Compared by identity, not token value: a refetch
        that returns the same token is a new entry, and late refusals of the old one keep it.
        """
        if self._cache.get(tenant_id) is stale:
            self._cache.pop(tenant_id, None)  # pop: the entry may expire in between

    async def _fetch(self, tenant_id: str) -> Credentials:
        self.fetches += 1
        self._emit("fetch")
        try:
            creds = await self.source.fetch(tenant_id)
        except Exception:
            self.fetch_errors += 1
            self._emit("fetch_error")
            raise
        self._cache[tenant_id] = creds
        return creds

    def _settled(self, tenant_id: str, task: asyncio.Task[Credentials]) -> None:
        if self._inflight.get(tenant_id) is task:
            del self._inflight[tenant_id]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch nobody awaits any more logs nothing

    def _emit(self, event: str) -> None:
        if self._observe is not None:
            self._observe(event)
