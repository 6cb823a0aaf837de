"""The console's JSON API and forms against the real RabbitMQ and PostgreSQL: every action,
what it does to the queues and the ledger, who may ask, and that a group replay stopped or
cut halfway loses and doubles nothing.

Dead messages are put into the DLQ and their rows into the ledger's mirror the way the
daemon does (the DLX, and the daemon's own insert statement); where outcomes matter (a
canary that dies again, or is sent), the real daemon runs against the sandbox.
"""

from __future__ import annotations

import contextlib
import random
import re
import secrets
import string
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from yarl import URL

from wa_consumer.console import ConsoleServer, hash_password
from wa_consumer.ledger.dead_write import INSERT_DEATHS, row_of
from wa_consumer.ledger.migrate import migrate
from wa_consumer.outcomes import Failure
from wa_consumer.seams import Death
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy
from .scratch_db import scratch_database
from .test_dlq import bury, dead_headers, id_of

pytestmark = pytest.mark.integration

NO_SANDBOX = "http://127.0.0.1:9"
PASSWORD = "correct horse battery staple"
HASHED = hash_password(PASSWORD)
TOKEN = secrets.token_urlsafe(32)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def word() -> str:
    """Letters only: a fingerprint keeps them (digits and hex ids are masked)."""
    return "".join(random.choices(string.ascii_lowercase, k=12))


@dataclass
class Console:
    settings: Settings
    server: ConsoleServer
    http: aiohttp.ClientSession
    broker: Broker
    db: asyncpg.Connection[Any]

    async def api(
        self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN, **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.http.request(
            method, path, json=body, headers=headers, allow_redirects=False, **kw
        ) as answer:
            text = await answer.text()
            try:
                return answer.status, orjson.loads(text)
            except orjson.JSONDecodeError:
                return answer.status, text

    async def login(self, user: str = "alice", password: str = PASSWORD) -> str:
        """Log in through the form, as a browser does; returns the session's CSRF token."""
        async with self.http.get("/login") as form:
            token = CSRF.search(await form.text())
        assert token is not None
        async with self.http.post(
            "/login",
            data={"user": user, "password": password, "csrf": token.group(1), "next": "/"},
            allow_redirects=False,
        ) as answer:
            assert answer.status == 303, await answer.text()
        async with self.http.get("/") as page:
            assert page.status == 200
            found = CSRF.search(await page.text())
        assert found is not None
        return found.group(1)

    async def form(self, path: str, data: dict[str, str]) -> aiohttp.ClientResponse:
        async with self.http.post(path, data=data, allow_redirects=False) as answer:
            await answer.read()
            return answer

    async def count(self, queue: str) -> int:
        return await self.broker.count(queue)

    async def dead_ids(self) -> list[str]:
        return [id_of(m) for m in await self.broker.drain(self.settings.dead_letter_queue)]

    async def main_ids(self) -> list[str]:
        return [id_of(m) for m in await self.broker.drain(self.settings.queue)]


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of each test's own: the console shows every group and tenant the ledger
    holds, and the run's shared database has other tests' (this overrides that fixture)."""
    async with scratch_database("wa_console") as url:
        yield url


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(database)
    await migrate(connection)
    try:
        yield connection
    finally:
        await connection.close()


def console_settings(
    vhost: str, database: str, sandbox_url: str = NO_SANDBOX, **kw: Any
) -> Settings:
    return make_settings(
        vhost,
        sandbox_url,
        database_url=database,
        console_users={"alice": HASHED},
        console_api_tokens={"runbook": TOKEN},
        console_secret="s" * 40,
        **kw,
    )


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, db: asyncpg.Connection[Any], via: str | None = None
) -> AsyncIterator[Console]:
    """The console on a free port (its broker at ``via`` when given: a proxy), with its
    topology declared, and a client for it."""
    server = ConsoleServer(settings.model_copy(update={"amqp_url": via}) if via else settings)
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        port = await server.start("127.0.0.1", 0)
        try:
            jar = aiohttp.CookieJar(unsafe=True)  # cookies of an IP address, as a browser
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as http:
                yield Console(settings, server, http, broker, db)
        finally:
            await server.close()


@pytest.fixture
async def console(vhost: str, database: str, db: asyncpg.Connection[Any]) -> AsyncIterator[Console]:
    async with serving(console_settings(vhost, database), db) as running_console:
        yield running_console


async def kill(
    c: Console,
    tenant: str,
    n: int,
    *,
    text: str,
    category: str = "permanent",
    code: str = "131026",
    headers: dict[str, Any] | None = None,
    died: datetime | None = None,
) -> list[str]:
    """``n`` dead messages of one cause: in the DLQ through the DLX, and in the ledger's
    mirror through the daemon's own statement. Returns their internalIds, in order."""
    ids = []
    rows = []
    for _ in range(n):
        internal_id = str(uuid.uuid4())
        body = orjson.dumps(text_message(tenant, "27820001234", internal_id=internal_id))
        shown = f"({code}) {text} for {internal_id}"
        copy = {**dead_headers(category, code, shown, tenant, failed_at=died), **(headers or {})}
        await bury(c.broker, body, copy, internal_id)
        death = Death(
            failure=Failure(category, code, shown),
            body=body,
            body_bytes=len(body),
            headers=copy,
            tenant_id=tenant,
            internal_id=internal_id,
            type="text",
            routing_key=f"outbound.processed.{tenant}",
        )
        rows.append(row_of(death))
        ids.append(internal_id)
    await c.db.execute(INSERT_DEATHS, orjson.dumps(rows).decode())
    return ids


async def group_of(c: Console, text: str) -> dict[str, Any]:
    """The group of the dead messages whose error holds ``text``, as the API shows it.

    Found by its text in the ledger first: the run's database holds other tests' groups,
    more than the 50 largest the group list shows."""
    [fp] = {
        r["fingerprint"]
        for r in await c.db.fetch(
            "SELECT fingerprint FROM wa_dead WHERE state = 'dead' AND position($1 in message) > 0",
            text,
        )
    }
    status, body = await c.api("GET", f"/api/groups/{fp}")
    assert status == 200, body
    group: dict[str, Any] = body["group"]
    return group


async def actions_on(c: Console, target: str) -> list[dict[str, Any]]:
    status, body = await c.api("GET", f"/api/actions?target={target}")
    assert status == 200
    return body["actions"]


async def job_in(c: Console, job_id: str, *phases: str, timeout: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        status, job = await c.api("GET", f"/api/jobs/{job_id}")
        assert status == 200, job
        return job if job["phase"] in phases else None

    found: dict[str, Any] = await wait_for(reached, timeout=timeout, interval=0.1)
    return found


# -- who may ask -----------------------------------------------------------------------------


async def test_the_api_refuses_requests_without_a_token_or_with_a_wrong_one(
    console: Console,
) -> None:
    for method, path in [("GET", "/api/overview"), ("POST", "/api/groups/abcdef0123/resolve")]:
        status, body = await console.api(method, path, {"reason": "x"}, token=None)
        assert status == 401, body
        assert "Bearer" in body["error"]
        status, _ = await console.api(method, path, {"reason": "x"}, token="not-" + TOKEN)
        assert status == 401
    status, _ = await console.api("GET", "/api/overview")
    assert status == 200


async def test_pages_send_a_visitor_without_a_session_to_the_login_form(console: Console) -> None:
    async with console.http.get("/groups/abcdef0123", allow_redirects=False) as answer:
        assert answer.status == 303
        location = URL(answer.headers["Location"])
        assert (location.path, location.query["next"]) == ("/login", "/groups/abcdef0123")
    answer = await console.form("/tenants", {"action": "pause", "tenant": "x", "reason": "r"})
    assert answer.status == 303 and answer.headers["Location"].startswith("/login")
    async with console.http.get("/healthz") as health:
        assert health.status == 200  # the one open route, with the static files


async def test_a_wrong_password_is_refused_and_guessing_is_braked(console: Console) -> None:
    async with console.http.get("/login") as form:
        token = CSRF.search(await form.text())
    assert token is not None
    for attempt in range(6):
        answer = await console.form(
            "/login", {"user": "alice", "password": "wrong", "csrf": token.group(1)}
        )
        assert answer.status == (401 if attempt < 5 else 429)
    async with console.http.get("/", allow_redirects=False) as page:
        assert page.status == 303  # still no session


async def test_forms_and_session_api_calls_without_the_csrf_token_are_refused(
    console: Console,
) -> None:
    csrf = await console.login()
    tenant = f"t-{word()}"
    for data in ({}, {"csrf": "forged"}):
        answer = await console.form(
            "/tenants", {"action": "pause", "tenant": tenant, "reason": "test", **data}
        )
        assert answer.status == 403
    # A session (not a token) calling the API needs the header, for unsafe methods only.
    status, _ = await console.api("GET", "/api/tenants", token=None)
    assert status == 200
    status, body = await console.api(
        "POST", f"/api/tenants/{tenant}/pause", {"reason": "r"}, token=None
    )
    assert status == 403, body
    status, _ = await console.api(
        "POST", f"/api/tenants/{tenant}/pause", {"reason": "r"}, token=None,
        headers={"X-CSRF-Token": csrf},
    )  # fmt: skip
    assert status == 200
    status, body = await console.api("GET", f"/api/tenants?tenant={tenant}")
    assert [t["mode"] for t in body["tenants"]] == ["paused"]
    # None of the refused forms did anything.
    assert [a["actor"] for a in await actions_on(console, tenant)] == ["alice"]


async def test_logging_out_ends_the_session(console: Console) -> None:
    csrf = await console.login()
    answer = await console.form("/logout", {"csrf": csrf})
    assert answer.status == 303
    async with console.http.get("/", allow_redirects=False) as page:
        assert page.status == 303


# -- reading ---------------------------------------------------------------------------------


async def test_the_overview_groups_dead_messages_by_cause_from_the_ledger(
    console: Console,
) -> None:
    text = word()
    await kill(console, "acme", 3, text=text)
    await kill(console, "globex", 2, text=text)
    other, code = word(), str(random.randrange(10**9, 10**10))  # a code of its own
    await kill(console, "acme", 1, text=other, category="account", code=code)
    group = await group_of(console, text)
    assert group["count"] == 5
    assert sorted(group["tenants"]) == ["acme", "globex"]
    assert group["types"] == ["text"]
    assert sum(group["hourly"]) == 5 and len(group["hourly"]) == 24
    assert group["first_seen"] <= group["last_seen"]

    status, view = await console.api("GET", f"/api/overview?category=account&code={code}")
    assert status == 200, view
    assert view["errors"] == {}
    [listed] = view["dead"]["groups"]
    assert other in listed["message"] and listed["tenants"] == ["acme"]
    assert view["dead"]["total"] == 1
    status, listed_too = await console.api("GET", f"/api/groups?code={code}&tenant=acme")
    assert [g["count"] for g in listed_too["groups"]] == [1]
    queues = {q["role"]: q for q in view["queues"]}
    assert queues["dead"]["name"] == console.settings.dead_letter_queue
    assert queues["dead"]["messages"] >= 6
    assert {q["role"] for q in view["queues"]} == {"main", "dead", "wait"}
    status, bad = await console.api("GET", "/api/overview?age=yesterday")
    assert status == 422 and "age" in bad["error"]

    await console.login()
    async with console.http.get("/") as page:
        html = await page.text()
    assert group["fingerprint"] in html and "<svg" in html
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_a_group_is_read_a_page_at_a_time(console: Console) -> None:
    text = word()
    ids = await kill(console, "acme", 120, text=text)
    fp = (await group_of(console, text))["fingerprint"]
    seen: list[str] = []
    before = None
    pages = 0
    while True:
        query = f"?limit=50&before={before}" if before else "?limit=50"
        status, page = await console.api("GET", f"/api/groups/{fp}{query}")
        assert status == 200, page
        seen += [m["internal_id"] for m in page["messages"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids))  # newest first, each once
    status, _ = await console.api("GET", "/api/groups/0123456789")
    assert status == 404
    status, _ = await console.api("GET", "/api/groups/not-hex")
    assert status == 422


async def test_a_message_shows_its_body_headers_and_attempts_with_tokens_masked(
    console: Console,
) -> None:
    text = word()
    leaked = {"authorization": "Bearer EAAGsecretsecretsecret123", "x-note": "Bearer abc.def"}
    [internal_id] = await kill(console, "acme", 1, text=text, headers=leaked)
    await console.db.execute(
        "INSERT INTO wa_messages (tenant_id, internal_id, status) VALUES ('acme', $1, 'dead')",
        internal_id,
    )
    await console.db.execute(
        "INSERT INTO wa_attempts (tenant_id, internal_id, attempt, started_at, latency_ms, "
        "outcome, code, category, message) VALUES ('acme', $1, 1, now(), 12, 'dead', '131026', "
        "'permanent', 'token EAAGsecretsecretsecret123 rejected')",
        internal_id,
    )
    fp = (await group_of(console, text))["fingerprint"]
    _, page = await console.api("GET", f"/api/groups/{fp}")
    dead_id = page["messages"][0]["id"]
    status, message = await console.api("GET", f"/api/messages/{dead_id}")
    assert status == 200, message
    assert message["body"]["metadata"]["internalId"] == internal_id
    assert message["headers"]["authorization"] == "***"
    assert message["headers"]["x-note"] == "Bearer ***"
    assert message["attempts"][0]["message"] == "token *** rejected"
    assert message["record"]["status"] == "dead"
    assert "EAAG" not in orjson.dumps(message).decode()
    await console.login()
    async with console.http.get(f"/messages/{dead_id}") as html:
        shown = await html.text()
    assert internal_id in shown and "EAAG" not in shown
    status, _ = await console.api("GET", "/api/messages/999999999")
    assert status == 404


# -- actions ---------------------------------------------------------------------------------


async def test_replaying_one_message_moves_it_alone_and_is_recorded(console: Console) -> None:
    text = word()
    ids = await kill(console, "acme", 3, text=text)
    fp = (await group_of(console, text))["fingerprint"]
    _, page = await console.api("GET", f"/api/groups/{fp}")
    [row] = [m for m in page["messages"] if m["internal_id"] == ids[1]]
    status, body = await console.api("POST", f"/api/messages/{row['id']}/replay", {})
    assert status == 422 and "reason" in body["error"]
    status, result = await console.api(
        "POST", f"/api/messages/{row['id']}/replay", {"reason": "recipient fixed"}
    )
    assert status == 200, result
    assert result["replayed"] == 1
    [moved] = await console.broker.drain(console.settings.queue)
    assert id_of(moved) == ids[1]
    assert moved.headers["x-replay-count"] == 1 and moved.headers["x-retry-count"] == 0
    assert await console.dead_ids() == [ids[0], ids[2]]
    [action] = await actions_on(console, f"message:{ids[1]}")
    assert (action["actor"], action["action"], action["reason"]) == (
        "api:runbook",
        "message_replay",
        "recipient fixed",
    )


async def test_edit_and_retry_sends_the_edit_and_keeps_the_original_in_the_ledger(
    console: Console,
) -> None:
    text = word()
    [internal_id, other] = await kill(console, "acme", 2, text=text, headers={"x-replay-count": 1})
    fp = (await group_of(console, text))["fingerprint"]
    _, page = await console.api("GET", f"/api/groups/{fp}")
    [row] = [m for m in page["messages"] if m["internal_id"] == internal_id]
    _, message = await console.api("GET", f"/api/messages/{row['id']}")
    edited = message["body"]
    edited["wabaPayload"]["to"] = "27829998888"

    bad = {**edited, "wabaPayload": {**edited["wabaPayload"], "type": "nonsense"}}
    status, body = await console.api(
        "POST", f"/api/messages/{row['id']}/retry", {"reason": "r", "body": bad}
    )
    assert status == 422 and "unknown type" in body["error"]
    moved = {**edited, "metadata": {**edited["metadata"], "internalId": "another"}}
    status, body = await console.api(
        "POST", f"/api/messages/{row['id']}/retry", {"reason": "r", "body": moved}
    )
    assert status == 422 and "internalId" in body["error"]
    assert await console.count(console.settings.queue) == 0  # nothing published by either

    status, result = await console.api(
        "POST", f"/api/messages/{row['id']}/retry",
        {"reason": "typo in the number", "body": orjson.dumps(edited).decode()},
    )  # fmt: skip
    assert status == 200, result
    assert result["removed_from_dlq"] == 1 and result["replay_count"] == 2
    [sent] = await console.broker.drain(console.settings.queue)
    assert orjson.loads(sent.body)["wabaPayload"]["to"] == "27829998888"
    assert sent.headers["x-replay-count"] == 2 and sent.headers["x-edited-by"] == "api:runbook"
    assert sent.message_id == internal_id
    assert await console.dead_ids() == [other]
    state, resolution, body_kept = await console.db.fetchrow(
        "SELECT state, resolution, body FROM wa_dead WHERE id = $1", row["id"]
    )
    assert (state, resolution) == ("edited", "edited and retried by api:runbook")
    assert orjson.loads(body_kept)["wabaPayload"]["to"] == "27820001234"  # the original
    [action] = await actions_on(console, f"message:{internal_id}")
    assert action["action"] == "message_edit_retry" and action["reason"] == "typo in the number"

    # From the page: an edit that is not JSON comes back with its reason, the text kept.
    [other_row] = [m for m in page["messages"] if m["internal_id"] == other]
    csrf = await console.login()
    async with console.http.post(
        f"/messages/{other_row['id']}/retry",
        data={"csrf": csrf, "reason": "r", "body": '{"metadata": <oops>'},
    ) as answer:
        shown = await answer.text()
    assert answer.status == 422
    assert "not JSON" in shown and "{&#34;metadata&#34;: &lt;oops&gt;" in shown
    assert await console.count(console.settings.queue) == 0  # nothing sent


async def test_resolving_a_group_purges_it_alone_with_its_reason(console: Console) -> None:
    text, keep = word(), word()
    gone = await kill(console, "acme", 4, text=text)
    kept = await kill(console, "acme", 2, text=keep)
    for internal_id in gone:
        await console.db.execute(
            "INSERT INTO wa_messages (tenant_id, internal_id, status) VALUES ('acme', $1, 'dead')",
            internal_id,
        )
    fp = (await group_of(console, text))["fingerprint"]
    status, _body = await console.api("POST", f"/api/groups/{fp}/resolve", {"reason": " "})
    assert status == 422
    status, result = await console.api(
        "POST", f"/api/groups/{fp}/resolve", {"reason": "numbers not on WhatsApp"}
    )
    assert status == 200, result
    assert result["removed"] == 4
    assert await console.dead_ids() == kept
    resolutions = await console.db.fetch(
        "SELECT resolution FROM wa_messages WHERE internal_id = ANY($1::text[])", gone
    )
    assert {r["resolution"] for r in resolutions} == {
        "resolved by api:runbook: numbers not on WhatsApp"
    }
    [action] = await actions_on(console, f"group:{fp}")
    assert (action["action"], action["details"]["removed"]) == ("group_resolve", 4)


async def test_tenants_are_paused_drained_and_resumed_with_who_and_why(console: Console) -> None:
    tenant = f"t-{word()}"
    status, state = await console.api(
        "POST", f"/api/tenants/{tenant}/pause", {"reason": "account blocked"}
    )
    assert status == 200, state
    assert (state["mode"], state["reason"], state["actor"]) == (
        "paused",
        "account blocked",
        "api:runbook",
    )
    status, state = await console.api(
        "POST", f"/api/tenants/{tenant}/drain", {"number": "106540352242922", "reason": "r"}
    )
    assert (status, state["mode"], state["number"]) == (200, "draining", "106540352242922")
    status, body = await console.api("GET", f"/api/tenants?tenant={tenant}")
    assert {(t["number"], t["mode"]) for t in body["tenants"]} == {
        (None, "paused"),
        ("106540352242922", "draining"),
    }
    status, state = await console.api("POST", f"/api/tenants/{tenant}/resume", {"reason": "fixed"})
    assert (status, state["mode"]) == (200, "active")
    status, body = await console.api(
        "POST", f"/api/tenants/{tenant}/pause", {"number": "12ab", "reason": "r"}
    )
    assert status == 422
    actions = await actions_on(console, tenant)
    assert [a["action"] for a in reversed(actions)] == ["pause", "drain", "resume"]

    csrf = await console.login()
    answer = await console.form(
        "/tenants", {"csrf": csrf, "action": "pause", "tenant": tenant, "reason": "from the page"}
    )
    assert answer.status == 303
    latest = (await actions_on(console, tenant))[0]
    assert (latest["actor"], latest["reason"]) == ("alice", "from the page")


async def test_a_group_replay_sends_a_canary_then_the_rest_when_told(console: Console) -> None:
    text, other = word(), word()
    ids = await kill(console, "acme", 25, text=text)
    others = await kill(console, "globex", 5, text=other)
    fp = (await group_of(console, text))["fingerprint"]
    status, job = await console.api(
        "POST", f"/api/groups/{fp}/replay", {"reason": "cause fixed", "canary": 5, "rate": 500}
    )
    assert status == 202, job
    job = await job_in(console, job["id"], "waiting")
    assert job["canary_replayed"] == 5
    canary = [c["internal_id"] for c in job["canary"]]
    assert set(canary) <= set(ids) and len(canary) == 5
    assert job["canary_outcomes"] == {"sent": 0, "dead": 0, "pending": 5}  # no daemon here
    assert sorted(await console.main_ids()) == sorted(canary)

    status, job = await console.api("POST", f"/api/jobs/{job['id']}/continue", {})
    assert status == 202, job
    job = await job_in(console, job["id"], "done")
    assert job["progress"]["replayed"] == 20
    assert sorted(await console.main_ids()) == sorted(set(ids) - set(canary))
    assert await console.dead_ids() == others
    status, _body = await console.api("POST", f"/api/jobs/{job['id']}/continue", {})
    assert status == 409
    actions = [a["action"] for a in await actions_on(console, f"group:{fp}")]
    assert actions == [
        "group_replay_done", "group_replay_continue", "group_replay_canary"
    ]  # fmt: skip


async def test_a_group_replay_stopped_halfway_loses_and_doubles_nothing(console: Console) -> None:
    text = word()
    ids = await kill(console, "acme", 60, text=text)
    fp = (await group_of(console, text))["fingerprint"]
    _, job = await console.api(
        "POST", f"/api/groups/{fp}/replay", {"reason": "r", "canary": 2, "rate": 20}
    )
    await job_in(console, job["id"], "waiting")
    await console.api("POST", f"/api/jobs/{job['id']}/continue", {})

    async def halfway() -> bool:
        return await console.count(console.settings.queue) >= 20

    await wait_for(halfway, timeout=20)
    # Busy while it runs: the DLQ takes one pass at a time.
    status, body = await console.api("POST", f"/api/groups/{fp}/resolve", {"reason": "r"})
    assert status == 409, body
    status, job = await console.api("POST", f"/api/jobs/{job['id']}/stop", {"reason": "enough"})
    assert status == 200 and job["phase"] == "stopped" and job["stopped_by"] == "api:runbook"
    main, dead = await console.main_ids(), await console.dead_ids()
    assert 20 <= len(main) < 60
    assert sorted(main + dead) == sorted(ids)  # every one once: none lost, none doubled


async def test_a_group_replay_whose_connection_is_cut_loses_and_doubles_nothing(
    vhost: str, database: str, db: asyncpg.Connection[Any]
) -> None:
    proxy = await TcpProxy.before(vhost, "rabbitmq").start()
    settings = console_settings(vhost, database)
    try:
        async with serving(settings, db, via=proxy.route(vhost)) as c:
            text = word()
            ids = await kill(c, "acme", 40, text=text)
            fp = (await group_of(c, text))["fingerprint"]
            _, job = await c.api(
                "POST", f"/api/groups/{fp}/replay", {"reason": "r", "canary": 1, "rate": 20}
            )
            await job_in(c, job["id"], "waiting")
            await c.api("POST", f"/api/jobs/{job['id']}/continue", {})
            await wait_for(lambda: _at_least(c, settings.queue, 10), timeout=20)
            assert proxy.cut() > 0  # the network fails under the pass
            job = await job_in(c, job["id"], "failed", "done")
            assert job["phase"] == "failed" and job["error"]
            main, dead = await c.main_ids(), await c.dead_ids()
            assert 10 <= len(main) < 40
            assert set(main + dead) == set(ids)  # none lost
            assert len(set(main)) == len(main)  # none twice in the main queue
            # At 20/s the pass holds one message: an ack the cut took may leave that one
            # in both queues (the ledger sends it once); never more.
            assert len(main + dead) - len(ids) <= 1
    finally:
        await proxy.close()


async def _at_least(c: Console, queue: str, n: int) -> bool:
    return await c.count(queue) >= n


async def test_a_replay_job_is_refused_for_a_group_with_nothing_dead(console: Console) -> None:
    status, body = await console.api(
        "POST", "/api/groups/0123456789/replay", {"reason": "r", "canary": 3}
    )
    assert status == 404, body
    status, body = await console.api(
        "POST", "/api/groups/0123456789/replay", {"reason": "r", "canary": 0}
    )
    assert status == 422
    status, _ = await console.api("GET", "/api/jobs/nope")
    assert status == 404


# -- with the daemon: what the canary's outcomes say -------------------------------------------


async def test_a_canary_that_dies_again_keeps_the_rest_dead_and_one_that_is_sent_lets_them_go(
    vhost: str, database: str, db: asyncpg.Connection[Any], sandbox: Any
) -> None:
    settings = console_settings(vhost, database, sandbox.url)
    async with running(settings), serving(settings, db) as c:
        ids = [str(uuid.uuid4()) for _ in range(12)]
        for internal_id in ids:  # 1555000...: undeliverable, always (permanent)
            await c.broker.publish(text_message("acme", "15550000001", internal_id=internal_id))

        async def dead_rows() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM wa_dead WHERE state = 'dead' AND internal_id = ANY($1)", ids
            )
            return bool(n == 12)

        await wait_for(dead_rows, timeout=30)
        [fp] = {
            r["fingerprint"]
            for r in await db.fetch(
                "SELECT fingerprint FROM wa_dead WHERE internal_id = ANY($1)", ids
            )
        }
        status, job = await c.api(
            "POST", f"/api/groups/{fp}/replay", {"reason": "try", "canary": 3, "rate": 100}
        )
        assert status == 202, job

        async def canary_dead() -> dict[str, Any] | None:
            _, seen = await c.api("GET", f"/api/jobs/{job['id']}")
            done = seen["canary_outcomes"]["dead"] == 3 and seen["phase"] == "waiting"
            return seen if done else None

        job = await wait_for(canary_dead, timeout=30)
        assert job["phase"] == "waiting"
        assert {o["category"] for o in job["canary"]} == {"permanent"}
        status, job = await c.api(
            "POST", f"/api/jobs/{job['id']}/stop", {"reason": "still failing"}
        )
        assert job["phase"] == "stopped"
        await wait_for(lambda: _at_least(c, settings.dead_letter_queue, 12), timeout=30)
        assert await c.count(settings.queue) == 0
        assert await c.count(settings.dead_letter_queue) == 12  # the rest stayed dead

        sandbox.state.configure(rules=())  # the cause is fixed: every recipient is sent
        await wait_for(dead_rows, timeout=30)  # the canary's new deaths are mirrored
        fp_rows = await db.fetch(
            "SELECT DISTINCT fingerprint FROM wa_dead "
            "WHERE state = 'dead' AND internal_id = ANY($1)",
            ids,
        )
        assert [r["fingerprint"] for r in fp_rows] == [fp]
        status, job = await c.api(
            "POST", f"/api/groups/{fp}/replay", {"reason": "fixed", "canary": 3, "rate": 100}
        )
        assert status == 202, job

        async def canary_sent() -> dict[str, Any] | None:
            _, seen = await c.api("GET", f"/api/jobs/{job['id']}")
            done = seen["canary_outcomes"]["sent"] == 3 and seen["phase"] == "waiting"
            return seen if done else None

        await wait_for(canary_sent, timeout=30)
        status, _ = await c.api("POST", f"/api/jobs/{job['id']}/continue", {})
        assert status == 202
        await job_in(c, job["id"], "done")

        async def all_sent() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM wa_messages WHERE status = 'sent' AND internal_id = ANY($1)",
                ids,
            )
            return bool(n == 12)

        await wait_for(all_sent, timeout=30)
        sent = [r for r in sandbox.state.requests() if r["outcome"] == "sent"]
        assert len(sent) == 12  # each once
        assert await c.count(settings.dead_letter_queue) == 0
