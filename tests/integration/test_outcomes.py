"""SPEC §4 outcomes, seen from outside: the sandbox's request log and the broker's queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import aio_pika
import orjson
import pytest

from wa_consumer.topology import Topology, declare

from .harness import broker_for, make_settings, running, text_message, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, params=["aiohttp", "pyreqwest"])
def _graph_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every outcome through each Cloud API transport (make_settings reads WA_GRAPH_TRANSPORT)."""
    monkeypatch.setenv("WA_GRAPH_TRANSPORT", request.param)


def requests_to(sandbox: Any, to: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.requests() if (r["body"] or {}).get("to") == to]


async def sent_to(sandbox: Any, to: str, n: int = 1) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]]:
        sent = [r for r in requests_to(sandbox, to) if r["outcome"] == "sent"]
        return sent if len(sent) >= n else []

    return await wait_for(check)


async def test_retry_then_success_follows_the_ladder(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "15550010001"))
        await sent_to(sandbox, "15550010001")
        assert await broker.count(settings.dead_letter_queue) == 0
    attempts = requests_to(sandbox, "15550010001")
    assert [r["outcome"] for r in attempts] == ["failed", "failed", "sent"]
    gaps = [b["at"] - a["at"] for a, b in pairwise(attempts)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps  # step 1, then step 2 of [0.2, 0.4]


async def test_retries_exhausted_go_to_dlq_with_headers_and_body_unchanged(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    message = text_message("acme", "15550090001", "always failing")
    raw = orjson.dumps(message)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(message)
        [dead] = await broker.dead(1)
    assert dead.body == raw
    h = dead.headers
    assert h["x-error-category"] == "retries_exhausted"
    assert h["x-error-code"] == "131016"
    assert h["x-retry-count"] == 2
    assert h["x-tenant-id"] == "acme"
    assert h["x-original-routing-key"] == f"{settings.routing_key_prefix}.acme"
    assert "131016" in h["x-error-message"] or "unavailable" in h["x-error-message"].lower()
    assert h["x-first-failed-at"] <= h["x-failed-at"]
    assert not [k for k in h if k.startswith(("x-death", "x-first-death", "x-last-death"))]
    assert dead.message_id == message["metadata"]["internalId"]
    assert len(requests_to(sandbox, "15550090001")) == 3


@pytest.mark.parametrize(
    ("to", "category", "code"),
    [("15550000001", "permanent", "131026"), ("15550020001", "account", "131031")],
)
async def test_non_retryable_error_is_dead_after_one_attempt(
    vhost, sandbox, to: str, category: str, code: str
) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", to))
        [dead] = await broker.dead(1)
    assert dead.headers["x-error-category"] == category
    assert dead.headers["x-error-code"] == code
    assert dead.headers["x-retry-count"] == 0
    assert len(requests_to(sandbox, to)) == 1


async def test_rate_limit_waits_at_least_the_minimum_delay(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url, rate_limit_min_delay=0.3)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "15550030001"))
        await sent_to(sandbox, "15550030001")
    first, second = requests_to(sandbox, "15550030001")
    assert first["code"] == 130429
    assert second["at"] - first["at"] >= 0.4  # the smallest ladder step >= 0.3 s


async def test_rotated_token_is_refetched_and_the_message_delivered(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "27820000001"))
        await sent_to(sandbox, "27820000001")
        old = sandbox.state.token("acme")
        sandbox.state.rotate("acme")
        await broker.publish(text_message("acme", "27820000002"))
        [sent] = await sent_to(sandbox, "27820000002")
    attempts = requests_to(sandbox, "27820000002")
    assert [r["code"] for r in attempts] == [190, None]
    assert attempts[0]["token"] == old
    assert sent["token"] == sandbox.state.token("acme") != old
    assert await _dead_count(settings, vhost) == 0


async def _dead_count(settings: Any, vhost: str) -> int:
    async with broker_for(settings) as broker:
        return await broker.count(settings.dead_letter_queue)


@pytest.mark.parametrize(
    ("tenant", "number", "category"),
    [
        ("nobody", None, "tenant_unknown"),
        ("initech", None, "tenant_suspended"),
        ("acme", "107650492331811", "tenant_mismatch"),  # globex's number
    ],
)
async def test_tenant_problems_are_dead_with_their_category(
    vhost, sandbox, tenant: str, number: str | None, category: str
) -> None:
    settings = make_settings(vhost, sandbox.url)
    meta = {"phoneNumberId": number} if number else {}
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message(tenant, "27820000003", **meta))
        [dead] = await broker.dead(1)
    assert dead.headers["x-error-category"] == category
    assert dead.headers["x-tenant-id"] == tenant
    assert sandbox.state.requests() == []


async def test_expired_message_is_dead_without_a_call(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "27820000004", expiresAt=past))
        [dead] = await broker.dead(1)
    assert dead.headers["x-error-category"] == "expired"
    assert "expiresAt" in dead.headers["x-error-message"]
    assert sandbox.state.requests() == []


POISON = [
    (b"\xff\xfe not utf-8", "UTF-8"),
    (b"{not json", "JSON"),
    (b"[1, 2, 3]", "object"),
    (orjson.dumps({"metadata": {"internalId": "x"}, "wabaPayload": {}}), "tenantId"),
    (
        orjson.dumps(
            {
                **text_message("acme", "1"),
                "wabaPayload": {
                    "messaging_product": "whatsapp",
                    "to": "1",
                    "type": "fax",
                    "fax": {},
                },
            }
        ),
        "fax",
    ),
    (orjson.dumps(text_message("acme", "27820000005", "x" * 4097)), "text.body"),
    (orjson.dumps(text_message("acme", "1", "x" * 300_000)), "bytes"),
]


async def test_each_poison_input_is_dead_invalid_and_the_next_message_still_goes(
    vhost, sandbox
) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        for body, _ in POISON:
            await broker.publish_raw(body)
        await broker.publish(text_message("acme", "27820000006"))
        dead = await broker.dead(len(POISON))
        await sent_to(sandbox, "27820000006")
    by_body = {d.body: d for d in dead}
    for body, hint in POISON:
        d = by_body[body]  # body unchanged, byte for byte
        assert d.headers["x-error-category"] == "invalid"
        assert hint.lower() in d.headers["x-error-message"].lower(), d.headers["x-error-message"]
        assert len(d.headers["x-error-message"].encode()) <= settings.error_text_bytes
    assert len(sandbox.state.requests()) == 1


async def test_two_tenants_never_mix_tokens(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        for i in range(20):
            await broker.publish(text_message("acme" if i % 2 else "globex", f"2782100{i:04d}"))
        await wait_for(lambda: _n_sent(sandbox, 20))
    tokens = {"acme": sandbox.state.token("acme"), "globex": sandbox.state.token("globex")}
    numbers = {"acme": "106540352242922", "globex": "107650492331811"}
    for r in sandbox.state.requests():
        i = int(r["body"]["to"][-4:])
        tenant = "acme" if i % 2 else "globex"
        assert r["token"] == tokens[tenant]
        assert r["phone_number_id"] == numbers[tenant]


async def _n_sent(sandbox: Any, n: int) -> bool:
    return sum(r["outcome"] == "sent" for r in sandbox.state.requests()) >= n


@pytest.mark.parametrize(("earlier", "dead"), [(0, False), (2, True)])
async def test_redelivery_with_no_outcome_is_bounded_as_crash_loop(
    vhost, sandbox, earlier: int, dead: bool
) -> None:
    settings = make_settings(vhost, sandbox.url, max_deliveries=3)
    message = text_message("acme", "27820000007")
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        await broker.publish_raw(orjson.dumps(message), headers={"x-deliveries": earlier})
        # A consumer that dies holding the message: the broker redelivers it.
        channel = await broker.connection.channel()
        queue = await channel.declare_queue(settings.queue, passive=True)
        assert await queue.get(no_ack=False) is not None
        await channel.close()
        async with running(settings):
            if dead:
                [d] = await broker.dead(1)
                assert d.headers["x-error-category"] == "crash_loop"
                assert d.body == orjson.dumps(message)
            else:
                await sent_to(sandbox, "27820000007")
    assert len(sandbox.state.requests()) == (0 if dead else 1)


async def test_unreadable_body_is_dead_with_the_ids_of_its_envelope(vhost, sandbox) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        await broker.publish_raw(b"{not json", tenant="globex", message_id="id-42")
        [dead] = await broker.dead(1)
    assert dead.headers["x-tenant-id"] == "globex"
    assert dead.message_id == "id-42"


async def test_unreadable_body_straight_into_the_queue_is_dead_invalid(vhost, sandbox) -> None:
    """Published through the default exchange: a routing key with no tenant in it."""
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        channel = await broker.connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"{not json"), routing_key=settings.queue, mandatory=True
        )
        await channel.close()
        [dead] = await broker.dead(1)
    assert dead.headers["x-error-category"] == "invalid"
    assert "x-tenant-id" not in dead.headers


async def test_retry_that_cannot_be_republished_stays_with_the_broker(vhost, sandbox) -> None:
    """The wait queue is gone: the copy is unroutable, so the original is never acked; it
    comes back, and after the delivery bound it is dead, body unchanged, not lost."""
    settings = make_settings(vhost, sandbox.url, max_deliveries=3)
    message = text_message("acme", "15550090002")  # always fails, transient
    async with running(settings), broker_for(settings) as broker:
        channel = await broker.connection.channel()
        for queue in Topology.from_settings(settings).retry_queues.values():
            await channel.queue_delete(queue)
        await channel.close()
        await broker.publish(message)
        [dead] = await broker.dead(1)
    assert dead.body == orjson.dumps(message)
    assert dead.headers["x-error-category"] == "crash_loop"
    assert await _count(settings, settings.queue) == 0


async def _count(settings: Any, queue: str) -> int:
    async with broker_for(settings) as broker:
        return await broker.count(queue)
