"""The ledger seen from outside: one send per internalId, whatever the broker or the
database does (SPEC §9)."""

from __future__ import annotations

import asyncio
import collections
import re
import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from yarl import URL

from .harness import broker_for, make_settings, running, text_message, wait_for
from .proxy import TcpProxy
from .test_process import start_daemon, wait_consuming

pytestmark = pytest.mark.integration


def sends(sandbox: Any) -> collections.Counter[str]:
    """How many times each recipient was sent to (a second one is a duplicate send)."""
    return collections.Counter(
        r["body"]["to"] for r in sandbox.state.requests() if r["outcome"] == "sent"
    )


async def status_of(database: str, internal_id: str) -> str | None:
    connection = await asyncpg.connect(database)
    try:
        return await connection.fetchval(
            "SELECT status FROM wa_messages WHERE internal_id = $1", internal_id
        )
    finally:
        await connection.close()


@pytest.mark.parametrize("at_once", [False, True])
async def test_same_internal_id_three_times_is_sent_once(
    vhost, sandbox, database, at_once: bool
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    message = text_message("acme", "27850000001", internal_id=str(uuid.uuid4()))
    async with running(settings) as daemon, broker_for(settings) as broker:
        for n in range(1, 4):
            await broker.publish(message)
            if not at_once:
                await wait_for(lambda n=n: _counted(daemon, n))
        await wait_for(lambda: _counted(daemon, 3, "sent", "duplicate"))
        counts = daemon.pipeline.counts
    assert sends(sandbox) == {"27850000001": 1}
    assert counts["sent"] == 1
    assert counts["duplicate"] == 2
    assert await status_of(database, message["metadata"]["internalId"]) == "sent"


async def _counted(daemon: Any, n: int, *kinds: str) -> bool:
    counts = daemon.pipeline.counts
    return sum(counts[k] for k in (kinds or ("sent", "duplicate"))) >= n


async def test_two_daemons_receiving_copies_at_once_send_once(vhost, sandbox, database) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    ids = [str(uuid.uuid4()) for _ in range(30)]
    async with running(settings) as one, running(settings) as two, broker_for(settings) as broker:
        for i, internal_id in enumerate(ids):
            for _ in range(3):
                await broker.publish(
                    text_message("acme", f"2785100{i:04d}", internal_id=internal_id)
                )

        async def settled() -> bool:
            total = collections.Counter(one.pipeline.counts) + collections.Counter(
                two.pipeline.counts
            )
            return total["sent"] + total["duplicate"] >= 90

        await wait_for(settled, timeout=30)
    assert set(sends(sandbox).values()) == {1}
    assert len(sends(sandbox)) == 30
    assert one.pipeline.counts["sent"] + two.pipeline.counts["sent"] == 30


async def test_kill_9_under_load_then_restart_loses_nothing(vhost, sandbox, database) -> None:
    sandbox.state.configure(latency={"ms": 30})
    settings = make_settings(
        vhost, sandbox.url, database_url=database, prefetch=20, claim_lease_seconds=2
    )
    recipients = [f"2785200{i:04d}" for i in range(300)]
    proc = await start_daemon(settings)
    await wait_consuming(proc)
    async with broker_for(settings) as broker:
        for to in recipients:
            await broker.publish(text_message("acme", to))
        await wait_for(lambda: _sent_at_least(sandbox, 100))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        at_kill = sum(sends(sandbox).values())
        proc = await start_daemon(settings)
        await wait_consuming(proc)
        await wait_for(lambda: _all(sandbox, recipients), timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert await broker.count(settings.dead_letter_queue) == 0
    counted = sends(sandbox)
    duplicates = sum(n - 1 for n in counted.values())
    print(f"kill -9 at {at_kill}/300 sent: {duplicates} duplicate sends")
    # Only a send that reached the API while the process died can repeat: at most the
    # messages in flight then (WA_PREFETCH).
    assert duplicates <= settings.prefetch
    assert set(counted) == set(recipients)


async def _sent_at_least(sandbox: Any, n: int) -> bool:
    return sum(sends(sandbox).values()) >= n


async def _all(sandbox: Any, recipients: list[str]) -> bool:
    return set(sends(sandbox)) >= set(recipients)


async def test_database_cut_off_under_load_pauses_then_resumes(vhost, sandbox, database) -> None:
    sandbox.state.configure(latency={"ms": 20})
    url = URL(database)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    settings = make_settings(
        vhost, sandbox.url, database_url=str(url.with_port(proxy.port)), prefetch=20
    )
    recipients = [f"2785300{i:04d}" for i in range(300)]
    try:
        async with running(settings) as daemon, broker_for(settings) as broker:
            for to in recipients:
                await broker.publish(text_message("acme", to))
            await wait_for(lambda: _sent_at_least(sandbox, 50))
            proxy.down()
            await wait_for(lambda: _not_consuming(daemon), timeout=15)
            paused_at = sum(sends(sandbox).values())
            await asyncio.sleep(2)
            # Paused: nothing new is sent while the ledger is away (in-flight ones may finish).
            assert sum(sends(sandbox).values()) <= paused_at + settings.prefetch
            await proxy.accept()
            await wait_for(lambda: _all(sandbox, recipients), timeout=60)
            assert daemon.consuming.is_set()
            assert await broker.count(settings.dead_letter_queue) == 0
    finally:
        await proxy.close()
    assert set(sends(sandbox).values()) == {1}


async def _not_consuming(daemon: Any) -> bool:
    return not daemon.consuming.is_set()


async def test_status_json_shows_sent_with_the_wamid_and_every_attempt(
    vhost, sandbox, database
) -> None:
    import json
    import os
    import sys

    settings = make_settings(vhost, sandbox.url, database_url=database)
    internal_id = str(uuid.uuid4())
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "15550010777", internal_id=internal_id))
        await wait_for(lambda: _all(sandbox, ["15550010777"]))
        await wait_for(lambda: _status_is(database, internal_id, "sent"))
    [answer] = [r for r in sandbox.state.requests() if r["outcome"] == "sent"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wa_consumer", "status", internal_id, "--json",
        env={**os.environ, "WA_DATABASE_URL": database},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    record = json.loads(out)
    assert record["status"] == "sent"
    assert record["wamid"] == answer["wamid"]
    assert record["retries"] == 2
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "retry", "sent"]
    assert [a["code"] for a in record["attempts"]] == ["131000", "131000", None]


async def test_an_attempt_meta_answered_with_an_error_keeps_its_fbtrace_id(
    vhost: str, sandbox: Any, database: str
) -> None:
    """The sandbox answers 1555001... with 131000 twice (each error with an fbtrace_id)."""
    settings = make_settings(vhost, sandbox.url, database_url=database)
    internal_id = str(uuid.uuid4())
    async with running(settings), broker_for(settings) as broker:
        await broker.publish(text_message("acme", "15550010778", internal_id=internal_id))
        await wait_for(lambda: _status_is(database, internal_id, "sent"))
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT outcome, code, fbtrace_id FROM wa_attempts WHERE internal_id = $1 ORDER BY id",
            internal_id,
        )
    finally:
        await connection.close()
    assert [(r["outcome"], r["code"]) for r in rows] == [
        ("retry", "131000"), ("retry", "131000"), ("sent", None),
    ]  # fmt: skip
    errors, sent = rows[:2], rows[2]
    assert all(r["fbtrace_id"] and 0 < len(r["fbtrace_id"]) <= 64 for r in errors), errors
    assert errors[0]["fbtrace_id"] != errors[1]["fbtrace_id"]  # each answer's own
    assert sent["fbtrace_id"] is None


async def _status_is(database: str, internal_id: str, status: str) -> bool:
    return await status_of(database, internal_id) == status


async def test_the_hot_statements_look_rows_up_by_key_even_when_planned_on_an_empty_table(
    database: str,
) -> None:
    """A new install plans its statements once, on an empty table: those plans must still be
    index lookups when the table holds millions of rows (a scan per batch would grow with it).
    """
    from wa_consumer.ledger.postgres import _WRITE, PostgresLedger

    types = "jsonb,jsonb,jsonb,text,float8"
    ledger = await PostgresLedger.connect(database)
    try:
        async with ledger._pool.acquire() as connection:
            await connection.execute(f"PREPARE w ({types}) AS {_WRITE}")
            nulls = ", ".join(["NULL"] * len(types.split(",")))
            rows = await connection.fetch(f"EXPLAIN EXECUTE w ({nulls})")
    finally:
        await ledger.close()
    plan = "\n".join(row[0] for row in rows)
    assert "Conflict Arbiter Indexes: wa_messages_pkey" in plan, plan
    # By its key: the primary key, or the internal id's index when the run's shared
    # database already holds rows (the planner's choice; either is a lookup, not a scan)
    assert re.search(
        r"Index (Only )?Scan using wa_messages_(pkey|internal_id) on wa_messages", plan
    ), plan
    assert "Seq Scan on wa_messages" not in plan, plan


async def _updates(database: str) -> tuple[int, int]:
    """(HOT updates, all updates) of wa_messages so far, as the statistics have them."""
    connection = await asyncpg.connect(database)
    try:
        row = await connection.fetchrow(
            "SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'wa_messages'"
        )
    finally:
        await connection.close()
    return (row["n_tup_hot_upd"], row["n_tup_upd"]) if row else (0, 0)


async def test_a_result_is_written_in_place_so_no_index_grows_with_it(database: str) -> None:
    """A claimed row's result is a HOT update (same page, no new index entries), which took
    PostgreSQL's CPU per message in the batched statement from 45 to 32 us. An index on a
    column a result changes (status, updated_at) or a full page would make it a new row
    version with an entry in every index."""
    import orjson

    from wa_consumer.ledger.postgres import PostgresLedger
    from wa_consumer.message import parse
    from wa_consumer.seams import Attempt, Claim, Record

    messages = [parse(orjson.dumps(text_message("acme", f"1555002{n:04d}"))) for n in range(200)]
    attempt = Attempt(1, datetime.now(UTC), 3.0, "sent", http_status=200)
    hot_before, before = await _updates(database)
    ledger = await PostgresLedger.connect(database)
    try:
        claims = await asyncio.gather(*(ledger.claim(m) for m in messages))
        assert set(claims) == {Claim.CLAIMED}
        await asyncio.gather(
            *(
                ledger.finish(m, Record("sent", 0, wamid=f"wamid.{m.to}"), [attempt])
                for m in messages
            )
        )
    finally:
        await ledger.close()  # its backends report their statistics as they exit

    async def counted() -> tuple[int, int] | None:
        hot, updates = await _updates(database)
        return (hot - hot_before, updates - before) if updates - before >= 200 else None

    hot, updates = await wait_for(counted, timeout=10)
    assert hot >= 0.9 * updates, (hot, updates)


async def test_every_field_of_a_claim_and_a_result_reaches_the_tables(database: str) -> None:
    """What one batch writes, read back column by column (metadata, error, next time, attempt)."""
    from datetime import UTC, datetime, timedelta

    import orjson

    from wa_consumer.ledger.postgres import PostgresLedger
    from wa_consumer.message import parse
    from wa_consumer.seams import Attempt, Claim, Record

    body = text_message("acme", "15550010999", campaign="spring", note='quote " and \\ and é')
    message = parse(orjson.dumps(body))
    started = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)
    attempt = Attempt(
        2, started, 812.5, "retry", http_status=503, code="131016", subcode=2494010,
        category="transient", message="Service unavailable\nnewline", ambiguous=True,
    )  # fmt: skip
    record = Record(
        "retry_scheduled", 1, code="131016", category="transient", message="Service unavailable",
        next_in=30.0,
    )  # fmt: skip
    ledger = await PostgresLedger.connect(database)
    try:
        assert await ledger.claim(message) is Claim.CLAIMED
        await ledger.finish(message, record, [attempt])
        async with ledger._pool.acquire() as connection:
            row = await connection.fetchrow(
                "SELECT *, next_attempt_at - updated_at AS wait FROM wa_messages"
                " WHERE internal_id = $1",
                message.internal_id,
            )
            [att] = await connection.fetch(
                "SELECT * FROM wa_attempts WHERE internal_id = $1", message.internal_id
            )
    finally:
        await ledger.close()
    assert row is not None
    assert (row["tenant_id"], row["phone_number_id"], row["recipient"], row["type"]) == (
        "acme", message.phone_number_id, "15550010999", "text",
    )  # fmt: skip
    assert orjson.loads(row["metadata"]) == {"campaign": "spring", "note": 'quote " and \\ and é'}
    assert (row["status"], row["retries"], row["wamid"]) == ("retry_scheduled", 1, None)
    assert (row["last_error_code"], row["last_error_category"]) == ("131016", "transient")
    assert row["last_error_message"] == "Service unavailable"
    assert abs(row["wait"] - timedelta(seconds=30)) < timedelta(seconds=1)
    assert (row["deliveries"], row["claimed_by"], row["sent_at"]) == (0, None, None)
    assert (att["attempt"], att["started_at"], att["latency_ms"]) == (2, started, 812.5)
    assert (att["outcome"], att["http_status"], att["code"], att["subcode"]) == (
        "retry", 503, "131016", 2494010,
    )  # fmt: skip
    assert (att["category"], att["message"], att["ambiguous"]) == (
        "transient", "Service unavailable\nnewline", True,
    )  # fmt: skip
    assert att["consumer"] == ledger.consumer


async def test_a_result_the_database_cannot_take_is_kept_and_written_when_it_is_back(
    database: str,
) -> None:
    """The send happened: its finish waits a bounded time, then the message may be settled,
    and the result is written as soon as the database answers again (SPEC §9, outage)."""
    import orjson

    from wa_consumer.ledger.postgres import PostgresLedger
    from wa_consumer.message import parse
    from wa_consumer.seams import Attempt, Claim, Record

    url = URL(database)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    message = parse(orjson.dumps(text_message("acme", "15550010888")))
    ledger = await PostgresLedger.connect(
        str(url.with_port(proxy.port)),
        finish_timeout=0.5,
        statement_timeout_ms=1000,
        lease_seconds=4.0,  # a copy's claim waits half of it for the first to be written
    )
    try:
        assert await ledger.claim(message) is Claim.CLAIMED
        proxy.down()
        started = time.perf_counter()
        attempt = Attempt(1, datetime.now(UTC), 12.0, "sent", http_status=200)
        record = Record("sent", 0, wamid="wamid.kept")
        await asyncio.wait_for(ledger.finish(message, record, [attempt]), 10)
        waited = time.perf_counter() - started
        assert 0.4 < waited < 3.0  # bounded: the broker is not held up by the ledger
        assert not ledger.healthy
        started = time.perf_counter()
        assert await ledger.claim(message) is Claim.BUSY  # still ours until it is written
        assert time.perf_counter() - started < 5.0  # after waiting a bounded time for it
        await proxy.accept()
        await wait_for(lambda: _status_is(database, message.internal_id, "sent"), timeout=15)
    finally:
        await ledger.close()
        await proxy.close()
    connection = await asyncpg.connect(database)
    try:
        wamid = await connection.fetchval(
            "SELECT wamid FROM wa_messages WHERE internal_id = $1", message.internal_id
        )
        attempts = await connection.fetchval(
            "SELECT count(*) FROM wa_attempts WHERE internal_id = $1", message.internal_id
        )
    finally:
        await connection.close()
    assert (wamid, attempts) == ("wamid.kept", 1)
