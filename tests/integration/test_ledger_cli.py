"""The ledger's commands against the real PostgreSQL: migrate, status, prune (SPEC §8-§9)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from wa_consumer.ledger.migrate import migrate, migrations
from wa_consumer.ledger.queries import message_status, parse_age, prune, resolve

pytestmark = pytest.mark.integration

WAMID = "wamid.HBgNNDkxNTExMjM0NTY3OBUCABEYEjRBRkM2QjA3NzQ2NDE4RjdFQQA="


@pytest.fixture
async def ledger(database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection to this run's database with the schema in place."""
    connection = await asyncpg.connect(database)
    try:
        await migrate(connection)
        yield connection
    finally:
        await connection.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def add_message(
    connection: asyncpg.Connection[Any],
    internal_id: str,
    status: str,
    *,
    age: timedelta = timedelta(0),
    wamid: str | None = None,
    tenant: str = "acme",
) -> None:
    await connection.execute(
        """
        INSERT INTO wa_messages (internal_id, tenant_id, phone_number_id, recipient, type,
            status, wamid, created_at, updated_at)
        VALUES ($1, $5, '106540352242922', '4915112345678', 'text', $2, $3,
            now() - $4::interval, now() - $4::interval)
        """,
        internal_id,
        status,
        wamid,
        age,
        tenant,
    )


async def add_attempt(
    connection: asyncpg.Connection[Any],
    internal_id: str,
    number: int,
    outcome: str,
    *,
    tenant: str = "acme",
    **row: Any,
) -> None:
    await connection.execute(
        """
        INSERT INTO wa_attempts (tenant_id, internal_id, attempt, started_at, latency_ms,
            outcome, http_status, code, subcode, category, message, ambiguous, consumer)
        VALUES ($12, $1, $2, now() - $3::interval, $4, $5, $6, $7, $8, $9, $10, $11, 'test:1')
        """,
        internal_id,
        number,
        row.get("ago", timedelta(0)),
        row.get("latency_ms", 100.0),
        outcome,
        row.get("http_status"),
        row.get("code"),
        row.get("subcode"),
        row.get("category"),
        row.get("message"),
        row.get("ambiguous", False),
        tenant,
    )


async def add_sent_after_a_retry(
    connection: asyncpg.Connection[Any], internal_id: str, tenant: str = "acme"
) -> None:
    """A message that failed once with an ambiguous 500 and was then sent."""
    await add_message(connection, internal_id, "sent", wamid=WAMID, tenant=tenant)
    await connection.execute(
        """
        UPDATE wa_messages SET retries = 1, last_error_code = '131000',
            last_error_category = 'transient', last_error_message = 'Something went wrong',
            metadata = '{"campaign": "spring"}'::jsonb, sent_at = now()
        WHERE tenant_id = $1 AND internal_id = $2
        """,
        tenant,
        internal_id,
    )
    await add_attempt(
        connection,
        internal_id,
        1,
        "retry",
        tenant=tenant,
        ago=timedelta(seconds=31),
        latency_ms=812.5,
        http_status=500,
        code="131000",
        category="transient",
        message="Something went wrong",
        ambiguous=True,
    )
    await add_attempt(
        connection, internal_id, 2, "sent", tenant=tenant, latency_ms=143.0, http_status=200
    )


async def wa_consumer(
    cwd: Path, database_url: str | None, *args: str
) -> tuple[int | None, str, str]:
    """Run the CLI as an operator does; in ``cwd`` so no stray ``.env`` is read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    if database_url is not None:
        env["WA_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wa_consumer",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


# Migrations


async def test_migrate_twice_applies_nothing_the_second_time(database: str) -> None:
    connection = await asyncpg.connect(database)
    try:
        await migrate(connection)
        assert await migrate(connection) == []
        versions = await connection.fetch("SELECT version FROM wa_schema_migrations ORDER BY 1")
        assert [r["version"] for r in versions] == [v for v, _, _ in migrations()]
    finally:
        await connection.close()


async def test_two_daemons_migrating_a_fresh_database_at_once_apply_the_schema_once(
    database: str,
) -> None:
    admin_url = database.rsplit("/", 1)[0] + "/postgres"
    name = f"wa_test_fresh_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        fresh = admin_url.rsplit("/", 1)[0] + f"/{name}"
        first, second = await asyncpg.connect(fresh), await asyncpg.connect(fresh)
        try:
            applied = await asyncio.gather(migrate(first), migrate(second))
            rows = await first.fetch("SELECT version FROM wa_schema_migrations")
            tables = await first.fetchval(
                "SELECT count(*) FROM pg_tables WHERE tablename IN ('wa_messages', 'wa_attempts')"
            )
        finally:
            await first.close()
            await second.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    everything = [n for _, n, _ in migrations()]
    assert sorted(applied, key=len) == [[], everything]
    assert len(rows) == len(everything)
    assert tables == 2


@asynccontextmanager
async def fresh_database(database: str) -> AsyncIterator[str]:
    """An empty database of the test's own (no migration applied); yields its URL."""
    admin_url = database.rsplit("/", 1)[0] + "/postgres"
    name = f"wa_test_fresh_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def at_migration(connection: asyncpg.Connection[Any], last: int) -> None:
    """Apply the packaged migrations up to ``last`` by hand, as an older daemon did."""
    await connection.execute(
        "CREATE TABLE wa_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, sql in migrations():
        if version <= last:
            await connection.execute(sql)
            await connection.execute(
                "INSERT INTO wa_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )


async def test_migrating_a_0002_ledger_to_the_tenant_key_keeps_every_row_and_tenant(
    database: str,
) -> None:
    async with fresh_database(database) as url:
        connection = await asyncpg.connect(url)
        try:
            await at_migration(connection, 2)
            # The 0002 schema: attempts have no tenant, a message's key is its internalId.
            await connection.execute(
                """
                INSERT INTO wa_messages (internal_id, tenant_id, status, wamid, retries)
                VALUES ('m-sent', 'acme', 'sent', $1, 1), ('m-dead', 'globex', 'dead', NULL, 0),
                    ('m-claimed', 'acme', 'claimed', NULL, 0)
                """,
                WAMID,
            )
            await connection.execute(
                """
                INSERT INTO wa_attempts (internal_id, attempt, started_at, latency_ms, outcome)
                VALUES ('m-sent', 1, now(), 812.5, 'retry'), ('m-dead', 1, now(), 90, 'dead'),
                    ('m-sent', 2, now(), 143, 'sent')
                """
            )
            messages = await connection.fetch("SELECT * FROM wa_messages ORDER BY internal_id")
            attempts = await connection.fetch("SELECT * FROM wa_attempts ORDER BY id")

            applied = await migrate(connection)

            assert applied == [name for version, name, _ in migrations() if version > 2]
            after = await connection.fetch("SELECT * FROM wa_messages ORDER BY internal_id")
            added = {"replays", "callback"}  # columns of later migrations
            assert [{k: v for k, v in dict(r).items() if k not in added} for r in after] == [
                dict(r) for r in messages
            ]
            assert {r["replays"] for r in after} == {0}
            assert {r["callback"] for r in after} == {None}
            moved = await connection.fetch("SELECT * FROM wa_attempts ORDER BY id")
            assert [
                {k: v for k, v in dict(r).items() if k not in ("tenant_id", "fbtrace_id")}
                for r in moved
            ] == [dict(r) for r in attempts]
            assert [(r["internal_id"], r["tenant_id"]) for r in moved] == [
                ("m-sent", "acme"),
                ("m-dead", "globex"),
                ("m-sent", "acme"),
            ]
            # Now a second tenant may use the same internalId without touching the first.
            await add_message(connection, "m-sent", "dead", tenant="globex")
            await add_attempt(connection, "m-sent", 1, "dead", tenant="globex")
            acme, globex = await message_status(connection, "m-sent")
            assert (acme["tenant_id"], acme["status"], acme["wamid"]) == ("acme", "sent", WAMID)
            assert [a["outcome"] for a in acme["attempts"]] == ["retry", "sent"]
            assert [a["outcome"] for a in globex["attempts"]] == ["dead"]
            assert globex["attempts"][0]["id"] > attempts[-1]["id"]  # the sequence goes on
        finally:
            await connection.close()


async def test_db_migrate_command_says_up_to_date_when_nothing_is_missing(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    code, out, err = await wa_consumer(tmp_path, database, "db", "migrate")
    assert (code, out.strip(), err) == (0, "up to date", "")


# Status


async def test_status_json_holds_the_record_and_its_attempts_in_order(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = new_id("status-json")
    await add_sent_after_a_retry(ledger, internal_id)

    code, out, err = await wa_consumer(tmp_path, database, "status", internal_id, "--json")

    assert (code, err) == (0, "")
    shown = orjson.loads(out)
    assert shown["internal_id"] == internal_id
    assert (shown["status"], shown["wamid"], shown["retries"]) == ("sent", WAMID, 1)
    assert shown["metadata"] == {"campaign": "spring"}
    assert shown["sent_at"].endswith("+00:00")  # ISO-8601 with the zone
    assert [(a["attempt"], a["outcome"]) for a in shown["attempts"]] == [(1, "retry"), (2, "sent")]
    first = shown["attempts"][0]
    assert (first["http_status"], first["code"], first["ambiguous"]) == (500, "131000", True)
    assert first["latency_ms"] == 812.5


async def test_status_readable_view_shows_the_wamid_and_each_attempt(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = new_id("status-view")
    await add_sent_after_a_retry(ledger, internal_id)

    code, out, err = await wa_consumer(tmp_path, database, "status", internal_id)

    assert (code, err) == (0, "")
    assert internal_id in out
    assert WAMID in out  # on one line, so it can be copied or grepped
    assert "Something went wrong" in out
    assert "812.5" in out and "131000" in out and "retry" in out


async def test_status_of_an_unknown_id_says_so_and_exits_1(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    code, out, err = await wa_consumer(tmp_path, database, "status", new_id("nobody"), "--json")
    assert (code, out) == (1, "")
    assert "no message" in err


async def two_tenants_with_one_id(connection: asyncpg.Connection[Any]) -> str:
    """acme's message sent after a retry and globex's dead one, both with the same internalId."""
    internal_id = new_id("shared")
    await add_sent_after_a_retry(connection, internal_id, tenant="acme")
    await add_message(connection, internal_id, "dead", tenant="globex")
    await add_attempt(
        connection, internal_id, 1, "dead", tenant="globex", http_status=400, code="131026"
    )
    return internal_id


async def test_status_with_tenant_shows_that_tenants_record_and_its_attempts_only(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = await two_tenants_with_one_id(ledger)
    shown = {}
    for tenant in ("acme", "globex"):
        code, out, err = await wa_consumer(
            tmp_path, database, "status", internal_id, "--tenant", tenant, "--json"
        )
        assert (code, err) == (0, "")
        shown[tenant] = orjson.loads(out)

    acme, globex = shown["acme"], shown["globex"]
    assert (acme["tenant_id"], acme["status"], acme["wamid"]) == ("acme", "sent", WAMID)
    assert [(a["attempt"], a["outcome"]) for a in acme["attempts"]] == [(1, "retry"), (2, "sent")]
    assert (globex["tenant_id"], globex["status"], globex["wamid"]) == ("globex", "dead", None)
    assert [(a["outcome"], a["code"]) for a in globex["attempts"]] == [("dead", "131026")]


async def test_status_without_tenant_shows_each_tenants_record_of_a_shared_id(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = await two_tenants_with_one_id(ledger)

    code, out, err = await wa_consumer(tmp_path, database, "status", internal_id)

    assert (code, err) == (0, "")
    assert out.startswith(f"2 tenants use internalId '{internal_id}'; --tenant shows one")
    acme, globex = out.split(f"message {internal_id} of tenant globex")
    assert f"message {internal_id} of tenant acme" in acme
    assert WAMID in acme and "812.5" in acme and "131026" not in acme
    assert "131026" in globex and WAMID not in globex and "812.5" not in globex


async def test_status_json_of_a_shared_id_without_tenant_names_the_tenants_and_exits_2(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = await two_tenants_with_one_id(ledger)

    code, out, err = await wa_consumer(tmp_path, database, "status", internal_id, "--json")

    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "'acme', 'globex'" in err and "--tenant" in err


async def test_status_json_of_an_id_one_tenant_uses_needs_no_tenant(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = new_id("single")
    await add_sent_after_a_retry(ledger, internal_id, tenant="globex")

    code, out, err = await wa_consumer(tmp_path, database, "status", internal_id, "--json")

    assert (code, err) == (0, "")
    assert orjson.loads(out)["tenant_id"] == "globex"


async def test_status_of_an_id_another_tenant_uses_says_so_and_exits_1(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    internal_id = new_id("elsewhere")
    await add_message(ledger, internal_id, "sent", tenant="acme")

    code, out, err = await wa_consumer(
        tmp_path, database, "status", internal_id, "--tenant", "globex"
    )

    assert (code, out) == (1, "")
    assert f"no message '{internal_id}' of tenant 'globex'" in err


async def test_status_without_a_database_url_exits_2_with_one_line(tmp_path: Path) -> None:
    code, out, err = await wa_consumer(tmp_path, None, "status", "anything")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "WA_DATABASE_URL" in err


# Prune and resolve


async def test_prune_removes_only_old_sent_and_dead_messages_with_their_attempts(
    ledger: asyncpg.Connection[Any],
) -> None:
    old = timedelta(days=1000)  # far older than anything another test writes
    gone = [new_id("old-sent") for _ in range(4)] + [new_id("old-dead") for _ in range(3)]
    for internal_id in gone:
        await add_message(ledger, internal_id, "dead" if "dead" in internal_id else "sent", age=old)
        await add_attempt(ledger, internal_id, 1, "sent")
    kept = {
        new_id("recent-sent"): ("sent", timedelta(days=1)),
        new_id("recent-dead"): ("dead", timedelta(0)),
        new_id("old-retry"): ("retry_scheduled", old),
        new_id("old-waiting"): ("waiting", old),
        new_id("old-claimed"): ("claimed", old),
        new_id("old-pending"): ("pending", old),
    }
    for internal_id, (status, age) in kept.items():
        await add_message(ledger, internal_id, status, age=age)

    # batch=3: the seven old rows take three statements.
    removed = await prune(ledger, timedelta(days=900), batch=3)

    assert removed == len(gone)
    ids = gone + list(kept)
    left = await ledger.fetch(
        "SELECT internal_id FROM wa_messages WHERE internal_id = ANY($1)", ids
    )
    assert {r["internal_id"] for r in left} == set(kept)
    orphans = await ledger.fetchval(
        "SELECT count(*) FROM wa_attempts WHERE internal_id = ANY($1)", gone
    )
    assert orphans == 0


async def test_prune_removes_one_tenants_old_record_and_keeps_anothers_with_the_same_id(
    ledger: asyncpg.Connection[Any],
) -> None:
    internal_id = new_id("shared-prune")
    await add_message(ledger, internal_id, "dead", tenant="acme", age=timedelta(days=1000))
    await add_attempt(ledger, internal_id, 1, "dead", tenant="acme")
    await add_message(ledger, internal_id, "sent", tenant="globex")
    await add_attempt(ledger, internal_id, 1, "sent", tenant="globex")

    assert await prune(ledger, timedelta(days=900), batch=1) == 1

    [kept] = await message_status(ledger, internal_id)
    assert kept["tenant_id"] == "globex"
    assert [a["outcome"] for a in kept["attempts"]] == ["sent"]
    left = await ledger.fetchval(
        "SELECT count(*) FROM wa_attempts WHERE internal_id = $1", internal_id
    )
    assert left == 1  # acme's attempt went with its record


async def test_db_prune_command_prints_how_many_it_removed(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    for _ in range(2):
        await add_message(ledger, new_id("cli-old-sent"), "sent", age=timedelta(weeks=600))

    code, out, err = await wa_consumer(
        tmp_path, database, "db", "prune", "--older-than", "520w", "--batch", "1"
    )

    assert (code, err) == (0, "")
    assert out.startswith("removed 2 ")


async def test_db_prune_refuses_an_age_it_cannot_read(database: str, tmp_path: Path) -> None:
    code, out, err = await wa_consumer(tmp_path, database, "db", "prune", "--older-than", "30")
    assert (code, out) == (2, "")
    assert "30d" in err  # the message shows the expected form


async def test_resolve_records_the_note_on_each_message(ledger: asyncpg.Connection[Any]) -> None:
    first, second = new_id("resolve"), new_id("resolve")
    for internal_id in (first, second):
        await add_message(ledger, internal_id, "dead", age=timedelta(days=2))

    keys = [("acme", first), ("acme", second), ("acme", new_id("absent"))]
    changed = await resolve(ledger, keys, "purged: bad template")

    assert changed == 2
    for internal_id in (first, second):
        [record] = await message_status(ledger, internal_id)
        assert record["resolution"] == "purged: bad template"
        assert record["updated_at"] > record["created_at"]  # resolving counts as an update
    assert await resolve(ledger, [], "nothing") == 0


async def test_resolve_changes_only_that_tenants_record_of_a_shared_id(
    ledger: asyncpg.Connection[Any],
) -> None:
    internal_id = new_id("shared-resolve")
    for tenant in ("acme", "globex"):
        await add_message(ledger, internal_id, "dead", tenant=tenant)

    assert await resolve(ledger, [("globex", internal_id)], "purged") == 1

    records = await message_status(ledger, internal_id)
    assert {r["tenant_id"]: r["resolution"] for r in records} == {
        "acme": None,
        "globex": "purged",
    }


# Ages


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_parse_age_reads_a_number_and_a_unit(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "1.5h", "-3d", "3 d", "30D", "1d2h", "0d"])
def test_parse_age_refuses_anything_else_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"age '.*'"):
        parse_age(text)


def test_parse_age_refuses_an_age_too_large_for_a_timedelta() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_age("99999999999w")


# Exit codes and progress lines (for cron and Kubernetes Jobs: stderr is a pipe)


async def test_status_tells_an_unknown_id_exit_1_from_a_database_that_is_down_exit_4(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    code, out, err = await wa_consumer(tmp_path, database, "status", new_id("nobody-here"))
    assert (code, out) == (1, "")
    assert "no message" in err

    down = "postgresql://wa:wa@127.0.0.1:9/wa"  # nothing listens on port 9
    code, out, err = await wa_consumer(tmp_path, down, "status", new_id("nobody-here"))
    assert (code, out) == (4, "")
    assert err.count("\n") == 1 and "cannot open the ledger" in err


async def test_db_migrate_names_each_migration_on_stderr_as_it_applies_it(
    database: str, tmp_path: Path
) -> None:
    async with fresh_database(database) as url:
        code, out, err = await wa_consumer(tmp_path, url, "db", "migrate")
    assert code == 0, err
    names = [name for _, name, _ in migrations()]
    assert out.splitlines() == [f"applied {name}" for name in names]
    assert err.splitlines() == [f"wa-consumer: migrating: applying {name}" for name in names]


async def test_a_long_db_prune_prints_progress_lines_on_stderr_when_it_is_not_a_terminal(
    ledger: asyncpg.Connection[Any], database: str, tmp_path: Path
) -> None:
    await ledger.execute(
        """
        INSERT INTO wa_messages (internal_id, tenant_id, phone_number_id, recipient, type,
            status, created_at, updated_at)
        SELECT 'progress-' || n || '-' || $1, 'acme', '106540352242922', '4915112345678',
            'text', 'sent', now() - interval '700 weeks', now() - interval '700 weeks'
        FROM generate_series(1, 1500) AS n
        """,
        uuid.uuid4().hex,
    )

    code, out, err = await wa_consumer(
        tmp_path, database, "db", "prune", "--older-than", "650w", "--batch", "100"
    )

    assert code == 0, err
    assert out.startswith("removed 1500 ")
    lines = err.splitlines()
    assert lines[0] == "wa-consumer: pruning: 1,000 messages"
    assert lines[-1] == "wa-consumer: pruning: 1,500 messages"
    assert "\x1b" not in err
