"""The status consumer inside ``wa-consumer run``: webhook bodies on ``inbound-webhooks``
reach the ledger, customers' messages reach ``inbound-messages``, nothing is lost while the
ledger is away (SPEC §13)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from yarl import URL

from wa_consumer.settings import Settings
from wa_consumer.webhooks.receiver import WebhookReceiver

from .harness import broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

T0 = 1_765_000_000


def webhook(*statuses: dict[str, Any], messages: list[Any] | None = None) -> bytes:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": "106540352242922"},
        "statuses": list(statuses),
    }
    if messages is not None:
        value["messages"] = messages
    return orjson.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": "1", "changes": [{"field": "messages", "value": value}]}
    ]})  # fmt: skip


def status(wamid: str, name: str, at: int = T0, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": name, "timestamp": str(at), "recipient_id": "1555", **extra}


async def post(settings: Settings, *bodies: bytes) -> None:
    """As the receiver does: raw bodies to the webhook exchange, confirmed."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(settings.webhook_exchange)
        for body in bodies:
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=settings.webhook_routing_key,
                mandatory=True,
            )
    finally:
        await connection.close()


async def query(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def wamid_of(database: str, internal_id: str) -> str | None:
    rows = await query(
        database, "SELECT wamid FROM wa_messages WHERE internal_id = $1 AND status = 'sent'",
        internal_id,
    )  # fmt: skip
    return rows[0]["wamid"] if rows else None


async def delivery(database: str, wamid: str) -> asyncpg.Record | None:
    rows = await query(database, "SELECT * FROM wa_deliveries WHERE wamid = $1", wamid)
    return rows[0] if rows else None


def sample(daemon: Any, name: str, **labels: str) -> float:
    value = daemon.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


async def test_statuses_of_a_sent_message_reach_the_ledger(vhost, sandbox, database) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    message = text_message("acme", "27820000001")
    internal_id = message["metadata"]["internalId"]
    async with running(settings) as daemon, broker_for(settings) as broker:
        await broker.publish(message)
        wamid = await wait_for(lambda: wamid_of(database, internal_id))
        pricing = {"billable": True, "pricing_model": "PMP", "category": "utility"}
        await post(
            settings,
            webhook(status(wamid, "sent", T0, pricing=pricing)),
            webhook(status(wamid, "read", T0 + 5), status(wamid, "delivered", T0 + 2)),
            webhook(status(wamid, "read", T0 + 5)),  # Meta sends again: changes nothing
        )

        async def read_() -> bool:
            row = await delivery(database, wamid)
            return row is not None and row["status"] == "read"

        await wait_for(read_)
        await wait_for(lambda: _zero(broker.count(settings.webhook_queue)))
        assert sample(daemon, "wa_statuses_total", status="read") == 1
        assert sample(daemon, "wa_statuses_total", status="delivered") == 0  # read came with it
        assert sample(daemon, "wa_delivery_latency_seconds_count") == 1
    row = await delivery(database, wamid)
    assert row is not None
    assert (row["tenant_id"], row["internal_id"]) == ("acme", internal_id)
    assert (row["pricing_billable"], row["pricing_category"]) == (True, "utility")
    assert row["delivered_at"] is not None and row["read_at"] is not None


async def _zero(count: Any) -> bool:
    return await count == 0


async def test_a_failure_after_acceptance_counts_like_a_send_failure(
    vhost, sandbox, database
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    message = text_message("acme", "27820000002")
    async with running(settings) as daemon, broker_for(settings) as broker:
        await broker.publish(message)
        wamid = await wait_for(lambda: wamid_of(database, message["metadata"]["internalId"]))
        error = {"code": 131048, "title": "Spam rate limit hit"}
        await post(settings, webhook(status(wamid, "failed", T0, errors=[error])))
        failed = {"category": "account", "code": "131048"}
        await wait_for(lambda: _true(sample(daemon, "wa_failed_after_accept_total", **failed) == 1))
        assert sample(daemon, "wa_alerts_total", alert="account") == 1  # an operator must act


async def _true(value: bool) -> bool:
    return value


async def test_customers_messages_are_forwarded_and_unreadable_bodies_kept_with_a_reason(
    vhost, sandbox, database
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    incoming = [{"from": "2782", "id": "wamid.IN", "type": "text", "text": {"body": "hi"}}]
    async with running(settings), broker_for(settings) as broker:
        await post(settings, webhook(messages=incoming), b"{not json")
        await wait_for(lambda: _ge(broker.count(settings.inbound_messages_queue), 1))
        await wait_for(lambda: _ge(broker.count(settings.webhook_failed_queue), 1))
        [forwarded] = await broker.drain(settings.inbound_messages_queue)
        [failed] = await broker.drain(settings.webhook_failed_queue)
    assert orjson.loads(forwarded.body)["messages"] == incoming
    assert forwarded.routing_key == f"{settings.inbound_routing_key}.106540352242922"
    assert failed.body == b"{not json"
    assert "not JSON" in str((failed.headers or {})["x-error-message"])


async def test_customers_messages_are_dropped_and_counted_when_turned_off(
    vhost, sandbox, database
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database, inbound_messages=False)
    incoming = [{"from": "2782", "id": "wamid.IN2", "type": "text", "text": {"body": "hi"}}]
    async with running(settings) as daemon, broker_for(settings) as broker:
        await post(settings, webhook(messages=incoming))
        await wait_for(
            lambda: _true(sample(daemon, "wa_inbound_messages_total", outcome="dropped") == 1)
        )
        assert await broker.count(settings.inbound_messages_queue) == 0


async def _ge(count: Any, n: int) -> bool:
    return await count >= n


async def test_statuses_wait_in_the_queue_while_the_ledger_is_away(
    vhost, sandbox, database
) -> None:
    url = URL(database)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    settings = make_settings(vhost, sandbox.url, database_url=str(url.with_port(proxy.port)))
    wamids = [f"wamid.{uuid.uuid4().hex}" for _ in range(50)]
    try:
        async with running(settings), broker_for(settings) as broker:
            proxy.down()
            await post(settings, *(webhook(status(w, "delivered")) for w in wamids))
            await asyncio.sleep(1.0)  # a window in which a lost status would be acked
            assert await delivery(database, wamids[0]) is None
            await proxy.accept()

            async def all_there() -> bool:
                rows = await query(
                    database, "SELECT count(*) FROM wa_deliveries WHERE wamid = ANY($1)", wamids
                )
                return bool(rows[0][0] == len(wamids))

            await wait_for(all_there, timeout=30)
            await wait_for(lambda: _zero(broker.count(settings.webhook_queue)))
    finally:
        await proxy.close()


async def test_an_ambiguous_send_is_reconciled_by_its_status_and_not_sent_again(
    vhost, sandbox, database
) -> None:
    """Every answer comes after the daemon's timeout, but Meta (the sandbox) accepted the
    send and its `sent` status arrives: the retry is then a duplicate, not a second message."""
    secret = "reconcile-secret"
    settings = make_settings(
        vhost, sandbox.url, database_url=database, webhook_app_secret=secret,
        http_timeout_seconds=1.0, retry_delays=[1.5, 3],
    )  # fmt: skip
    receiver = WebhookReceiver(settings)
    port = await receiver.start(host="127.0.0.1", port=0)
    sandbox.state.configure(
        latency={"ms": 1500},
        webhooks={"url": f"http://127.0.0.1:{port}/webhook", "app_secret": secret},
    )
    message = text_message("acme", "27820000077")
    internal_id = message["metadata"]["internalId"]
    try:
        async with running(settings) as daemon, broker_for(settings) as broker:
            await broker.publish(message)
            await wait_for(lambda: _true(sample(daemon, "wa_duplicates_total") == 1), timeout=20)
            assert sample(daemon, "wa_ambiguous_sends_total") == 1
    finally:
        await receiver.close()
    accepted = [r for r in sandbox.state.requests() if r["body"]["to"] == "27820000077"]
    assert len(accepted) == 1  # the customer got one message
    [row] = await query(
        database, "SELECT status, wamid FROM wa_messages WHERE internal_id = $1", internal_id
    )
    assert row["status"] == "sent" and row["wamid"] is not None


async def test_statuses_applied_through_broker_cuts_are_applied_once(
    vhost, sandbox, database
) -> None:
    """Bodies whose acks a cut took come back: applied again, they change nothing twice."""
    proxy = TcpProxy.before(vhost, "rabbitmq")
    await proxy.start()
    settings = make_settings(
        proxy.route(vhost), sandbox.url, database_url=database, statuses_prefetch=50
    )
    direct = settings.model_copy(update={"amqp_url": vhost})
    wamids = [f"wamid.{uuid.uuid4().hex}" for _ in range(4000)]
    try:
        async with running(settings) as daemon, broker_for(direct) as broker:
            posting = asyncio.create_task(
                post(direct, *(webhook(status(w, "delivered")) for w in wamids))
            )
            cuts_while_posting = 0
            for _ in range(3):  # each takes the daemon's connection, once it is back
                await asyncio.sleep(0.2)
                linked = proxy.accepted
                assert proxy.cut() >= 1
                cuts_while_posting += not posting.done()
                await wait_for(lambda n=linked: _true(proxy.accepted > n))
            await posting
            assert cuts_while_posting >= 1  # statuses were being applied when it cut

            async def all_there() -> bool:
                rows = await query(
                    database, "SELECT count(*) FROM wa_deliveries WHERE wamid = ANY($1)", wamids
                )
                return bool(rows[0][0] == len(wamids))

            await wait_for(all_there, timeout=60)
            await wait_for(lambda: _zero(broker.count(settings.webhook_queue)), timeout=30)
            assert sample(daemon, "wa_statuses_total", status="delivered") == len(wamids)
    finally:
        await proxy.close()


async def test_customers_messages_wait_while_their_queue_is_gone_then_are_forwarded(
    vhost, sandbox, database
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    incoming = [{"from": "2782", "id": "wamid.IN3", "type": "text", "text": {"body": "hi"}}]
    async with running(settings) as daemon, broker_for(settings) as broker:
        channel = await broker.connection.channel()
        await channel.queue_delete(settings.inbound_messages_queue)  # returned, unroutable
        await post(settings, webhook(messages=incoming))
        await asyncio.sleep(1.5)  # a window in which a dropped or spun body would show
        assert sample(daemon, "wa_inbound_messages_total", outcome="forwarded") == 0
        queue = await channel.declare_queue(settings.inbound_messages_queue, durable=True)
        await queue.bind(settings.webhook_exchange, f"{settings.inbound_routing_key}.#")
        await wait_for(lambda: _ge(broker.count(settings.inbound_messages_queue), 1), timeout=15)
        [forwarded] = await broker.drain(settings.inbound_messages_queue)
        await channel.close()
    assert orjson.loads(forwarded.body)["messages"] == incoming
    assert forwarded.message_id == "wamid.IN3"
    assert (forwarded.headers or {})["x-phone-number-id"] == "106540352242922"
