"""The DLQ's mirror in the ledger (``wa_dead``) against the real RabbitMQ and PostgreSQL:
every death the daemon settles is recorded as its DLQ copy; ``dlq stats | list | show`` read
it without touching the queue and agree with a pass over the queue; replay and purge keep it
true; pages return every row once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from wa_consumer.dlq.filters import Filter
from wa_consumer.dlq.record import fingerprint, json_safe
from wa_consumer.ledger.dead import DeadLetters
from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.outcomes import Failure
from wa_consumer.seams import Death

from ..conftest import PG_URL
from .harness import Broker, broker_for, make_settings, running, text_message, wait_for
from .test_dlq import dlq, dlq_json, id_of

pytestmark = pytest.mark.integration

UNLOCKED_LATER = ["15550020001", "15550020002", "15550020003"]  # account 131031


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A database of this test's own: what it counts is its deaths alone."""
    name = f"wa_test_dead_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def rows_of(database: str, *ids: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT * FROM wa_dead WHERE internal_id = ANY($1::text[]) ORDER BY id", list(ids)
        )
    finally:
        await connection.close()
    out = []
    for row in rows:
        record = dict(row)
        record["headers"] = orjson.loads(record["headers"])
        out.append(record)
    return out


async def holds(broker: Broker, n: int) -> bool:
    return await broker.count(broker.settings.dead_letter_queue) >= n


async def kill_one_of_each(broker: Broker) -> dict[str, str]:
    """One death of each kind through the running daemon; their internalIds by kind."""
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    kinds = {
        "permanent": text_message("acme", "15550000001"),  # after a send: 131026
        "retries_exhausted": text_message("acme", "15550090001"),  # 131016, always
        "tenant_unknown": text_message("nobody", "27820000001"),  # before the claim
        "expired": text_message("globex", "27820000002", expiresAt=past),  # before the claim
    }
    for message in kinds.values():
        await broker.publish(message)
    poison = f"poison-{uuid.uuid4().hex}"
    await broker.publish_raw(b"{not json", tenant="globex", message_id=poison)
    await wait_for(lambda: holds(broker, 5), timeout=30)
    return {**{kind: m["metadata"]["internalId"] for kind, m in kinds.items()}, "invalid": poison}


async def test_every_kind_of_death_is_recorded_with_its_copys_fingerprint_headers_and_body(
    vhost, sandbox, database
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    async with running(settings), broker_for(settings) as broker:
        ids = await kill_one_of_each(broker)
        copies = {id_of(m): m for m in await broker.drain(settings.dead_letter_queue)}

    rows = {r["internal_id"]: r for r in await rows_of(database, *ids.values())}
    assert set(rows) == set(ids.values())
    for kind, internal_id in ids.items():
        row, copy = rows[internal_id], copies[internal_id]
        headers = copy.headers
        assert row["state"] == "dead", kind
        assert row["category"] == headers["x-error-category"] == kind
        assert row["code"] == headers["x-error-code"]
        assert row["message"] == headers["x-error-message"]
        assert row["fingerprint"] == fingerprint(
            headers["x-error-category"], headers["x-error-code"], headers["x-error-message"]
        )
        assert row["headers"] == json_safe(dict(headers))  # what the copy carries, all of it
        assert bytes(row["body"]) == copy.body  # the original body
        assert row["tenant_id"] == headers["x-tenant-id"]
        assert "sandbox-" not in orjson.dumps(row["headers"]).decode()  # no token
    assert rows[ids["retries_exhausted"]]["retries"] == settings.max_retries
    assert rows[ids["invalid"]]["type"] is None  # unreadable
    assert rows[ids["invalid"]]["tenant_id"] == "globex"  # from the routing key
    assert rows[ids["permanent"]]["phone_number_id"] is not None
    connection = await asyncpg.connect(database)
    try:
        counted = await DeadLetters(connection).count(Filter(ids=frozenset(ids.values())))
    finally:
        await connection.close()
    assert counted == 5


async def test_reads_from_the_ledger_agree_with_a_pass_over_the_queue_and_never_touch_it(
    vhost, sandbox, own_database, tmp_path: Path
) -> None:
    database = own_database
    settings = make_settings(vhost, sandbox.url, database_url=database)
    async with running(settings), broker_for(settings) as broker:
        ids = await kill_one_of_each(broker)
        await broker.publish(text_message("acme", "15550000003"))  # a second of one cause
        await wait_for(lambda: holds(broker, 6))
    tenants = ["--tenant", "acme", "--tenant", "globex", "--tenant", "nobody"]

    async with broker_for(settings) as broker:
        # Someone holds every dead message: a pass over the queue cannot run now ...
        channel = await broker.connection.channel()
        await channel.set_qos(prefetch_count=0)
        queue = await channel.get_queue(settings.dead_letter_queue)
        held: list[AbstractIncomingMessage] = []

        async def hold(message: AbstractIncomingMessage) -> None:
            held.append(message)

        tag = await queue.consume(hold)
        await wait_for(lambda: _at_least(held, 6))
        code, _, err = await dlq(settings, tmp_path, "stats", "--from-queue", database=database)
        assert code == 1 and "needs it alone" in err

        # ... and the ledger answers all the same, from PostgreSQL alone.
        stats = await dlq_json(settings, tmp_path, "stats", *tenants, database=database)
        page = await dlq_json(settings, tmp_path, "list", *tenants, database=database)
        shown = await dlq_json(settings, tmp_path, "show", ids["invalid"], database=database)
        # With RabbitMQ unreachable too: nothing of these needs the queue.
        away = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:9/"})
        listed = await dlq_json(away, tmp_path, "list", *tenants, database=database)
        blind = await dlq_json(away, tmp_path, "stats", *tenants, database=database)

        await asyncio.sleep(0.2)
        assert len(held) == 6  # no copy of a pass arrived
        assert not any(m.redelivered for m in held)  # none was given back and sent again
        await queue.cancel(tag)
        await channel.close()  # unacked: back in the queue, in order

    assert stats["source"] == page["source"] == shown["source"] == "ledger"
    assert stats["matched"] == page["matched"] == 6
    assert stats["queue_depth"] == 0  # every message held by the consumer, none ready
    assert blind["queue_depth"] is None and blind["matched"] == 6
    assert [r["id"] for r in listed["records"]] == [r["id"] for r in page["records"]]
    ids_listed = [r["id"] for r in page["records"]]
    assert ids_listed == sorted(ids_listed, reverse=True)  # newest first

    queue_stats = await dlq_json(settings, tmp_path, "stats", "--from-queue", *tenants)
    assert queue_stats["source"] == "queue"
    for key in ("matched", "by_category", "by_code", "by_tenant", "by_type"):
        assert stats[key] == queue_stats[key], key
    assert {g["fingerprint"]: (g["count"], g["tenants"]) for g in stats["by_fingerprint"]} == {
        g["fingerprint"]: (g["count"], g["tenants"]) for g in queue_stats["by_fingerprint"]
    }
    queue_page = await dlq_json(settings, tmp_path, "list", "--from-queue", *tenants)

    def seen(records: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        keys = ("internal_id", "tenant", "type", "category", "code", "fingerprint", "message")
        return {tuple(r[k] for k in keys) for r in records}

    assert seen(page["records"]) == seen(queue_page["records"])
    from_queue = await dlq_json(settings, tmp_path, "show", ids["invalid"], "--from-queue")
    for key in ("category", "code", "tenant", "fingerprint", "body", "headers", "recipient"):
        assert shown[key] == from_queue[key], key
    assert shown["copies"] == from_queue["copies"] == 1
    code, table, _ = await dlq(settings, tmp_path, "stats", *tenants, database=database)
    assert code == 0
    assert "from the ledger; the queue holds" in table
    code, table, _ = await dlq(settings, tmp_path, "list", database=database)
    assert "from the ledger, newest first" in table


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_replay_marks_rows_replayed_a_second_death_is_a_new_row_and_purge_resolves(
    vhost, sandbox, own_database, tmp_path: Path
) -> None:
    database = own_database
    settings = make_settings(vhost, sandbox.url, database_url=database)
    tenant = "acme"
    only = ["--tenant", tenant]
    async with running(settings), broker_for(settings) as broker:
        account = [text_message(tenant, to) for to in UNLOCKED_LATER]
        permanent = [text_message(tenant, to) for to in ("15550000001", "15550000002")]
        for message in account + permanent:
            await broker.publish(message)
        await wait_for(lambda: holds(broker, 5))
        account_ids = [m["metadata"]["internalId"] for m in account]
        again = permanent[0]["metadata"]["internalId"]
        # A death's row is written between its copy's confirm and its ack: wait for the acks.
        every = [m["metadata"]["internalId"] for m in account + permanent]
        await wait_for(lambda: _rows(database, every, 5))

        # Replayed while its cause is still there: it dies again, a new row. The daemon may
        # kill the copy before the replay marks the old row (between the copy's confirm and
        # the DLQ ack): its new row then takes the old one out of state dead itself, and the
        # replay's mark, which never takes a later death's row, has nothing left to mark.
        summary = await dlq_json(settings, tmp_path, "replay", "--id", again, database=database)
        assert summary["replayed"] == 1 and summary["marked_in_ledger"] in (0, 1)
        await wait_for(lambda: _states(database, again, ["replayed", "dead"]), timeout=30)
        [old, new] = await rows_of(database, again)
        assert old["resolution"] == (
            f"replayed to {settings.queue}"
            if summary["marked_in_ledger"]
            else "dead again: a later row holds it"
        )
        assert (new["replays"], new["fingerprint"]) == (1, old["fingerprint"])

        sandbox.state.configure(rules=[])  # the account is unlocked
        summary = await dlq_json(
            settings, tmp_path, "replay", "--category", "account", *only, database=database
        )
        assert (summary["replayed"], summary["marked_in_ledger"]) == (3, 3)
        await wait_for(lambda: _sent(database, account_ids), timeout=30)
    for row in await rows_of(database, *account_ids):
        assert (row["state"], row["resolution"]) == ("replayed", f"replayed to {settings.queue}")

    stats = await dlq_json(settings, tmp_path, "stats", *only, database=database)
    assert (stats["matched"], stats["by_category"]) == (2, {"permanent": 2})

    reason = "recipients opted out (ticket OPS-7)"
    summary = await dlq_json(
        settings, tmp_path, "purge", *only, "--yes", "--reason", reason, database=database
    )
    assert (summary["removed"], summary["marked_in_ledger"]) == (2, 2)
    purged = [m["metadata"]["internalId"] for m in permanent]
    rows = [r for r in await rows_of(database, *purged) if r["state"] != "replayed"]
    assert [(r["state"], r["resolution"]) for r in rows] == [("resolved", reason)] * 2
    assert all(r["resolved_at"] is not None for r in rows)
    stats = await dlq_json(settings, tmp_path, "stats", *only, database=database)
    assert stats["matched"] == 0
    connection = await asyncpg.connect(database)
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM wa_dead_groups WHERE tenant_id = $1", tenant
        )
    finally:
        await connection.close()
    assert left == 0  # counters at zero are removed


async def _rows(database: str, ids: list[str], n: int) -> bool:
    return len(await rows_of(database, *ids)) >= n


async def _states(database: str, internal_id: str, states: list[str]) -> bool:
    return [r["state"] for r in await rows_of(database, internal_id)] == states


async def _sent(database: str, ids: list[str]) -> bool:
    connection = await asyncpg.connect(database)
    try:
        n = await connection.fetchval(
            "SELECT count(*) FROM wa_messages WHERE internal_id = ANY($1::text[])"
            " AND status = 'sent'",
            ids,
        )
    finally:
        await connection.close()
    return bool(n == len(ids))


# -- the ledger alone ----------------------------------------------------------------------


@pytest.fixture
async def ledger(database: str) -> AsyncIterator[PostgresLedger]:
    opened = await PostgresLedger.connect(database, pool_size=2)
    try:
        yield opened
    finally:
        await opened.close()


def a_death(tenant: str, n: int, *, cause: int = 0, internal_id: str | None = None,
            claimed: bool = True) -> Death:  # fmt: skip
    text = f"(#13102{cause}) undeliverable to 2782{n:07d}"
    headers = {"x-error-category": "permanent", "x-error-code": f"13102{cause}",
               "x-error-message": text, "x-tenant-id": tenant, "x-retry-count": 0}  # fmt: skip
    return Death(
        failure=Failure("permanent", f"13102{cause}", text),
        body=b"{}",
        body_bytes=2,
        headers=headers,
        tenant_id=tenant,
        internal_id=internal_id or f"{tenant}-{n}",
        type=("text", "image")[n % 2],
        claimed=claimed,
    )


async def test_pages_return_every_row_exactly_once_newest_first(
    ledger: PostgresLedger, database: str
) -> None:
    tenants = [f"p{uuid.uuid4().hex[:8]}" for _ in range(4)]
    deaths = [a_death(tenants[n % 4], n, cause=n % 3) for n in range(237)]
    await asyncio.gather(*(ledger.dead(d) for d in deaths))
    connection = await asyncpg.connect(database)
    try:
        dead = DeadLetters(connection)
        mine = Filter(tenants=frozenset(tenants))

        async def every(f: Filter, mark_after_first: bool = False) -> list[int]:
            seen: list[int] = []
            before: int | None = None
            while page := await dead.page(f, before_id=before, limit=50):
                seen += [r.id for r in page]
                before = page[-1].id
                if mark_after_first and len(seen) == 50:
                    # A replay between two pages takes a row of a later page away.
                    assert await dead.mark([before - 1], "replayed", "by a test") == 1
            return seen

        ids = await every(mine)
        assert len(ids) == len(set(ids)) == 237
        assert ids == sorted(ids, reverse=True)
        groups = await dead.groups(mine)
        assert sorted(g.count for g in groups) == [79, 79, 79]
        for group in groups:
            in_group = await every(Filter(tenants=mine.tenants, fingerprints=(group.fingerprint,)))
            assert len(set(in_group)) == len(in_group) == group.count
            assert group.hourly[-1] == group.count  # all in the last hour
            assert sorted(group.tenants) == sorted(tenants)
            assert group.types == ["image", "text"] or group.types == ["text", "image"]
        after_mark = await every(mine, mark_after_first=True)
        assert len(after_mark) == len(set(after_mark)) == 236

        # The counters and the rows say the same, by every dimension.
        counted = await dead.stats(mine)
        from_rows = await dead.stats(
            Filter(tenants=mine.tenants, since=datetime(2000, 1, 1, tzinfo=UTC))
        )
        assert counted.total == from_rows.total == 236
        for name in ("by_category", "by_code", "by_tenant", "by_type"):
            assert getattr(counted, name) == getattr(from_rows, name), name
        assert [(g.fingerprint, g.count) for g in counted.groups] == [
            (g.fingerprint, g.count) for g in from_rows.groups
        ]
        assert counted.group_count == 3
        assert counted.oldest is not None and counted.oldest_internal_id is not None
    finally:
        await connection.close()


async def test_a_claimed_message_that_dies_again_keeps_one_dead_row_an_unclaimed_one_two(
    ledger: PostgresLedger, database: str
) -> None:
    tenant = f"d{uuid.uuid4().hex[:8]}"
    await ledger.dead(a_death(tenant, 1, internal_id="same"))
    await ledger.dead(a_death(tenant, 1, internal_id="same"))  # a dying copy given back
    await ledger.dead(a_death(tenant, 2, internal_id="bad", claimed=False))  # two invalid
    await ledger.dead(a_death(tenant, 2, internal_id="bad", claimed=False))  # copies
    connection = await asyncpg.connect(database)
    try:
        rows = await connection.fetch(
            "SELECT internal_id, state, resolution FROM wa_dead WHERE tenant_id = $1 ORDER BY id",
            tenant,
        )
        dead = DeadLetters(connection)
        assert [(r["internal_id"], r["state"]) for r in rows] == [
            ("same", "replayed"), ("same", "dead"), ("bad", "dead"), ("bad", "dead"),
        ]  # fmt: skip
        assert await dead.count(Filter(tenants=frozenset({tenant}))) == 3
        [alive] = await dead.by_internal_id("same", tenant)
        detail = await dead.detail(alive.id)
        assert detail is not None and detail.state == "dead" and detail.body == b"{}"
        with pytest.raises(ValueError, match="not one of"):
            await dead.mark([1], "dead", None)
    finally:
        await connection.close()


async def test_the_ledger_counts_dead_messages_by_every_dimension_like_the_queue_does(
    ledger: PostgresLedger, database: str
) -> None:
    tenant = f"c{uuid.uuid4().hex[:8]}"
    for n in range(6):
        await ledger.dead(a_death(tenant, n, cause=n % 2))
    connection = await asyncpg.connect(database)
    try:
        stats = await DeadLetters(connection).stats(Filter(tenants=frozenset({tenant})))
    finally:
        await connection.close()
    assert stats.total == 6
    assert stats.by_code == Counter({"131020": 3, "131021": 3})
    assert stats.by_type == Counter({"text": 3, "image": 3})
    assert stats.by_tenant == Counter({tenant: 6})


async def test_prune_takes_old_records_of_messages_that_left_the_dlq_never_one_still_in_it(
    ledger: PostgresLedger, database: str
) -> None:
    from wa_consumer.ledger.queries import prune_dead

    tenant = f"q{uuid.uuid4().hex[:8]}"
    await asyncio.gather(*(ledger.dead(a_death(tenant, n)) for n in range(4)))
    connection = await asyncpg.connect(database)
    try:
        ids = [r["id"] for r in await connection.fetch(
            "SELECT id FROM wa_dead WHERE tenant_id = $1 ORDER BY id", tenant)]  # fmt: skip
        dead = DeadLetters(connection)
        assert await dead.mark(ids[:2], "replayed", "by a test") == 2
        assert await dead.mark(ids[2:3], "resolved", "customer left") == 1
        # Two left the DLQ 40 days ago, one today; one is still in the DLQ (and old).
        await connection.execute(
            "UPDATE wa_dead SET resolved_at = now() - interval '40 days', "
            "died_at = now() - interval '41 days' WHERE id = ANY($1::bigint[])",
            [ids[0], ids[2], ids[3]],
        )
        assert await prune_dead(connection, timedelta(days=30), batch=1) == 2
        left = await connection.fetch(
            "SELECT id, state FROM wa_dead WHERE tenant_id = $1 ORDER BY id", tenant
        )
        assert [(r["id"], r["state"]) for r in left] == [(ids[1], "replayed"), (ids[3], "dead")]
    finally:
        await connection.close()
