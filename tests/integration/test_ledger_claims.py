"""The ledger's claim rules against the real PostgreSQL: tenants apart, liveness, dead is final."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
import pytest

from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.message import Outbound, parse
from wa_consumer.seams import Claim, Record

from .harness import text_message

pytestmark = pytest.mark.integration


def message(tenant: str = "acme", internal_id: str | None = None) -> Outbound:
    body = text_message(tenant, "15550123456", internal_id=internal_id or str(uuid.uuid4()))
    return parse(orjson.dumps(body))


@asynccontextmanager
async def ledger_at(database: str, **kwargs: float) -> AsyncIterator[PostgresLedger]:
    ledger = await PostgresLedger.connect(database, **kwargs)  # type: ignore[arg-type]
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()


async def test_two_tenants_may_use_one_internal_id(database: str) -> None:
    shared = str(uuid.uuid4())
    async with ledger_at(database) as ledger:
        a, b = message("acme", shared), message("globex", shared)
        assert await ledger.claim(a) is Claim.CLAIMED
        await ledger.finish(a, Record("sent", 0, wamid="wamid.A"), [])
        assert await ledger.claim(b) is Claim.CLAIMED  # not acme's duplicate
        assert await ledger.claim(message("acme", shared)) is Claim.ALREADY_SENT


async def test_a_live_consumers_claim_holds_and_a_dead_ones_is_taken_over(database: str) -> None:
    m = message()
    async with ledger_at(database) as holder, ledger_at(database) as other:
        assert await holder.claim(m) is Claim.CLAIMED
        assert await other.claim(m) is Claim.BUSY  # alive: its heartbeat is fresh
        connection = await asyncpg.connect(database)
        try:  # as if the holder had been killed: its heartbeat goes stale
            await connection.execute(
                "UPDATE wa_consumers SET alive_until = now() - interval '1 s' WHERE id = $1",
                holder.consumer,
            )
            holder.heartbeat.stop_beating()
        finally:
            await connection.close()
        assert await other.claim(m) is Claim.CLAIMED  # long before the 60 s lease


async def test_a_result_does_not_overwrite_a_claim_taken_over_unless_it_is_a_send(
    database: str,
) -> None:
    m, n = message(), message()
    async with ledger_at(database) as first, ledger_at(database) as second:
        for msg in (m, n):
            assert await first.claim(msg) is Claim.CLAIMED
        connection = await asyncpg.connect(database)
        try:
            await connection.execute(
                "UPDATE wa_consumers SET alive_until = now() - interval '1 s' WHERE id = $1",
                first.consumer,
            )
            first.heartbeat.stop_beating()
            for msg in (m, n):
                assert await second.claim(msg) is Claim.CLAIMED
            await first.finish(m, Record("retry_scheduled", 1, next_in=30), [])
            await first.finish(n, Record("sent", 0, wamid="wamid.N"), [])
            # The new holder finishes dead; the old one's late result must not undo it.
            o = message()
            assert await second.claim(o) is Claim.CLAIMED
            await second.finish(o, Record("dead", 0, code="131026", category="permanent"), [])
            await first.finish(o, Record("retry_scheduled", 1, next_in=30), [])
            assert await second.claim(o) is Claim.ALREADY_DEAD
            rows = {
                r["internal_id"]: (r["status"], r["claimed_by"])
                for r in await connection.fetch("SELECT * FROM wa_messages")
            }
        finally:
            await connection.close()
    assert rows[m.internal_id] == ("claimed", second.consumer)  # the holder's claim kept
    assert rows[n.internal_id] == ("sent", None)  # Meta accepted it: recorded whoever holds it


async def test_dead_is_final_until_a_replay_and_dying_is_dead_lettered_again(
    database: str,
) -> None:
    dead, dying = message(), message()
    async with ledger_at(database) as ledger:
        for msg in (dead, dying):
            assert await ledger.claim(msg) is Claim.CLAIMED
        await ledger.finish(dead, Record("dead", 0, code="131026", category="permanent"), [])
        reason = Record("dying", 0, code="131026", category="permanent", message="undeliverable")
        await ledger.finish(dying, reason, [])
        assert await ledger.claim(dead) is Claim.ALREADY_DEAD
        assert await ledger.claim(dying) is Claim.DYING
        failure = ledger.recorded_failure(dying)
        assert failure is not None
        assert (failure.category, failure.code, failure.message) == (
            "permanent",
            "131026",
            "undeliverable",
        )
        assert await ledger.claim(dead, replays=1) is Claim.CLAIMED  # an operator's replay


async def test_a_clean_exit_removes_the_heartbeat(database: str) -> None:
    async with ledger_at(database) as ledger:
        consumer = ledger.consumer
    connection = await asyncpg.connect(database)
    try:
        left = await connection.fetchval(
            "SELECT count(*) FROM wa_consumers WHERE id = $1", consumer
        )
    finally:
        await connection.close()
    assert left == 0
