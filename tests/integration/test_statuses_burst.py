"""10,000 webhooks through the receiver and the status consumer: every one answered 200 is in
the ledger, counted from outside (the HTTP answers, the queue, the table)."""

from __future__ import annotations

import uuid
from collections import Counter

import asyncpg
import orjson
import pytest

from wa_consumer.ledger.migrate import migrate
from wa_consumer.webhooks.receiver import WebhookReceiver

from .harness import broker_for, make_settings, running, wait_for
from .webhook_client import burst

pytestmark = pytest.mark.integration

N = 10_000
SECRET = "burst-app-secret"
T0 = 1_765_000_000


def body(wamid: str) -> bytes:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1555", "phone_number_id": "106540352242922"},
        "statuses": [
            {"id": wamid, "status": "delivered", "timestamp": str(T0), "recipient_id": "1555"}
        ],
    }
    return orjson.dumps(
        {"object": "whatsapp_business_account",
         "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    )  # fmt: skip


async def sent_messages(database: str, tenant: str, wamids: list[str]) -> None:
    """N messages the ledger records as sent (as the daemon would have left them)."""
    connection = await asyncpg.connect(database)
    try:
        await migrate(connection)
        await connection.execute(
            """
            WITH w AS (SELECT * FROM unnest($2::text[]) WITH ORDINALITY AS t (wamid, n))
            , m AS (
                INSERT INTO wa_messages (tenant_id, internal_id, status, wamid, sent_at)
                SELECT $1, 'm-' || n, 'sent', wamid, now() FROM w
            )
            INSERT INTO wa_deliveries (wamid, tenant_id, internal_id, status, accepted_at)
            SELECT wamid, $1, 'm-' || n, 'accepted', now() FROM w
            """,
            tenant,
            wamids,
        )
    finally:
        await connection.close()


async def delivered(database: str, tenant: str) -> int:
    connection = await asyncpg.connect(database)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM wa_deliveries WHERE tenant_id = $1 AND status = 'delivered'",
                tenant,
            )
        )
    finally:
        await connection.close()


async def test_a_burst_of_10000_webhooks_loses_nothing(vhost, sandbox, database) -> None:
    tenant = f"burst-{uuid.uuid4().hex[:8]}"
    wamids = [f"wamid.{tenant}.{n}" for n in range(N)]
    await sent_messages(database, tenant, wamids)
    settings = make_settings(
        vhost, sandbox.url, database_url=database, webhook_app_secret=SECRET, webhook_port=0
    )
    receiver = WebhookReceiver(settings)
    port = await receiver.start(host="127.0.0.1")
    try:
        async with running(settings) as daemon, broker_for(settings) as broker:
            answers = await burst(
                f"http://127.0.0.1:{port}/webhook",
                [body(w) for w in wamids],
                SECRET.encode(),
                timeout=120,
            )
            assert Counter(answers) == {200: N}

            async def all_applied() -> bool:
                return await delivered(database, tenant) == N

            await wait_for(all_applied, timeout=120, interval=0.5)

            async def queue_empty() -> bool:
                return await broker.count(settings.webhook_queue) == 0

            await wait_for(queue_empty)
            assert await broker.count(settings.webhook_failed_queue) == 0
            transitions = daemon.metrics.registry.get_sample_value(
                "wa_statuses_total", {"status": "delivered"}
            )
            assert transitions == N
    finally:
        await receiver.close()
