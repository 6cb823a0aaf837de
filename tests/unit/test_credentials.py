"""Credentials: the tenant service client, the static source, the TTL cache and its single fetch."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from tenacity import wait_none

from wa_consumer.credentials import (
    CredentialCache,
    Credentials,
    FallbackSource,
    StaticSource,
    TenantServiceSource,
    resolve_number,
)
from wa_consumer.errors import (
    CredentialError,
    SettingsError,
    TenantMismatch,
    TenantServiceUnavailable,
    TenantSuspended,
    TenantUnknown,
)

SERVICE_TOKEN = "svc-secret-token"
HANG = 0  # a status that means: never answer


def creds_body(token: str = "tok-acme-1", number: str = "111", **extra: Any) -> bytes:
    return orjson.dumps({"accessToken": token, "phoneNumberId": number, **extra})


class FakeTenantService:
    """``GET /tenants/{id}/whatsapp-credentials``: scripted answers per tenant, calls counted."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.authorization: list[str | None] = []
        self.answers: dict[str, list[tuple[int, bytes]]] = {}
        self.gate: asyncio.Event | None = None  # when set up, answers wait for it
        self.release = asyncio.Event()  # ends hanging answers at teardown

    def script(self, tenant: str, *answers: tuple[int, bytes]) -> None:
        """Answer ``tenant`` with these in order; the last one repeats."""
        self.answers[tenant] = list(answers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tenant = request.match_info["tenant"]
        self.calls[tenant] += 1
        self.authorization.append(request.headers.get("Authorization"))
        if self.gate is not None:
            await self.gate.wait()
        answers = self.answers.get(tenant, [(404, b'{"error":"no such tenant"}')])
        status, body = answers.pop(0) if len(answers) > 1 else answers[0]
        if status == HANG:
            await self.release.wait()
            status = 200
        return web.Response(status=status, body=body, content_type="application/json")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


@pytest.fixture
async def service() -> AsyncIterator[FakeTenantService]:
    fake = FakeTenantService()
    app = web.Application()
    app.router.add_get("/tenants/{tenant}/whatsapp-credentials", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/"))
    yield fake
    fake.release.set()
    if fake.gate is not None:
        fake.gate.set()
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    s = aiohttp.ClientSession()
    yield s
    await s.close()


@pytest.fixture
def source(service: FakeTenantService, session: aiohttp.ClientSession) -> TenantServiceSource:
    return TenantServiceSource(session, service.url, SERVICE_TOKEN, timeout=2.0, wait=wait_none())


# -- the tenant service ----------------------------------------------------------------------


async def test_fetches_credentials_with_the_service_token(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body(phoneNumberIds=["111", "222"])))
    creds = await source.fetch("acme")
    assert creds == Credentials("tok-acme-1", "111", frozenset({"111", "222"}))
    assert service.authorization == [f"Bearer {SERVICE_TOKEN}"]


async def test_without_a_service_token_no_authorization_is_sent(
    service: FakeTenantService, session: aiohttp.ClientSession
) -> None:
    service.script("acme", (200, creds_body()))
    await TenantServiceSource(session, service.url, None).fetch("acme")
    assert service.authorization == [None]


async def test_allowed_numbers_default_to_the_tenants_own(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body()))
    assert (await source.fetch("acme")).phone_number_ids == {"111"}


async def test_the_default_number_is_always_allowed(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body(phoneNumberIds=["222"])))
    assert (await source.fetch("acme")).phone_number_ids == {"111", "222"}


async def test_tenant_id_stays_one_path_segment(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("a/b c?", (200, creds_body()))
    await source.fetch("a/b c?")
    assert service.calls == {"a/b c?": 1}


@pytest.mark.parametrize("tenant", ["", ".", ".."])
async def test_ids_that_are_not_a_path_segment_are_unknown_without_a_call(
    service: FakeTenantService, source: TenantServiceSource, tenant: str
) -> None:
    with pytest.raises(TenantUnknown):
        await source.fetch(tenant)
    assert not service.calls


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_retryable_answers_are_retried_then_succeed(
    service: FakeTenantService, source: TenantServiceSource, status: int
) -> None:
    service.script("acme", (status, b""), (status, b"<html>busy</html>"), (200, creds_body()))
    assert (await source.fetch("acme")).access_token == "tok-acme-1"
    assert service.calls["acme"] == 3


async def test_exhausted_retries_raise_tenant_service_unavailable(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (503, b""))
    with pytest.raises(TenantServiceUnavailable, match="after 3 attempts: HTTP 503") as caught:
        await source.fetch("acme")
    assert caught.value.retryable
    assert caught.value.tenant_id == "acme"
    assert service.calls["acme"] == 3


async def test_timeouts_are_retried(
    service: FakeTenantService, session: aiohttp.ClientSession
) -> None:
    service.script("acme", (HANG, b""))
    source = TenantServiceSource(session, service.url, timeout=0.2, attempts=2, wait=wait_none())
    with pytest.raises(TenantServiceUnavailable, match=r"after 2 attempts: no answer within 0\.2"):
        await source.fetch("acme")
    assert service.calls["acme"] == 2


async def test_connection_refused_is_retried_then_unavailable(
    session: aiohttp.ClientSession,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    source = TenantServiceSource(session, f"http://127.0.0.1:{port}", sleep=sleep)
    with pytest.raises(TenantServiceUnavailable, match="cannot connect"):
        await source.fetch("acme")
    # The default backoff: exponential from 0.1 s, plus up to 0.1 s of jitter.
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2
    assert 0.2 <= sleeps[1] <= 0.3


@pytest.mark.parametrize(("status", "exception"), [(404, TenantUnknown), (403, TenantSuspended)])
async def test_unknown_and_suspended_are_not_retried(
    service: FakeTenantService,
    source: TenantServiceSource,
    status: int,
    exception: type[CredentialError],
) -> None:
    service.script("acme", (status, b""))
    with pytest.raises(exception) as caught:
        await source.fetch("acme")
    assert not caught.value.retryable
    assert service.calls["acme"] == 1


async def test_other_answers_are_unavailable_at_once(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (401, b""))
    with pytest.raises(TenantServiceUnavailable, match=r"HTTP 401.*WA_TENANT_SERVICE_TOKEN"):
        await source.fetch("acme")
    assert service.calls["acme"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"<html>ok</html>", "not JSON"),
        (b"[]", "expected a JSON object"),
        (orjson.dumps({"phoneNumberId": "1"}), "accessToken"),
        (orjson.dumps({"accessToken": "SECRET-tok", "phoneNumberId": 5}), "phoneNumberId"),
        (orjson.dumps({"accessToken": "SECRET-tok", "phoneNumberId": ""}), "phoneNumberId"),
        (creds_body("SECRET-tok", phoneNumberIds="111"), "phoneNumberIds"),
        (creds_body("SECRET-tok", phoneNumberIds=[1]), "phoneNumberIds"),
    ],
)
async def test_malformed_credentials_are_unavailable_and_never_quoted(
    service: FakeTenantService, source: TenantServiceSource, body: bytes, reason: str
) -> None:
    service.script("acme", (200, body))
    with pytest.raises(TenantServiceUnavailable, match="malformed credentials") as caught:
        await source.fetch("acme")
    assert reason in str(caught.value)
    assert "SECRET" not in str(caught.value)
    assert "SECRET" not in repr(caught.value)
    assert caught.value.__cause__ is None
    assert service.calls["acme"] == 1


# -- the cache -------------------------------------------------------------------------------


async def test_hundred_concurrent_gets_of_a_cold_tenant_make_one_fetch(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body()))
    service.gate = asyncio.Event()
    cache = CredentialCache(source, ttl=60)

    gets = [asyncio.create_task(cache.get("acme")) for _ in range(100)]
    await until(lambda: cache.misses == 100 and service.calls["acme"] == 1)
    service.gate.set()
    results = await asyncio.gather(*gets)

    assert {c.access_token for c in results} == {"tok-acme-1"}
    assert service.calls["acme"] == 1
    assert (cache.fetches, cache.misses, cache.hits) == (1, 100, 0)
    await cache.get("acme")
    assert cache.hits == 1


async def test_a_failed_fetch_reaches_every_waiter_and_is_not_cached(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("gone", (404, b""))
    service.gate = asyncio.Event()
    cache = CredentialCache(source, ttl=60)

    gets = [asyncio.create_task(cache.get("gone")) for _ in range(20)]
    await until(lambda: cache.misses == 20)
    service.gate.set()
    results = await asyncio.gather(*gets, return_exceptions=True)

    assert all(isinstance(r, TenantUnknown) for r in results)
    assert service.calls["gone"] == 1
    with pytest.raises(TenantUnknown):
        await cache.get("gone")
    assert service.calls["gone"] == 2
    assert cache.fetch_errors == 2


@pytest.mark.parametrize(("status", "exception"), [(404, TenantUnknown), (403, TenantSuspended)])
async def test_unknown_and_suspended_are_never_cached(
    service: FakeTenantService,
    source: TenantServiceSource,
    status: int,
    exception: type[CredentialError],
) -> None:
    service.script("acme", (status, b""), (200, creds_body()))
    cache = CredentialCache(source, ttl=60)
    with pytest.raises(exception):
        await cache.get("acme")
    assert (await cache.get("acme")).access_token == "tok-acme-1"  # fetched again
    assert service.calls["acme"] == 2


async def test_entries_expire_after_the_ttl(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body("tok-1")), (200, creds_body("tok-2")))
    clock = Clock()
    cache = CredentialCache(source, ttl=900, timer=clock)

    assert (await cache.get("acme")).access_token == "tok-1"
    clock.now += 899
    assert (await cache.get("acme")).access_token == "tok-1"
    clock.now += 2
    assert (await cache.get("acme")).access_token == "tok-2"
    assert service.calls["acme"] == 2
    assert (cache.hits, cache.misses, cache.fetches) == (1, 2, 2)


async def test_invalidate_makes_the_next_get_fetch_again(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body("tok-1")), (200, creds_body("tok-2")))
    cache = CredentialCache(source, ttl=900)
    stale = await cache.get("acme")
    assert stale.access_token == "tok-1"
    cache.invalidate("acme", stale)
    cache.invalidate("never-seen", stale)  # harmless
    assert (await cache.get("acme")).access_token == "tok-2"
    assert service.calls["acme"] == 2


async def test_invalidating_a_token_already_replaced_keeps_the_new_one(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body("tok-1")), (200, creds_body("tok-2")))
    cache = CredentialCache(source, ttl=900)
    stale = await cache.get("acme")
    cache.invalidate("acme", stale)
    fresh = await cache.get("acme")
    cache.invalidate("acme", stale)  # a late 401 of a send that used tok-1
    assert await cache.get("acme") is fresh
    assert service.calls["acme"] == 2


async def test_a_refetch_that_returns_the_same_token_is_not_dropped_by_late_refusals(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body("tok-1")))  # the service has not rotated yet
    cache = CredentialCache(source, ttl=900)
    stale = await cache.get("acme")
    cache.invalidate("acme", stale)
    fresh = await cache.get("acme")
    assert fresh == stale
    cache.invalidate("acme", stale)
    assert await cache.get("acme") is fresh
    assert service.calls["acme"] == 2


async def test_invalidate_never_drops_a_fetch_under_way(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body("tok-old")), (200, creds_body("tok-new")))
    cache = CredentialCache(source, ttl=900)
    stale = await cache.get("acme")
    cache.invalidate("acme", stale)
    service.gate = asyncio.Event()

    first = asyncio.create_task(cache.get("acme"))
    await until(lambda: service.calls["acme"] == 2)
    cache.invalidate("acme", stale)  # another send refused with tok-old
    second = asyncio.create_task(cache.get("acme"))  # joins the refetch
    await until(lambda: cache.misses == 3)
    service.gate.set()

    assert (await first).access_token == "tok-new"
    assert (await second).access_token == "tok-new"
    assert (await cache.get("acme")).access_token == "tok-new"
    assert service.calls["acme"] == 2


class SlowCountingSource:
    """Answers ``tok-<n>`` for the n-th fetch, after a pause long enough for a crowd to form."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.fetches = 0

    async def fetch(self, tenant_id: str) -> Credentials:
        self.fetches += 1
        token = f"tok-{self.fetches}"
        await asyncio.sleep(self.delay)
        return Credentials(token, "111", frozenset({"111"}))


async def test_concurrent_auth_failures_of_one_token_cost_one_refetch() -> None:
    source = SlowCountingSource(delay=0.02)
    cache = CredentialCache(source, ttl=900)

    async def send_refused_then_retry(i: int) -> str:
        creds = await cache.get("acme")
        await asyncio.sleep(i % 5 * 0.01)  # the send; some 401s come after the refetch ended
        cache.invalidate("acme", creds)
        return (await cache.get("acme")).access_token

    tokens = await asyncio.gather(*(send_refused_then_retry(i) for i in range(50)))

    assert source.fetches == 2  # the first and one refetch
    assert set(tokens) == {"tok-2"}
    assert cache.fetches == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("acme", (200, creds_body()))
    service.gate = asyncio.Event()
    cache = CredentialCache(source, ttl=60)

    impatient = asyncio.create_task(cache.get("acme"))
    patient = asyncio.create_task(cache.get("acme"))
    await until(lambda: cache.misses == 2 and service.calls["acme"] == 1)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    service.gate.set()

    assert (await patient).access_token == "tok-acme-1"
    assert service.calls["acme"] == 1


async def test_the_cache_is_bounded() -> None:
    source = StaticSource({f"t{i}": {"accessToken": "x", "phoneNumberId": "1"} for i in range(5)})
    cache = CredentialCache(source, ttl=60, maxsize=2)
    for i in range(5):
        await cache.get(f"t{i}")
    assert "size=2" in repr(cache)


async def test_counters_reach_the_observer() -> None:
    events: list[str] = []
    source = StaticSource({"acme": {"accessToken": "x", "phoneNumberId": "1"}})
    cache = CredentialCache(source, ttl=60, observe=events.append)
    await cache.get("acme")
    await cache.get("acme")
    with pytest.raises(TenantUnknown):
        await cache.get("nobody")
    assert events == ["miss", "fetch", "hit", "miss", "fetch", "fetch_error"]


# -- numbers, static credentials, fallback ---------------------------------------------------

CREDS = Credentials("tok", "111", frozenset({"111", "222"}))


@pytest.mark.parametrize(("requested", "number"), [(None, "111"), ("", "111"), ("222", "222")])
def test_resolve_number(requested: str | None, number: str) -> None:
    assert resolve_number(CREDS, "acme", requested) == number


def test_a_number_the_tenant_does_not_own_is_a_mismatch() -> None:
    with pytest.raises(TenantMismatch, match="333") as caught:
        resolve_number(CREDS, "acme", "333")
    assert caught.value.category == "tenant_mismatch"
    assert caught.value.tenant_id == "acme"
    assert not caught.value.retryable


async def test_static_source() -> None:
    source = StaticSource(
        {
            "acme": {"accessToken": "tok-a", "phoneNumberId": "111"},
            "beta": {"accessToken": "tok-b", "phoneNumberId": "333", "phoneNumberIds": ["444"]},
        }
    )
    assert await source.fetch("acme") == Credentials("tok-a", "111", frozenset({"111"}))
    assert (await source.fetch("beta")).phone_number_ids == {"333", "444"}
    assert "acme" in source
    with pytest.raises(TenantUnknown, match="WA_STATIC_CREDENTIALS"):
        await source.fetch("nobody")


def test_malformed_static_credentials_stop_start_up_without_the_token() -> None:
    with pytest.raises(SettingsError, match="WA_STATIC_CREDENTIALS: tenant 'acme'") as caught:
        StaticSource({"acme": {"accessToken": "SECRET-tok", "phoneNumberId": 111}})
    assert "SECRET" not in str(caught.value)


async def test_fallback_prefers_static_then_the_service(
    service: FakeTenantService, source: TenantServiceSource
) -> None:
    service.script("remote", (200, creds_body("tok-remote")))
    static = StaticSource({"local": {"accessToken": "tok-local", "phoneNumberId": "1"}})
    both = FallbackSource(static, source)

    assert (await both.fetch("local")).access_token == "tok-local"
    assert (await both.fetch("remote")).access_token == "tok-remote"
    assert dict(service.calls) == {"remote": 1}
    with pytest.raises(TenantUnknown):
        await FallbackSource(static, None).fetch("remote")


async def test_no_repr_shows_a_token(source: TenantServiceSource) -> None:
    static = StaticSource({"acme": {"accessToken": "SECRET-tok", "phoneNumberId": "1"}})
    creds = await static.fetch("acme")
    cache = CredentialCache(static, ttl=60)
    await cache.get("acme")
    for thing in (creds, static, source, cache, FallbackSource(static, source)):
        assert "SECRET" not in repr(thing)
        assert SERVICE_TOKEN not in repr(thing)
    assert repr(creds) == "Credentials(phone_number_id='1', phone_number_ids=frozenset({'1'}))"
