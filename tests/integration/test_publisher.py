"""The publisher library against the real RabbitMQ: what a producing service sees (SPEC §2, §3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from yarl import URL

from wa_consumer.errors import InvalidMessage
from wa_consumer.message import parse
from wa_consumer.publisher import (
    NotConfirmed,
    Publisher,
    Unroutable,
    text_message,
)
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .harness import Broker, broker_for, make_settings, wait_for
from .proxy import TcpProxy

pytestmark = pytest.mark.integration

NO_SANDBOX = "http://127.0.0.1:9"  # no daemon runs here: nothing calls it


@asynccontextmanager
async def declared(vhost: str) -> AsyncIterator[tuple[Settings, Broker, Publisher]]:
    """Unique names, the topology declared, a test broker view and a publisher for them."""
    settings = make_settings(vhost, NO_SANDBOX)
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        async with Publisher.connect(
            settings.amqp_url,
            exchange=settings.exchange,
            routing_key_prefix=settings.routing_key_prefix,
        ) as publisher:
            yield settings, broker, publisher


async def test_invalid_message_raises_before_anything_is_published(vhost) -> None:
    async with declared(vhost) as (settings, broker, publisher):
        too_long = text_message("acme", "27821234567", "x" * 4097)
        with pytest.raises(InvalidMessage) as info:
            await publisher.publish(too_long)
        assert info.value.where == "wabaPayload.text.body"
        with pytest.raises(InvalidMessage):
            await publisher.send_media("acme", "278", "image", media_id="1", link="https://x.test")
        with pytest.raises(InvalidMessage):
            await publisher.send_text("acme", "", "no recipient")
        with pytest.raises(InvalidMessage, match="caption"):  # Meta refuses it on audio
            await publisher.send_media("acme", "278", "audio", media_id="1", caption="listen")

        assert await broker.count(settings.queue) == 0


async def test_unroutable_message_raises_unroutable_naming_the_topology(vhost) -> None:
    async with declared(vhost) as (settings, broker, _):
        # The exchange exists, but no queue is bound for this prefix.
        stray = Publisher(broker.connection, exchange=settings.exchange, routing_key_prefix="x.y")
        async with stray:
            with pytest.raises(Unroutable) as info:
                await stray.send_text("acme", "27821234567", "lost", internal_id="u-1")
        assert info.value.internal_id == "u-1"
        assert "x.y.acme" in str(info.value)
        assert "topology" in str(info.value)
        assert await broker.count(settings.queue) == 0


async def test_missing_exchange_raises_unroutable(vhost) -> None:
    settings = make_settings(vhost, NO_SANDBOX)  # nothing declared
    async with Publisher.connect(settings.amqp_url, exchange=settings.exchange) as publisher:
        with pytest.raises(Unroutable) as info:
            await publisher.send_text("acme", "27821234567", "hello")
    assert settings.exchange in str(info.value)
    assert "topology" in str(info.value)


async def test_publish_returns_once_confirmed_with_the_contract_properties(vhost) -> None:
    async with declared(vhost) as (settings, broker, publisher):
        message = text_message("acme", "27821234567", "Your order is ready", internal_id="c-1")

        outbound = await publisher.publish(message)

        # No waiting: the confirm means the broker has it queued.
        assert await broker.count(settings.queue) == 1
        [queued] = await broker.drain(settings.queue)
    assert outbound.internal_id == "c-1"
    assert orjson.loads(queued.body) == message
    assert queued.message_id == "c-1"
    assert queued.delivery_mode == 2  # persistent
    assert queued.content_type == "application/json"
    assert queued.routing_key == f"{settings.routing_key_prefix}.acme"
    assert queued.exchange == settings.exchange
    assert queued.timestamp is not None


async def test_helpers_publish_valid_messages_that_land_in_the_queue(vhost) -> None:
    async with declared(vhost) as (settings, broker, publisher):
        ids = [
            await publisher.send_text(
                "acme", "27821234567", "hi", reply_to="wamid.X", callback_data="order-17"
            ),
            await publisher.send_template(
                "acme",
                "27821234567",
                "order_ready",
                "en_US",
                [{"type": "body", "parameters": [{"type": "text", "text": "A-17"}]}],
                expires_at="2030-01-01T00:00:00Z",
            ),
            await publisher.send_media(
                "globex", "27821234567", "document", link="https://x.test/a.pdf", filename="a.pdf"
            ),
            await publisher.send_media("acme", "27821234567", "audio", media_id="123"),
            await publisher.send_media(
                "acme", "27821234567", "image", media_id="456", caption="the receipt"
            ),
        ]
        queued = await broker.drain(settings.queue)
    assert [m.message_id for m in queued] == ids
    parsed = [parse(m.body) for m in queued]
    assert [p.type for p in parsed] == ["text", "template", "document", "audio", "image"]
    assert [p.internal_id for p in parsed] == ids
    assert queued[2].routing_key == f"{settings.routing_key_prefix}.globex"
    text = orjson.loads(queued[0].body)["wabaPayload"]
    assert text["context"] == {"message_id": "wamid.X"}
    assert text["biz_opaque_callback_data"] == "order-17"
    assert parsed[1].expires_at is not None


async def test_publish_many_of_1000_all_confirmed_and_present(vhost) -> None:
    async with declared(vhost) as (settings, broker, publisher):
        messages = [text_message("acme", f"2782{i:07d}", f"m{i}") for i in range(1000)]

        results = await publisher.publish_many(messages)

        assert await broker.count(settings.queue) == 1000
        queued = await broker.drain(settings.queue)
    expected = [m["metadata"]["internalId"] for m in messages]
    assert [r.internal_id for r in results] == expected  # one result each, in order
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    assert sorted(m.message_id or "" for m in queued) == sorted(expected)


async def test_publish_many_reports_an_invalid_message_and_publishes_the_rest(vhost) -> None:
    async with declared(vhost) as (settings, broker, publisher):
        messages = [text_message("acme", "278", f"m{i}") for i in range(5)]
        messages[2]["wabaPayload"]["text"]["body"] = ""

        results = await publisher.publish_many(messages, concurrency=2)

        assert await broker.count(settings.queue) == 4
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert isinstance(results[2].error, InvalidMessage)
    assert results[2].internal_id == messages[2]["metadata"]["internalId"]


async def test_connection_lost_mid_batch_is_reported_per_message_not_swallowed(vhost) -> None:
    proxy = await TcpProxy("127.0.0.1", URL(vhost).port or 5672).start()
    try:
        async with declared(vhost) as (settings, broker, _):
            via_proxy = str(URL(settings.amqp_url).with_port(proxy.port))
            async with Publisher.connect(
                via_proxy,
                exchange=settings.exchange,
                routing_key_prefix=settings.routing_key_prefix,
                confirm_timeout=5,
            ) as publisher:
                messages = [text_message("acme", "278", f"m{i}") for i in range(3000)]
                batch = asyncio.create_task(publisher.publish_many(messages))
                await wait_for(lambda: _at_least(broker, settings.queue, 200), interval=0.01)
                assert not batch.done(), "the batch ended before the cut: make it larger"
                proxy.cut()
                results = await batch

                # The robust connection comes back by itself, and publishing works again.
                again = await publisher.send_text("acme", "278", "after", internal_id="again")

            queued = {m.message_id for m in await broker.drain(settings.queue)}
    finally:
        await proxy.close()
    assert len(results) == len(messages)
    failed = [r for r in results if not r.ok]
    # Those in flight at the cut fail (at most the batch's concurrency, 500); the rest
    # waited for the reconnection and went through.
    assert 0 < len(failed) <= 500, len(failed)
    assert {type(r.error) for r in failed} == {NotConfirmed}, failed[0].error
    confirmed = {r.internal_id for r in results if r.ok}
    assert confirmed <= queued  # a confirmed message is never lost
    assert again in queued


async def _at_least(broker: Broker, queue: str, n: int) -> bool:
    return await broker.count(queue) >= n
