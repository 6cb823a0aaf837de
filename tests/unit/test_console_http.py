"""The console's HTTP layer with fakes behind it (no broker, no database): who may ask, CSRF,
where a visitor without a session goes, the headers every answer carries, errors as pages
and as JSON."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from wa_consumer.console import build_app, hash_password
from wa_consumer.console.auth import Accounts, Sessions
from wa_consumer.console.jobs import Jobs
from wa_consumer.console.state import Console
from wa_consumer.controls import TenantState
from wa_consumer.settings import Settings

TOKEN = "t" * 32
PASSWORD = "a long password"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class FakeControls:
    """``TenantControls``' shape: remembers what it was told."""

    calls: list[tuple[str, str, str | None, str, str]] = field(default_factory=list)

    async def _do(
        self, action: str, tenant: str, number: str | None, reason: str, actor: str
    ) -> TenantState:
        self.calls.append((action, tenant, number, reason, actor))
        mode = {"pause": "paused", "drain": "draining", "resume": "active"}[action]
        return TenantState(tenant, number, mode, reason, actor)

    async def pause(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        return await self._do("pause", tenant, number, reason, actor)

    async def resume(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        return await self._do("resume", tenant, number, reason, actor)

    async def drain(
        self, tenant: str, number: str | None, *, reason: str, actor: str
    ) -> TenantState:
        return await self._do("drain", tenant, number, reason, actor)

    async def states(self, tenant: str | None = None) -> list[TenantState]:
        return [TenantState("acme", None, "paused", "blocked", "alice")]


@pytest.fixture
async def client() -> AsyncIterator[tuple[aiohttp.ClientSession, FakeControls]]:
    controls = FakeControls()
    console = Console(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        db=None,  # type: ignore[arg-type]  # no route used here reads the database
        broker=None,  # type: ignore[arg-type]
        dead=None,  # type: ignore[arg-type]
        controls=controls,
        accounts=Accounts(
            {"alice": SecretStr(hash_password(PASSWORD, n=2**10))}, {"bot": SecretStr(TOKEN)}
        ),
        sessions=Sessions(b"s" * 32),
        jobs=Jobs(),
    )
    server = TestServer(build_app(console))
    await server.start_server()
    jar = aiohttp.CookieJar(unsafe=True)
    try:
        async with aiohttp.ClientSession(str(server.make_url("/")), cookie_jar=jar) as http:
            yield http, controls
    finally:
        await server.close()


async def _login(http: aiohttp.ClientSession) -> str:
    async with http.get("/login") as form:
        token = CSRF.search(await form.text())
    assert token is not None
    data = {"user": "alice", "password": PASSWORD, "csrf": token.group(1), "next": "/jobs/x"}
    async with http.post("/login", data=data, allow_redirects=False) as answer:
        assert answer.status == 303
        assert answer.headers["Location"] == "/jobs/x"
        cookie = answer.cookies["wa_console_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
    async with http.get("/jobs/x") as page:  # an unknown job: a page saying so
        assert page.status == 404
        found = CSRF.search(await page.text())
    assert found is not None
    return found.group(1)


async def test_every_answer_forbids_framing_scripts_from_elsewhere_and_caching(client: Any) -> None:
    http, _ = client
    async with http.get("/login") as answer:
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Cache-Control"] == "no-store"
    async with http.get("/static/console.js") as script:
        assert script.status == 200 and "data-confirm" in await script.text()


async def test_the_api_wants_a_token_and_names_who_used_it(client: Any) -> None:
    http, controls = client
    async with http.get("/api/tenants") as answer:
        assert answer.status == 401
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in await answer.json()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with http.get("/api/tenants", headers=auth) as answer:
        assert (await answer.json())["tenants"][0]["mode"] == "paused"
    async with http.post("/api/tenants/acme/pause", json={}, headers=auth) as answer:
        assert answer.status == 422  # no reason
    async with http.post("/api/tenants/acme/pause", data=b"[1]", headers=auth) as answer:
        assert answer.status == 422  # not an object
    async with http.post(
        "/api/tenants/acme/drain", json={"number": "123", "reason": "why"}, headers=auth
    ) as answer:
        assert answer.status == 200 and (await answer.json())["mode"] == "draining"
    assert controls.calls == [("drain", "acme", "123", "why", "api:bot")]
    async with http.get("/api/jobs/nope", headers=auth) as answer:
        assert answer.status == 404 and "nope" in (await answer.json())["error"]


async def test_a_page_without_a_session_goes_to_the_login_form_and_comes_back(client: Any) -> None:
    http, controls = client
    async with http.get("/jobs/x", allow_redirects=False) as answer:
        assert answer.status == 303 and answer.headers["Location"].startswith("/login?next=")
    csrf = await _login(http)
    data = {"action": "pause", "tenant": "acme", "reason": "blocked"}
    async with http.post("/tenants", data=data, allow_redirects=False) as answer:
        assert answer.status == 403  # no CSRF token
    async with http.post("/tenants", data={**data, "csrf": "x"}, allow_redirects=False) as answer:
        assert answer.status == 403
    assert controls.calls == []
    async with http.post("/tenants", data={**data, "csrf": csrf}, allow_redirects=False) as answer:
        assert answer.status == 303 and answer.headers["Location"] == "/#tenants"
    assert controls.calls == [("pause", "acme", None, "blocked", "alice")]
    async with http.post("/tenants", data={**data, "reason": "", "csrf": csrf}) as answer:
        assert answer.status == 422 and "reason" in await answer.text()


async def test_a_login_form_from_elsewhere_and_a_next_off_the_site_are_refused(client: Any) -> None:
    http, _ = client
    data = {"user": "alice", "password": PASSWORD, "csrf": "guessed"}
    async with http.post("/login", data=data, allow_redirects=False) as answer:
        assert answer.status == 403
    async with http.get("/login") as form:
        token = CSRF.search(await form.text())
    assert token is not None
    data = {**data, "csrf": token.group(1), "next": "//evil.example/"}
    async with http.post("/login", data=data, allow_redirects=False) as answer:
        assert answer.headers["Location"] == "/"
