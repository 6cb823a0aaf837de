"""The DLQ commands against the real RabbitMQ and PostgreSQL (SPEC §8): what an operator sees,
and that looking, replaying and purging never lose or reorder a message."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from wa_consumer.dlq import (
    DeadLetterPass,
    DlqError,
    Filter,
    NoLedger,
    PassOptions,
    fingerprint,
    normalise,
    replay,
    stats,
)
from wa_consumer.dlq.sweep import Move
from wa_consumer.ledger.migrate import migrate
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for

pytestmark = pytest.mark.integration

NO_SANDBOX = "http://127.0.0.1:9"  # the DLQ commands never call the Cloud API


# -- helpers -------------------------------------------------------------------------------


def env_for(settings: Settings, database: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name in (
        "amqp_url", "exchange", "dead_letter_exchange", "queue", "dead_letter_queue",
        "webhook_exchange", "webhook_queue", "webhook_failed_queue", "inbound_messages_queue",
    ):  # fmt: skip
        env[f"WA_{name.upper()}"] = getattr(settings, name)
    env["WA_RETRY_QUEUE_PREFIX"] = settings.retry_queue_prefix
    env["WA_QUEUE_TYPE"] = settings.queue_type
    if database is not None:
        env["WA_DATABASE_URL"] = database
    return env


async def dlq(
    settings: Settings, tmp_path: Path, *args: str, database: str | None = None
) -> tuple[int | None, str, str]:
    """``wa-consumer dlq ...`` as an operator runs it (in ``tmp_path``: no stray ``.env``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wa_consumer",
        "dlq",
        *args,
        env=env_for(settings, database),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    return process.returncode, out.decode(), err.decode()


async def dlq_json(settings: Settings, tmp_path: Path, *args: str, **kw: Any) -> Any:
    code, out, err = await dlq(settings, tmp_path, *args, "--json", **kw)
    assert code == 0, err
    return orjson.loads(out)


def dead_headers(
    category: str,
    code: str,
    message: str,
    tenant: str,
    *,
    failed_at: datetime | None = None,
    replays: int = 0,
) -> dict[str, Any]:
    """Headers like those the daemon puts on a dead message."""
    at = (failed_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    headers: dict[str, Any] = {
        "x-retry-count": 0,
        "x-error-category": category,
        "x-error-code": code,
        "x-error-message": message,
        "x-first-failed-at": at,
        "x-failed-at": at,
        "x-original-routing-key": f"outbound.processed.{tenant}",
        "x-tenant-id": tenant,
    }
    if replays:
        headers["x-replay-count"] = replays
    return headers


async def kill(broker: Broker, tenant: str, category: str, code: str, **kw: Any) -> str:
    """Publish one dead-shaped message through the DLX, as the daemon does; returns its id."""
    internal_id = kw.pop("internal_id", None) or str(uuid.uuid4())
    body = orjson.dumps(text_message(tenant, kw.pop("to", "27820001234"), internal_id=internal_id))
    message = kw.pop("message", f"({code}) failed for {internal_id}")
    await bury(broker, body, dead_headers(category, code, message, tenant, **kw), internal_id)
    return internal_id


async def bury(broker: Broker, body: bytes, headers: dict[str, Any], message_id: str) -> None:
    """Publish ``body`` with ``headers`` straight into the DLQ (through the DLX)."""
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(broker.settings.dead_letter_exchange)
        await exchange.publish(
            aio_pika.Message(
                body,
                headers=headers,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
            ),
            routing_key=broker.settings.dead_routing_key,
            mandatory=True,
        )
    finally:
        await channel.close()


def id_of(message: AbstractIncomingMessage) -> str:
    """The body's internalId, or the message_id of a body that is not JSON."""
    try:
        return str(orjson.loads(message.body)["metadata"]["internalId"])
    except orjson.JSONDecodeError:
        return str(message.message_id)


async def ids_in(broker: Broker, queue: str) -> list[str]:
    """The ids in ``queue``, in order (taking them: the test is over with the queue)."""
    return [id_of(m) for m in await broker.drain(queue)]


@pytest.fixture
async def ledger(database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(database)
    try:
        await migrate(connection)
        yield connection
    finally:
        await connection.close()


async def add_row(
    connection: asyncpg.Connection[Any], internal_id: str, status: str, tenant: str = "acme"
) -> None:
    await connection.execute(
        "INSERT INTO wa_messages (internal_id, tenant_id, status) VALUES ($1, $2, $3)",
        internal_id,
        tenant,
        status,
    )


@pytest.fixture
async def dead_letters(vhost: str) -> AsyncIterator[Broker]:
    """A declared topology with unique names and no daemon: tests fill the DLQ themselves."""
    settings = make_settings(vhost, NO_SANDBOX)
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        yield broker


def requests_to(sandbox: Any, to: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.state.requests() if (r["body"] or {}).get("to") == to]


# -- fingerprints --------------------------------------------------------------------------


def test_one_cause_is_one_fingerprint_whatever_ids_numbers_and_quoted_values_it_carries() -> None:
    a = "(#131026) undeliverable to 4915112345678 (wamid.HBgLMTU1NTAwMDAwMDEVAgARGBI=) 'acme'"
    b = "(#131026) undeliverable to 27821234567 (wamid.HBgNNDkxNTExMjM0NTY3OBUCABE=) 'globex'"
    assert normalise(a) == normalise(b) == "(#<n>) undeliverable to <n> (<wamid>) <q>"
    assert fingerprint("permanent", "131026", a) == fingerprint("permanent", "131026", b)
    assert fingerprint("permanent", "131026", a) != fingerprint("permanent", "131047", a)
    uuid_text = f"claim of {uuid.uuid4()} at 2026-11-24T12:00:00.123Z failed"
    assert normalise(uuid_text) == "claim of <id> at <time> failed"


# -- inspection ----------------------------------------------------------------------------


async def test_stats_list_and_show_describe_daemon_made_dead_messages_and_change_nothing(
    vhost, sandbox, tmp_path
) -> None:
    settings = make_settings(vhost, sandbox.url)
    async with running(settings), broker_for(settings) as broker:
        for tenant, to in [
            ("acme", "15550000001"),  # permanent 131026
            ("acme", "15550000002"),
            ("globex", "15550000003"),
            ("acme", "15550020001"),  # account 131031
            ("acme", "15550090001"),  # retries_exhausted 131016
            ("nobody", "27820000001"),  # tenant_unknown
        ]:
            await broker.publish(text_message(tenant, to))
        await broker.publish_raw(b"{not json", tenant="globex", message_id="poison-1")
        await wait_for(lambda: _holds(broker, settings.dead_letter_queue, 7))

    before = await dlq_json(settings, tmp_path, "list")
    order = [r["internal_id"] for r in before["records"]]
    assert before["matched"] == before["messages"] == 7

    summary = await dlq_json(settings, tmp_path, "stats")
    assert summary["messages"] == 7
    assert summary["by_category"] == {
        "permanent": 3,
        "account": 1,
        "retries_exhausted": 1,
        "tenant_unknown": 1,
        "invalid": 1,
    }
    assert summary["by_code"]["131026"] == 3
    assert summary["by_tenant"] == {"acme": 4, "globex": 2, "nobody": 1}
    assert summary["by_type"] == {"text": 6, "(unreadable)": 1}
    [undeliverable] = [g for g in summary["by_fingerprint"] if g["code"] == "131026"]
    assert (undeliverable["count"], undeliverable["tenants"]) == (3, 2)  # one cause, one group
    assert len(summary["by_fingerprint"]) == 5
    assert 0 <= summary["oldest"]["age_seconds"] < 120

    page = await dlq_json(settings, tmp_path, "list", "--category", "permanent", "--limit", "2")
    assert page["matched"] == 3
    permanent = [r["internal_id"] for r in before["records"] if r["category"] == "permanent"]
    assert [r["internal_id"] for r in page["records"]] == permanent[:2]  # in queue order
    assert {r["code"] for r in page["records"]} == {"131026"}
    by_print = await dlq_json(
        settings, tmp_path, "list", "--fingerprint", undeliverable["fingerprint"][:6]
    )
    assert by_print["matched"] == 3

    shown = await dlq_json(settings, tmp_path, "show", "poison-1")
    assert shown["category"] == "invalid"
    assert shown["tenant"] == "globex"
    assert shown["body"] == "{not json"
    assert shown["headers"]["x-error-category"] == "invalid"
    assert shown["copies"] == 1
    code, _, err = await dlq(settings, tmp_path, "show", "no-such-id")
    assert code == 1
    assert "no message 'no-such-id'" in err

    code, table, _ = await dlq(settings, tmp_path, "stats")
    assert code == 0
    assert undeliverable["fingerprint"] in table
    assert settings.dead_letter_queue in table
    assert "oldest failed" in table

    async with broker_for(settings) as broker:
        assert await ids_in(broker, settings.dead_letter_queue) == order  # none lost, same order


async def _holds(broker: Broker, queue: str, n: int) -> bool:
    return await broker.count(queue) >= n


async def test_a_message_the_broker_dead_lettered_itself_is_described_from_x_death(
    vhost, tmp_path
) -> None:
    settings = make_settings(vhost, NO_SANDBOX, max_message_age_seconds=0.1)
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        await broker.publish(text_message("acme", "27820000009"))  # no daemon: it expires
        await wait_for(lambda: _holds(broker, settings.dead_letter_queue, 1))
        page = await dlq_json(settings, tmp_path, "list")
        [record] = page["records"]
        assert (record["category"], record["code"], record["tenant"]) == (
            "expired",
            "queue_ttl",
            "acme",
        )
        assert settings.queue in record["message"]
        [kept] = await broker.drain(settings.dead_letter_queue)
        assert kept.headers["x-death"][0]["reason"] == "expired"  # kept as it was


async def test_stats_over_thousands_keeps_their_order_and_holds_only_a_window(
    dead_letters: Broker,
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    n, pad = 5000, "x" * 2000  # ~10 MB of bodies in the queue
    channel = await broker.connection.channel(publisher_confirms=True)
    headers = dead_headers("permanent", "131026", "(#131026) undeliverable", "acme")
    for start in range(0, n, 500):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        orjson.dumps({"seq": i, "pad": pad}),
                        headers={**headers, "x-tenant-id": f"t{i % 7}"},
                        message_id=f"m{i}",
                    ),
                    routing_key=settings.dead_letter_queue,
                )
                for i in range(start, min(n, start + 500))
            )
        )
    await channel.close()

    tracemalloc.start()
    try:
        options = PassOptions(prefetch=100)
        result = await stats(
            broker.connection, settings.dead_letter_queue, Filter(), options=options
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.report.seen == result.matched == n
    assert result.by_tenant["t0"] == 715
    assert result.report.peak_in_hand <= 100
    assert peak < 5_000_000, f"peak {peak:,} bytes: the pass held more than its window"
    taken = await broker.drain(settings.dead_letter_queue)
    assert [orjson.loads(m.body)["seq"] for m in taken] == list(range(n))
    assert [m.message_id for m in taken[:3]] == ["m0", "m1", "m2"]


async def test_a_copy_that_is_not_confirmed_leaves_its_original_in_the_queue(
    dead_letters: Broker,
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    ids = [await kill(broker, "acme", "permanent", "131026") for _ in range(5)]

    async def decide(batch: Any, first: int) -> list[Any]:
        nowhere = aio_pika.Message(b"{}")
        return [Move(nowhere, "no-such-queue") for _ in batch]  # unroutable: returned

    with pytest.raises(DlqError, match="not confirmed"):
        await DeadLetterPass(broker.connection, settings.dead_letter_queue, decide).run()
    assert sorted(await ids_in(broker, settings.dead_letter_queue)) == sorted(ids)


async def test_a_quorum_dlq_comes_out_of_a_pass_whole_and_in_order(vhost: str) -> None:
    settings = make_settings(vhost, NO_SANDBOX, queue_type="quorum")
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        channel = await broker.connection.channel(publisher_confirms=True)
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        orjson.dumps(text_message("acme", "27820001234", internal_id=f"q{i}")),
                        headers={"x-error-category": "account" if i % 3 == 0 else "permanent"},
                        message_id=f"q{i}",
                    ),
                    routing_key=settings.dead_letter_queue,
                )
                for i in range(600)
            )
        )
        await channel.close()
        options = PassOptions.for_queue_type("quorum")
        account = Filter.of(categories=["account"])
        queue = settings.dead_letter_queue
        assert (await stats(broker.connection, queue, Filter(), options=options)).matched == 600
        summary = await replay(
            broker.connection, queue, settings.queue, account, NoLedger(), options=options
        )
        assert summary.replayed == 200
        assert await ids_in(broker, queue) == [f"q{i}" for i in range(600) if i % 3]
        assert await ids_in(broker, settings.queue) == [f"q{i}" for i in range(0, 600, 3)]


# -- replay --------------------------------------------------------------------------------


async def test_replay_of_a_filtered_subset_is_delivered_and_the_rest_stay_in_order(
    vhost, sandbox, database, tmp_path
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    account = ["15550020001", "15550020002", "15550020003"]
    async with running(settings), broker_for(settings) as broker:
        for to in ["15550000001", account[0], "15550060001", account[1], account[2]]:
            await broker.publish(text_message("acme", to))
        await broker.publish(text_message("globex", "15550000002"))
        await wait_for(lambda: _holds(broker, settings.dead_letter_queue, 6))
        before = await dlq_json(settings, tmp_path, "list")
        sandbox.state.configure(rules=[])  # the account is unlocked: everything would go now

        summary = await dlq_json(
            settings, tmp_path, "replay", "--category", "account", database=database
        )
        assert (summary["replayed"], summary["skipped"], summary["left"]) == (3, {}, 3)
        for to in account:
            await wait_for(lambda to=to: _sent(sandbox, to))
        rest = [r["internal_id"] for r in before["records"] if r["category"] != "account"]
        assert await ids_in(broker, settings.dead_letter_queue) == rest
    for to in ["15550000001", "15550060001", "15550000002"]:
        assert [r["outcome"] for r in requests_to(sandbox, to)] == ["failed"]  # not replayed
    replayed = [r["internal_id"] for r in before["records"] if r["category"] == "account"]
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT status FROM wa_messages WHERE internal_id = ANY($1::text[])", replayed
        )
    finally:
        await connection.close()
    assert [r["status"] for r in rows] == ["sent"] * 3  # dead in the ledger, claimed again


async def _sent(sandbox: Any, to: str) -> bool:
    return any(r["outcome"] == "sent" for r in requests_to(sandbox, to))


async def test_replay_by_id_moves_that_message_alone_with_fresh_counts(
    dead_letters: Broker, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    ids = [await kill(broker, "acme", "account", "131031") for _ in range(4)]
    raw = orjson.dumps(text_message("acme", "27820001234", internal_id=ids[2]))

    code, out, err = await dlq(settings, tmp_path, "replay", "--id", ids[2])
    assert code == 0, err
    assert "replayed 1 of 1" in out

    [copy] = await broker.drain(settings.queue)
    assert copy.body == raw  # body unchanged
    assert copy.message_id == ids[2]
    assert copy.headers["x-retry-count"] == 0
    assert copy.headers["x-replay-count"] == 1
    assert copy.headers["x-error-category"] == "account"  # the last reason travels along
    assert await ids_in(broker, settings.dead_letter_queue) == [ids[0], ids[1], ids[3]]


async def test_dry_run_changes_nothing_and_says_what_it_would_do(
    dead_letters: Broker, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    ids = [
        await kill(broker, "acme", category, code)
        for category, code in [("account", "131031"), ("permanent", "131026")] * 3
    ]
    summary = await dlq_json(settings, tmp_path, "replay", "--code", "131031", "--dry-run")
    assert summary["dry_run"] is True
    assert summary["replayed"] == 3
    assert [r["internal_id"] for r in summary["sample"]] == ids[0::2]
    assert summary["left"] == 6
    limited = await dlq_json(settings, tmp_path, "replay", "--limit", "2", "--dry-run")
    assert (limited["replayed"], limited["skipped"]) == (2, {"--limit reached": 4})
    code, out, _ = await dlq(settings, tmp_path, "replay", "--dry-run")
    assert code == 0
    assert "dry run, nothing changed: would replay 6" in out
    assert await broker.count(settings.queue) == 0
    assert await ids_in(broker, settings.dead_letter_queue) == ids


async def test_replay_maximum_keeps_a_message_replayed_too_often_in_the_dlq(
    dead_letters: Broker, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    worn = await kill(broker, "acme", "permanent", "131026", replays=3)
    fresh = [await kill(broker, "acme", "permanent", "131026", replays=2) for _ in range(4)]

    started = time.monotonic()
    summary = await dlq_json(settings, tmp_path, "replay", "--all", "--rate", "20")
    assert time.monotonic() - started >= 3 / 20  # four replays at 20/s: three gaps
    assert (summary["replayed"], summary["skipped"]) == (4, {"replay limit": 1})
    replayed = await broker.drain(settings.queue)
    assert [id_of(m) for m in replayed] == fresh
    assert {m.headers["x-replay-count"] for m in replayed} == {3}
    assert await ids_in(broker, settings.dead_letter_queue) == [worn]

    await kill(broker, "acme", "permanent", "131026", internal_id=worn, replays=3)
    summary = await dlq_json(settings, tmp_path, "replay", "--all", "--max-replays", "4")
    assert summary["replayed"] == 1  # a higher maximum lets it go


async def test_a_message_the_ledger_records_as_sent_is_not_replayed(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    sent, dead = str(uuid.uuid4()), str(uuid.uuid4())
    await add_row(ledger, sent, "sent")
    await add_row(ledger, dead, "dead")
    for internal_id in (sent, dead):
        await kill(broker, "acme", "retries_exhausted", "131016", internal_id=internal_id)

    code, out, err = await dlq(settings, tmp_path, "replay", "--all", database=database)
    assert code == 0, err
    assert "skipped 1: already sent" in out
    assert await ids_in(broker, settings.queue) == [dead]
    assert await ids_in(broker, settings.dead_letter_queue) == [sent]


def tenant_of(message: AbstractIncomingMessage) -> str:
    return str(orjson.loads(message.body)["metadata"]["tenantId"])


async def test_another_tenants_sent_message_with_the_same_id_does_not_hold_a_replay_back(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    shared = str(uuid.uuid4())
    await add_row(ledger, shared, "sent", tenant="acme")
    await add_row(ledger, shared, "dead", tenant="globex")
    for tenant in ("acme", "globex"):
        await kill(broker, tenant, "retries_exhausted", "131016", internal_id=shared)

    summary = await dlq_json(settings, tmp_path, "replay", "--all", database=database)

    assert (summary["replayed"], summary["skipped"]) == (1, {"already sent": 1})
    assert [tenant_of(m) for m in await broker.drain(settings.queue)] == ["globex"]
    assert [tenant_of(m) for m in await broker.drain(settings.dead_letter_queue)] == ["acme"]


async def test_replay_reads_the_tenant_from_the_body_when_the_headers_have_none(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    """As a message the broker dead-lettered by itself (its TTL ran out) arrives."""
    broker, settings = dead_letters, dead_letters.settings
    shared = str(uuid.uuid4())
    await add_row(ledger, shared, "sent", tenant="acme")
    for tenant in ("acme", "globex"):
        body = orjson.dumps(text_message(tenant, "27820001234", internal_id=shared))
        await bury(broker, body, {}, shared)

    summary = await dlq_json(settings, tmp_path, "replay", "--all", database=database)

    assert (summary["replayed"], summary["skipped"]) == (1, {"already sent": 1})
    assert [tenant_of(m) for m in await broker.drain(settings.queue)] == ["globex"]
    assert [tenant_of(m) for m in await broker.drain(settings.dead_letter_queue)] == ["acme"]


async def test_a_message_with_no_readable_tenant_is_not_replayed_if_any_tenant_sent_its_id(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    sent, unknown = str(uuid.uuid4()), str(uuid.uuid4())
    await add_row(ledger, sent, "sent", tenant="acme")
    for internal_id in (sent, unknown):
        await bury(broker, b"{not json", {}, internal_id)  # neither body nor header names one

    summary = await dlq_json(settings, tmp_path, "replay", "--all", database=database)

    assert (summary["replayed"], summary["skipped"]) == (1, {"already sent": 1})
    assert [m.message_id for m in await broker.drain(settings.queue)] == [unknown]
    assert [m.message_id for m in await broker.drain(settings.dead_letter_queue)] == [sent]


# -- purge ---------------------------------------------------------------------------------


async def test_purge_removes_only_its_filter_and_records_the_reason(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    old = datetime.now(UTC) - timedelta(days=40)
    plan = [
        ("permanent", "131026", old),  # goes
        ("permanent", "131026", None),  # too recent
        ("account", "131031", old),  # another category
        ("permanent", "131047", old),  # goes
    ]
    ids = []
    for category, code, failed_at in plan:
        internal_id = await kill(broker, "acme", category, code, failed_at=failed_at)
        await add_row(ledger, internal_id, "dead")
        ids.append(internal_id)
    args = ("purge", "--category", "permanent", "--older-than", "30d")

    code, _, err = await dlq(settings, tmp_path, *args, database=database)
    assert code == 2
    assert "--yes" in err
    assert await broker.count(settings.dead_letter_queue) == 4

    reason = "recipients opted out (ticket OPS-12)"
    code, out, err = await dlq(
        settings, tmp_path, *args, "--yes", "--reason", reason, database=database
    )
    assert code == 0, err
    assert "removed 2 of 4" in out
    assert "permanent: 2" in out
    assert await ids_in(broker, settings.dead_letter_queue) == [ids[1], ids[2]]
    rows = await ledger.fetch(
        "SELECT internal_id, resolution FROM wa_messages WHERE internal_id = ANY($1::text[])",
        ids,
    )
    resolution = {r["internal_id"]: r["resolution"] for r in rows}
    assert resolution == {ids[0]: reason, ids[1]: None, ids[2]: None, ids[3]: reason}


async def test_purge_records_its_reason_on_that_tenants_record_alone(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    shared, nameless = str(uuid.uuid4()), str(uuid.uuid4())
    for tenant in ("acme", "globex"):
        await add_row(ledger, shared, "dead", tenant=tenant)
        await add_row(ledger, nameless, "dead", tenant=tenant)
    await kill(broker, "globex", "permanent", "131026", internal_id=shared)
    await bury(broker, b"{not json", {}, nameless)  # no tenant to tell its record by

    reason = "bad template (ticket OPS-31)"
    code, out, err = await dlq(
        settings, tmp_path, "purge", "--all", "--yes", "--reason", reason, database=database
    )

    assert code == 0, err
    assert "removed 2 of 2" in out
    assert f"reason recorded in the ledger for 1: {reason}" in out
    rows = await ledger.fetch(
        "SELECT tenant_id, internal_id, resolution FROM wa_messages"
        " WHERE internal_id = ANY($1::text[])",
        [shared, nameless],
    )
    resolution = {(r["tenant_id"], r["internal_id"]): r["resolution"] for r in rows}
    assert resolution == {
        ("acme", shared): None,
        ("globex", shared): reason,
        ("acme", nameless): None,
        ("globex", nameless): None,
    }


async def test_a_second_dlq_command_waits_its_turn(dead_letters: Broker, tmp_path: Path) -> None:
    broker, settings = dead_letters, dead_letters.settings
    await kill(broker, "acme", "permanent", "131026")
    channel = await broker.connection.channel()
    queue = await channel.get_queue(settings.dead_letter_queue)

    async def hold(_: AbstractIncomingMessage) -> None:
        """Someone else reading the DLQ, holding what it got."""

    tag = await queue.consume(hold)
    try:
        code, _, err = await dlq(settings, tmp_path, "stats")
    finally:
        await queue.cancel(tag)
        await channel.close()
    assert code == 1
    assert "needs it alone" in err
    assert await broker.count(settings.dead_letter_queue) == 1


# -- safety: no filter, --all, dry runs, progress ------------------------------------------


@pytest.mark.parametrize("command", [("replay",), ("purge", "--yes")])
async def test_replay_and_purge_with_no_filter_refuse_unless_all(
    dead_letters: Broker, tmp_path: Path, command: tuple[str, ...]
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    ids = [await kill(broker, "acme", "permanent", "131026") for _ in range(2)]

    code, out, err = await dlq(settings, tmp_path, *command)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "pass a filter" in err and "--all" in err
    assert await ids_in(broker, settings.dead_letter_queue) == ids
    for internal_id in ids:
        await kill(broker, "acme", "permanent", "131026", internal_id=internal_id)

    code, _, err = await dlq(settings, tmp_path, *command, "--all", "--json")
    assert code == 0, err
    assert await broker.count(settings.dead_letter_queue) == 0


async def test_purge_dry_run_counts_what_would_go_and_touches_nothing(
    dead_letters: Broker, ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    ids = []
    for category, code in [("permanent", "131026"), ("account", "131031"), ("permanent", "1")]:
        internal_id = await kill(broker, "acme", category, code)
        await add_row(ledger, internal_id, "dead")
        ids.append(internal_id)

    summary = await dlq_json(
        settings, tmp_path, "purge", "--category", "permanent", "--dry-run", database=database
    )
    assert (summary["dry_run"], summary["removed"], summary["left"]) == (True, 2, 3)
    assert summary["resolved_in_ledger"] is None
    code, out, err = await dlq(settings, tmp_path, "purge", "--dry-run")  # no filter, no --yes
    assert code == 0, err
    assert "dry run, nothing changed: would remove 3 of 3" in out
    assert await ids_in(broker, settings.dead_letter_queue) == ids
    rows = await ledger.fetch(
        "SELECT resolution FROM wa_messages WHERE internal_id = ANY($1::text[])", ids
    )
    assert [r["resolution"] for r in rows] == [None] * 3


async def test_a_long_purge_prints_progress_lines_on_stderr_when_it_is_not_a_terminal(
    dead_letters: Broker, tmp_path: Path
) -> None:
    broker, settings = dead_letters, dead_letters.settings
    channel = await broker.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(settings.dead_letter_exchange)
        headers = dead_headers("permanent", "131026", "(131026) failed", "acme")
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(b"{}", headers=headers, message_id=str(n)),
                    routing_key=settings.dead_routing_key,
                )
                for n in range(1500)
            )
        )
    finally:
        await channel.close()
    await wait_for(lambda: _holds(broker, settings.dead_letter_queue, 1500))

    code, out, err = await dlq(settings, tmp_path, "purge", "--dry-run", "--json")

    assert code == 0, err
    assert orjson.loads(out)["removed"] == 1500
    lines = err.splitlines()
    assert lines, "no progress line"
    assert all(line.startswith("wa-consumer: purging: ") for line in lines), lines
    assert lines[-1] == "wa-consumer: purging: 1,500 of 1,500 messages"
    assert "\x1b" not in err  # plain lines, no terminal codes


async def test_a_broker_that_does_not_answer_exits_4(tmp_path: Path) -> None:
    settings = make_settings("amqp://guest:guest@127.0.0.1:9/", NO_SANDBOX)  # nobody there
    code, out, err = await dlq(settings, tmp_path, "stats")
    assert (code, out) == (4, "")
    assert "cannot connect to RabbitMQ" in err
