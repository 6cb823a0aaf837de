"""The console's DLQ actions from the command line, against the real RabbitMQ, PostgreSQL, the
daemon and the sandbox: ``dlq edit`` (edit and retry), ``dlq replay --canary`` (a canary
first, the rest only when it was sent), and the audit trail of ``dlq replay`` and ``purge``.

Dead messages are made by the daemon itself (recipients ``15550000001``...: undeliverable,
``permanent``), so their rows in the ledger's mirror and their copies in the DLQ are the
daemon's own.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from wa_consumer.ledger.migrate import migrate
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

from .harness import Broker, broker_for, make_settings, running, text_message, wait_for
from .scratch_db import scratch_database
from .test_dlq import bury, dead_headers, env_for, id_of

pytestmark = pytest.mark.integration

UNDELIVERABLE = "15550000001"  # the sandbox's rule: 131026, permanent
DELIVERABLE = "27829998888"
ACTOR = "ops@runbook"


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database of each test's own (the audit trail and the groups are this test's)."""
    async with scratch_database("wa_dlq_cli") as url:
        yield url


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    connection = await asyncpg.connect(database)
    await migrate(connection)
    try:
        yield connection
    finally:
        await connection.close()


async def cli(
    settings: Settings,
    tmp_path: Path,
    *args: str,
    database: str | None = None,
    stdin: bytes = b"",
) -> tuple[int | None, str, str]:
    """``wa-consumer dlq ...`` as an operator runs it, ``stdin`` its input."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wa_consumer", "dlq", *args,
        env=env_for(settings, database), cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 120)
    return process.returncode, out.decode(), err.decode()


async def kill(broker: Broker, db: asyncpg.Connection[Any], n: int) -> list[str]:
    """``n`` messages the running daemon sends to the DLQ; their internalIds, once the
    ledger's mirror holds every one."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for internal_id in ids:
        await broker.publish(text_message("acme", UNDELIVERABLE, internal_id=internal_id))
    await wait_for(lambda: dead_rows(db, ids, n), timeout=30)
    return ids


async def dead_rows(db: asyncpg.Connection[Any], ids: list[str], n: int) -> bool:
    found = await db.fetchval(
        "SELECT count(*) FROM wa_dead WHERE state = 'dead' AND internal_id = ANY($1)", ids
    )
    return bool(found == n)


async def sent(db: asyncpg.Connection[Any], ids: list[str]) -> bool:
    found = await db.fetchval(
        "SELECT count(*) FROM wa_messages WHERE status = 'sent' AND internal_id = ANY($1)", ids
    )
    return bool(found == len(ids))


async def fingerprint_of(db: asyncpg.Connection[Any], ids: list[str]) -> str:
    [fp] = {
        r["fingerprint"]
        for r in await db.fetch("SELECT fingerprint FROM wa_dead WHERE internal_id = ANY($1)", ids)
    }
    return str(fp)


async def actions(db: asyncpg.Connection[Any]) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT actor, action, target, reason, details::text AS details FROM wa_actions ORDER BY id"
    )
    return [{**dict(r), "details": orjson.loads(r["details"] or "null")} for r in rows]


def sent_to(sandbox: Any, to: str) -> int:
    return sum(
        1
        for r in sandbox.state.requests()
        if r["outcome"] == "sent" and (r["body"] or {}).get("to") == to
    )


def sends_of(sandbox: Any, ids: list[str]) -> list[str]:
    """The internalIds the sandbox accepted a send of, once per send."""
    return [
        r["body"]["biz_opaque_callback_data"]
        for r in sandbox.state.requests()
        if r["outcome"] == "sent" and (r["body"] or {}).get("biz_opaque_callback_data") in ids
    ]


# -- dlq edit ----------------------------------------------------------------------------------


async def test_dlq_edit_sends_the_edit_once_removes_the_original_and_keeps_its_body(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    async with running(settings), broker_for(settings) as broker:
        by_id, by_row = await kill(broker, db, 2)
        dead_id = await db.fetchval("SELECT id FROM wa_dead WHERE internal_id = $1", by_row)
        original = orjson.loads(
            await db.fetchval("SELECT body FROM wa_dead WHERE internal_id = $1", by_id)
        )
        edited = {**original, "wabaPayload": {**original["wabaPayload"], "to": DELIVERABLE}}
        requests_before = len(sandbox.state.requests())

        # Refused, nothing changed: a body that can never be sent, another internalId, an
        # unknown message, and no ledger to find it in.
        bad = {**edited, "wabaPayload": {**edited["wabaPayload"], "type": "nonsense"}}
        other = {**edited, "metadata": {**edited["metadata"], "internalId": "another"}}
        for body, code, said in [
            (bad, 2, "unknown type"),
            (other, 2, "internalId must stay"),
        ]:
            path = tmp_path / "edit.json"
            path.write_bytes(orjson.dumps(body))
            exit_code, _, err = await cli(
                settings, tmp_path, "edit", by_id, "--file", str(path), "--reason", "r",
                database=database,
            )  # fmt: skip
            assert (exit_code, said in err) == (code, True), err
        exit_code, _, err = await cli(
            settings, tmp_path, "edit", "no-such-id", "--file", "-", "--reason", "r",
            database=database, stdin=orjson.dumps(edited),
        )  # fmt: skip
        assert exit_code == 1 and "no dead message 'no-such-id'" in err
        exit_code, _, err = await cli(
            settings, tmp_path, "edit", by_id, "--file", "-", "--reason", "r",
            stdin=orjson.dumps(edited),
        )  # fmt: skip
        assert exit_code == 2 and "needs the ledger (WA_DATABASE_URL)" in err
        assert await broker.count(settings.dead_letter_queue) == 2
        assert len(sandbox.state.requests()) == requests_before
        assert await dead_rows(db, [by_id, by_row], 2)
        assert await actions(db) == []

        # By internalId, from a file; by the ledger's row id, from stdin.
        path.write_bytes(orjson.dumps(edited))
        exit_code, out, err = await cli(
            settings, tmp_path, "edit", by_id, "--file", str(path), "--reason", "typo",
            "--actor", ACTOR, "--json", database=database,
        )  # fmt: skip
        assert exit_code == 0, err
        result = orjson.loads(out)
        assert (result["internal_id"], result["removed_from_dlq"]) == (by_id, 1)
        assert result["replay_count"] == 1
        second = {**edited, "metadata": {**edited["metadata"], "internalId": by_row}}
        exit_code, out, err = await cli(
            settings, tmp_path, "edit", str(dead_id), "--file", "-", "--reason", "typo",
            "--actor", ACTOR, database=database, stdin=orjson.dumps(second),
        )  # fmt: skip
        assert exit_code == 0, err
        assert "1 original removed from the DLQ" in out

        await wait_for(lambda: sent(db, [by_id, by_row]), timeout=30)
        await asyncio.sleep(0.5)  # time for a second send, if there were one
        assert sorted(sends_of(sandbox, [by_id, by_row])) == sorted([by_id, by_row])
        assert sent_to(sandbox, DELIVERABLE) == 2
        assert await broker.count(settings.dead_letter_queue) == 0

    rows = await db.fetch(
        "SELECT internal_id, state, resolution, body FROM wa_dead WHERE internal_id = ANY($1)",
        [by_id, by_row],
    )
    assert {(r["state"], r["resolution"]) for r in rows} == {
        ("edited", f"edited and retried by {ACTOR}")
    }
    for row in rows:  # the original body, kept
        assert orjson.loads(row["body"])["wabaPayload"]["to"] == UNDELIVERABLE
    trail = await actions(db)
    assert [(a["action"], a["actor"], a["reason"]) for a in trail] == [
        ("message_edit_retry", ACTOR, "typo")
    ] * 2
    assert [a["target"] for a in trail] == [f"message:{by_id}", f"message:{by_row}"]
    assert orjson.loads(trail[0]["details"]["original"])["wabaPayload"]["to"] == UNDELIVERABLE


# -- dlq replay --canary -----------------------------------------------------------------------


async def test_a_canary_that_dies_again_stops_the_replay_and_the_rest_stays_dead(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    async with running(settings), broker_for(settings) as broker:
        ids = await kill(broker, db, 8)
        fp = await fingerprint_of(db, ids)
        canary = ["replay", "--fingerprint", fp, "--canary", "3", "--canary-wait", "30"]

        # At the prompt, the operator sees the canary die again and says no.
        exit_code, out, err = await cli(
            settings, tmp_path, *canary, "--reason", "try", database=database, stdin=b"n\n"
        )
        assert exit_code == 1, err
        assert "canary: 0 sent, 3 dead again, 0 pending" in out
        assert out.count("dead again: permanent 131026") == 3
        assert "Replay the rest?" in err and "stopped after the canary (declined)" in err
        await wait_for(lambda: dead_rows(db, ids, 8), timeout=30)

        # --yes goes on only when every canary message was sent: not so here.
        exit_code, out, err = await cli(
            settings, tmp_path, *canary, "--yes", "--json", "--actor", ACTOR, database=database
        )
        assert exit_code == 1, err
        shown = orjson.loads(out)
        assert (shown["canary"]["replayed"], shown["canary"]["dead"]) == (3, 3)
        assert {o["category"] for o in shown["canary"]["outcomes"]} == {"permanent"}
        assert (shown["continued"], shown["rest"]) == (False, None)
        assert "stopped after the canary (0 of 3 sent)" in err
        await wait_for(lambda: dead_rows(db, ids, 8), timeout=30)
        assert await broker.count(settings.dead_letter_queue) == 8  # the rest stayed dead
        assert await broker.count(settings.queue) == 0
        assert sends_of(sandbox, ids) == []

    trail = await actions(db)
    assert [a["action"] for a in trail] == [
        "dlq_replay_canary", "dlq_replay_stopped", "dlq_replay_canary", "dlq_replay_stopped"
    ]  # fmt: skip
    assert {a["target"] for a in trail} == {f"group:{fp}"}
    assert [a["reason"] for a in trail] == ["try", "try", None, None]
    assert trail[3]["actor"] == ACTOR and trail[1]["actor"].endswith("(cli)")
    assert trail[3]["details"]["canary"] == {"sent": 0, "dead": 3, "pending": 0}
    assert trail[2]["details"]["filter"] == {"fingerprints": [fp]}
    assert len(trail[2]["details"]["canary"]) == 3


async def test_a_canary_that_is_sent_lets_the_rest_go_with_yes_and_each_is_sent_once(
    vhost: str, sandbox: Any, database: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    settings = make_settings(vhost, sandbox.url, database_url=database)
    async with running(settings), broker_for(settings) as broker:
        ids = await kill(broker, db, 10)
        fp = await fingerprint_of(db, ids)
        # A death of the same cause that comes after the replay began: it must stay.
        headers = orjson.loads(await db.fetchval("SELECT headers FROM wa_dead LIMIT 1"))
        headers["x-failed-at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        later = str(uuid.uuid4())
        body = orjson.dumps(text_message("acme", UNDELIVERABLE, internal_id=later))
        await bury(broker, body, headers, later)

        sandbox.state.configure(rules=())  # the cause is fixed: every recipient is sent
        exit_code, out, err = await cli(
            settings, tmp_path, "replay", "--fingerprint", fp, "--canary", "3", "--yes",
            "--rate", "50", "--reason", "fixed", "--json", database=database,
        )  # fmt: skip
        assert exit_code == 0, err
        shown = orjson.loads(out)
        assert (shown["canary"]["sent"], shown["continued"]) == (3, True)
        assert shown["rest"]["replayed"] == 7
        await wait_for(lambda: sent(db, ids), timeout=30)
        await asyncio.sleep(0.5)  # time for a second send, if there were one
        assert sorted(sends_of(sandbox, ids)) == sorted(ids)  # each once
        assert [id_of(m) for m in await broker.drain(settings.dead_letter_queue)] == [later]

    trail = await actions(db)
    assert [a["action"] for a in trail] == [
        "dlq_replay_canary", "dlq_replay_continue", "dlq_replay"
    ]  # fmt: skip
    assert {(a["target"], a["reason"]) for a in trail} == {(f"group:{fp}", "fixed")}
    assert trail[2]["details"]["replayed"] == 7 and trail[2]["details"]["rate"] == 50


# -- the audit trail of replay and purge -------------------------------------------------------


async def test_replay_and_purge_are_recorded_with_who_why_the_filter_and_what_they_did(
    vhost: str, database: str, db: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    settings = make_settings(vhost, "http://127.0.0.1:9", database_url=database)
    async with broker_for(settings) as broker:
        await declare(broker.connection, Topology.from_settings(settings))
        ids = []
        for code in ("131026", "131026", "131047"):
            internal_id = str(uuid.uuid4())
            body = orjson.dumps(text_message("acme", "27820001234", internal_id=internal_id))
            await bury(broker, body, _dead(code, internal_id), internal_id)
            ids.append(internal_id)

        exit_code, _, err = await cli(
            settings, tmp_path, "replay", "--id", ids[0], "--dry-run", database=database
        )
        assert exit_code == 0, err
        assert await actions(db) == []  # a dry run changes nothing: nothing to record
        exit_code, _, err = await cli(
            settings, tmp_path, "replay", "--id", ids[0], "--reason", "recipient fixed",
            "--actor", ACTOR, database=database,
        )  # fmt: skip
        assert exit_code == 0, err
        exit_code, _, err = await cli(
            settings, tmp_path, "purge", "--code", "131026", "--yes", "--reason", "opted out",
            database=database,
        )  # fmt: skip
        assert exit_code == 0, err
        assert [id_of(m) for m in await broker.drain(settings.dead_letter_queue)] == [ids[2]]

    replayed, purged = await actions(db)
    assert (replayed["action"], replayed["actor"], replayed["reason"]) == (
        "dlq_replay", ACTOR, "recipient fixed"
    )  # fmt: skip
    assert replayed["target"] == f"message:{ids[0]}"
    assert replayed["details"]["filter"] == {"ids": [ids[0]]}
    assert replayed["details"]["replayed"] == 1
    assert (purged["action"], purged["reason"], purged["target"]) == (
        "dlq_purge", "opted out", f"dlq:{settings.dead_letter_queue}"
    )  # fmt: skip
    assert purged["actor"].endswith("(cli)")
    assert (purged["details"]["filter"], purged["details"]["removed"]) == ({"codes": ["131026"]}, 1)


def _dead(code: str, internal_id: str) -> dict[str, Any]:
    return dead_headers("permanent", code, f"({code}) failed for {internal_id}", "acme")
