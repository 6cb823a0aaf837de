"""The sandbox answers like Meta's Cloud API and the tenant service, over real HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from wa_consumer.sandbox import (
    FailureRule,
    RunningSandbox,
    SandboxClient,
    SandboxConfig,
    load_config,
    start_sandbox,
)

ACME_NUMBER = "106540352242922"
GLOBEX_NUMBER = "107650492331811"


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with await start_sandbox() as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def admin(sandbox: RunningSandbox) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(sandbox.url) as client:
        yield client


def text(to: str, **extra: Any) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": {"body": "hi"},
    } | extra


async def send(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    to: str = "27821234567",
    *,
    token: str | None = None,
    number: str = ACME_NUMBER,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """POST one message; (HTTP status, parsed JSON or raw text)."""
    token = sandbox.state.token("acme") if token is None else token
    data = raw if raw is not None else json.dumps(text(to) if body is None else body).encode()
    async with http.post(
        f"{sandbox.url}/v23.0/{number}/messages",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as response:
        payload = await response.read()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload.decode()


async def credentials(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, tenant: str, token: str | None = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{sandbox.url}/tenants/{tenant}/whatsapp-credentials"
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


def assert_meta_error(payload: Any, code: int) -> dict[str, Any]:
    error = payload["error"]
    assert error["code"] == code
    assert error["type"] in {"OAuthException", "GraphMethodException"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert len(error["fbtrace_id"]) >= 20
    return dict(error)


# -- the Cloud API ------------------------------------------------------------------


async def test_success_answers_contacts_and_a_unique_wamid(sandbox, http) -> None:
    first = await send(http, sandbox, "+27 82 123-4567")
    second = await send(http, sandbox, "27821234567")

    assert first[0] == 200
    assert first[1]["messaging_product"] == "whatsapp"
    assert first[1]["contacts"] == [{"input": "+27 82 123-4567", "wa_id": "27821234567"}]
    [message] = first[1]["messages"]
    assert message["id"].startswith("wamid.")
    assert "message_status" not in message
    assert message["id"] != second[1]["messages"][0]["id"]


async def test_template_is_accepted_with_message_status(sandbox, http) -> None:
    body = {
        "messaging_product": "whatsapp",
        "to": "27821234567",
        "type": "template",
        "template": {"name": "hello_world", "language": {"code": "en_US"}},
    }
    status, payload = await send(http, sandbox, body=body)
    assert status == 200
    assert payload["messages"][0]["message_status"] == "accepted"


async def test_read_receipt_answers_success(sandbox, http) -> None:
    body = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
    assert await send(http, sandbox, body=body) == (200, {"success": True})


async def test_unknown_token_is_401_code_190(sandbox, http) -> None:
    status, payload = await send(http, sandbox, token="not-a-token")
    assert status == 401
    error = assert_meta_error(payload, 190)
    assert error["type"] == "OAuthException"
    assert "error_subcode" not in error


async def test_number_of_another_tenant_is_code_100_subcode_33(sandbox, http) -> None:
    status, payload = await send(http, sandbox, number=GLOBEX_NUMBER)
    assert status == 400
    error = assert_meta_error(payload, 100)
    assert error["error_subcode"] == 33
    assert GLOBEX_NUMBER in error["message"]


async def test_body_not_json_is_code_100(sandbox, http) -> None:
    status, payload = await send(http, sandbox, raw=b"<not json>")
    assert status == 400
    assert_meta_error(payload, 100)


async def test_missing_recipient_is_code_100(sandbox, http) -> None:
    status, payload = await send(http, sandbox, body={"messaging_product": "whatsapp"})
    assert status == 400
    assert "to" in assert_meta_error(payload, 100)["message"]


# -- token rotation and the tenant service ----------------------------------------


async def test_rotation_expires_old_token_and_tenant_service_gives_new(
    sandbox, http, admin
) -> None:
    old = sandbox.state.token("acme")

    rotated = await admin.rotate("acme")

    status, payload = await send(http, sandbox, token=old)
    assert status == 401
    assert assert_meta_error(payload, 190)["error_subcode"] == 463
    status, fetched = await credentials(http, sandbox, "acme")
    assert status == 200
    assert fetched == rotated
    assert fetched["accessToken"] != old
    assert (await send(http, sandbox, token=fetched["accessToken"]))[0] == 200


async def test_tenant_service_answers_200_404_403(sandbox, http, admin) -> None:
    status, payload = await credentials(http, sandbox, "acme")
    assert status == 200
    assert payload == {
        "accessToken": sandbox.state.token("acme"),
        "phoneNumberId": ACME_NUMBER,
        "phoneNumberIds": [ACME_NUMBER, "106540352242923"],
    }
    assert (await credentials(http, sandbox, "nobody"))[0] == 404
    assert (await credentials(http, sandbox, "initech"))[0] == 403
    assert (await admin.stats())["credential_fetches"] == {"acme": 1, "nobody": 1, "initech": 1}


async def test_tenant_service_requires_service_token_when_set(sandbox, http) -> None:
    sandbox.state.configure(service_token="s3cret")
    assert (await credentials(http, sandbox, "acme"))[0] == 401
    assert (await credentials(http, sandbox, "acme", token="wrong"))[0] == 401
    assert (await credentials(http, sandbox, "acme", token="s3cret"))[0] == 200


# -- recipient rules ---------------------------------------------------------------


async def test_permanent_rule_fails_every_time(sandbox, http) -> None:
    for _ in range(3):
        status, payload = await send(http, sandbox, "15550001234")
        assert status == 400
        error = assert_meta_error(payload, 131026)
        assert error["message"] == "(#131026) Message Undeliverable"
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert error["error_data"]["details"]


async def test_times_rule_fails_n_times_per_recipient_then_succeeds(sandbox, http) -> None:
    answers = [(await send(http, sandbox, "15550011111"))[0] for _ in range(3)]
    assert answers == [500, 500, 200]
    # Another recipient of the same rule has its own count.
    status, payload = await send(http, sandbox, "15550012222")
    assert status == 500
    assert assert_meta_error(payload, 131000)["is_transient"] is True


async def test_html_rule_answers_a_proxy_502_page_once(sandbox, http) -> None:
    async with http.post(
        f"{sandbox.url}/v23.0/{ACME_NUMBER}/messages",
        json=text("15550051234"),
        headers={"Authorization": f"Bearer {sandbox.state.token('acme')}"},
    ) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "502 Bad Gateway" in await response.text()
    assert (await send(http, sandbox, "15550051234"))[0] == 200


async def test_hang_rule_never_answers(sandbox, http) -> None:
    sandbox.state.configure(rules=[FailureRule(match="^1999", hang=True)])
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{sandbox.url}/v23.0/{ACME_NUMBER}/messages",
            json=text("19990000000"),
            headers={"Authorization": f"Bearer {sandbox.state.token('acme')}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    [logged] = sandbox.state.requests()
    assert logged["outcome"] == "hang"


async def test_random_failure_rate_answers_the_failure_code(sandbox, http) -> None:
    sandbox.state.configure(failure_rate=1.0, failure_code=131016)
    status, payload = await send(http, sandbox)
    assert status == 500
    assert_meta_error(payload, 131016)


# -- throughput, latency, run-time changes ------------------------------------------


async def test_number_over_its_rate_gets_130429(sandbox, http) -> None:
    sandbox.state.configure(number_rates={ACME_NUMBER: 3})
    answers = [await send(http, sandbox) for _ in range(5)]

    assert [status for status, _ in answers] == [200, 200, 200, 400, 400]
    error = assert_meta_error(answers[-1][1], 130429)
    assert error["message"] == "(#130429) Rate limit hit"
    assert error["is_transient"] is True
    assert error["error_data"]["details"] == "Cloud API message throughput has been reached."
    # Another number of the same tenant is not limited.
    assert (await send(http, sandbox, number="106540352242923"))[0] == 200


async def test_latency_delays_every_answer(sandbox, http) -> None:
    sandbox.state.configure(latency={"ms": 150, "jitter_ms": 0})
    started = time.monotonic()
    assert (await send(http, sandbox))[0] == 200
    assert time.monotonic() - started >= 0.15


async def test_config_changes_at_run_time_through_admin(sandbox, http, admin) -> None:
    config = await admin.configure(
        rules=[{"match": "^27", "code": 131047, "times": 1, "note": "window closed once"}]
    )
    assert config["rules"][0]["code"] == 131047
    assert (await send(http, sandbox))[1]["error"]["code"] == 131047
    assert (await send(http, sandbox))[0] == 200
    # Tokens survive a change of tenants that does not name them.
    before = sandbox.state.token("acme")
    await admin.configure(tenants=[{"id": "acme", "phone_number_ids": [ACME_NUMBER]}])
    assert sandbox.state.token("acme") == before
    assert [t["id"] for t in await admin.tenants()] == ["acme"]


async def test_invalid_config_is_refused_with_400(sandbox, http) -> None:
    async with http.post(
        f"{sandbox.url}/_sandbox/config", json={"rules": [{"match": "(", "code": 1}]}
    ) as response:
        assert response.status == 400
        assert "regex" in (await response.json())["error"]
    assert sandbox.state.config.rules == SandboxConfig().rules


# -- the request log and stats ------------------------------------------------------


async def test_requests_log_records_each_request_in_order(sandbox, http, admin) -> None:
    await send(http, sandbox, "27821234567")
    await send(http, sandbox, "15550001234")
    await send(http, sandbox, token="bad")

    logged = await admin.requests()

    assert [r["seq"] for r in logged] == [1, 2, 3]
    first = logged[0]
    assert first["path"] == f"/v23.0/{ACME_NUMBER}/messages"
    assert first["phone_number_id"] == ACME_NUMBER
    assert first["token"] == sandbox.state.token("acme")
    assert first["body"] == text("27821234567")
    assert (first["status"], first["code"], first["outcome"]) == (200, None, "sent")
    assert first["wamid"].startswith("wamid.")
    assert (logged[1]["status"], logged[1]["code"], logged[1]["wamid"]) == (400, 131026, None)
    assert (logged[2]["status"], logged[2]["code"]) == (401, 190)
    assert [r["seq"] for r in await admin.requests(since=2)] == [3]


async def test_stats_count_by_status_code_and_number_and_reset_clears(sandbox, http, admin) -> None:
    await send(http, sandbox)
    await send(http, sandbox, "15550001234")
    stats = await admin.stats()
    assert stats["requests"] == 2
    assert stats["by_status"] == {"200": 1, "400": 1}
    assert stats["by_code"] == {"131026": 1}
    assert stats["by_number"][ACME_NUMBER] == {"requests": 2, "sent": 1, "by_code": {"131026": 1}}

    await admin.reset()

    assert (await admin.stats())["requests"] == 0
    assert await admin.requests() == []


async def test_request_log_can_be_turned_off(sandbox, http) -> None:
    sandbox.state.configure(record_requests=False)
    await send(http, sandbox)
    assert sandbox.state.requests() == []
    assert sandbox.state.stats()["requests"] == 1


async def test_load_config_reads_a_file_then_applies_options(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    path.write_text(json.dumps({"number_rate": 80, "latency": {"ms": 5, "jitter_ms": 2}}))
    config = load_config(path, latency_ms=10, failure_rate=None)
    assert config.number_rate == 80
    assert (config.latency.ms, config.latency.jitter_ms) == (10, 2)
    assert config.failure_rate == 0
