"""Delivery statuses against the real PostgreSQL: transitions, order, repeats, statuses that
come before their send, and ambiguous sends reconciled (SPEC §13)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from wa_consumer.ledger.postgres import PostgresLedger
from wa_consumer.ledger.statuses import Applied, Tied
from wa_consumer.message import Outbound, parse
from wa_consumer.seams import Attempt, Claim, Record
from wa_consumer.webhooks.payload import merge, read

from .harness import text_message

pytestmark = pytest.mark.integration

T0 = 1_765_000_000
NUMBER = "106540352242922"


def message(tenant: str = "acme", internal_id: str | None = None, **waba: Any) -> Outbound:
    body = text_message(tenant, "15550123456", internal_id=internal_id or str(uuid.uuid4()))
    body["wabaPayload"].update(waba)
    return parse(orjson.dumps(body))


def wamid() -> str:
    return f"wamid.{uuid.uuid4().hex}"


def status(wamid: str, name: str, at: int = T0, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": name, "timestamp": str(at), "recipient_id": "1555", **extra}


def body(*statuses: dict[str, Any], number: str | None = NUMBER) -> bytes:
    metadata = {"display_phone_number": "1555", "phone_number_id": number}
    value = {"messaging_product": "whatsapp", "metadata": metadata, "statuses": list(statuses)}
    return orjson.dumps(
        {"entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}
    )


@asynccontextmanager
async def ledger_at(database: str) -> AsyncIterator[PostgresLedger]:
    ledger = await PostgresLedger.connect(database)
    await ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close()


async def apply(ledger: PostgresLedger, *statuses: dict[str, Any], **kw: Any) -> list[Applied]:
    return (await apply_and_tie(ledger, *statuses, **kw))[0]


async def apply_and_tie(
    ledger: PostgresLedger, *statuses: dict[str, Any], **kw: Any
) -> tuple[list[Applied], list[Tied]]:
    return await ledger.statuses().apply(merge(read(body(*statuses, **kw)).statuses))


#: A timeout after the request left: the only kind of attempt a callback may tie a status to.
AMBIGUOUS = Attempt(1, datetime.now(UTC), 2000.0, "retry", category="transient",
                    code="timeout", message="no answer", ambiguous=True)  # fmt: skip


async def ambiguous(ledger: PostgresLedger, m: Outbound, status: str = "retry_scheduled") -> None:
    assert await ledger.claim(m) is Claim.CLAIMED
    await ledger.finish(m, Record(status, 1, code="timeout"), [AMBIGUOUS])


async def sent(ledger: PostgresLedger, m: Outbound, wamid: str) -> None:
    assert await ledger.claim(m) is Claim.CLAIMED
    await ledger.finish(m, Record("sent", 0, wamid=wamid), [])


async def row(database: str, wamid: str) -> asyncpg.Record:
    connection = await asyncpg.connect(database)
    try:
        found = await connection.fetchrow("SELECT * FROM wa_deliveries WHERE wamid = $1", wamid)
    finally:
        await connection.close()
    assert found is not None
    return found


async def message_row(database: str, m: Outbound) -> asyncpg.Record:
    connection = await asyncpg.connect(database)
    try:
        found = await connection.fetchrow(
            "SELECT * FROM wa_messages WHERE tenant_id = $1 AND internal_id = $2",
            m.tenant_id,
            m.internal_id,
        )
    finally:
        await connection.close()
    assert found is not None
    return found


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_sent_delivered_read_each_keep_their_time(database: str) -> None:
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        await sent(ledger, m, w)
        [a] = await apply(ledger, status(w, "sent", T0))
        assert (a.tenant_id, a.internal_id, a.was, a.status) == (
            m.tenant_id,
            m.internal_id,
            "accepted",
            "sent",
        )
        await apply(ledger, status(w, "delivered", T0 + 2))
        [a] = await apply(ledger, status(w, "read", T0 + 9))
    assert a.changed and a.status == "read"
    r = await row(database, w)
    assert (r["sent_at"], r["delivered_at"], r["read_at"]) == (at(T0), at(T0 + 2), at(T0 + 9))
    assert r["accepted_at"] is not None
    assert (r["tenant_id"], r["internal_id"]) == (m.tenant_id, m.internal_id)


STEPS = ["sent", "delivered", "read", "failed"]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
async def test_every_order_of_the_four_statuses_ends_failed(
    database: str, order: tuple[int, ...]
) -> None:
    """Applied one webhook at a time: never backwards, failed final, every time recorded."""
    m, w = message(), wamid()
    error = {"code": 131026, "title": "Message undeliverable"}
    async with ledger_at(database) as ledger:
        await sent(ledger, m, w)
        for i in order:
            extra = {"errors": [error]} if STEPS[i] == "failed" else {}
            await apply(ledger, status(w, STEPS[i], T0 + i, **extra))
    r = await row(database, w)
    assert r["status"] == "failed"
    assert [r[f"{s}_at"] for s in STEPS] == [at(T0 + i) for i in range(4)]
    assert (r["error_code"], r["error_category"]) == ("131026", "permanent")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
async def test_read_before_delivered_keeps_read(database: str, order: tuple[int, ...]) -> None:
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        await sent(ledger, m, w)
        for i in order:
            await apply(ledger, status(w, STEPS[i], T0 + i))
    r = await row(database, w)
    assert r["status"] == "read"
    assert [r[f"{s}_at"] for s in STEPS[:3]] == [at(T0 + i) for i in range(3)]


async def test_a_repeated_webhook_changes_nothing(database: str) -> None:
    m, w = message(), wamid()
    pricing = {"billable": True, "pricing_model": "PMP", "category": "utility"}
    async with ledger_at(database) as ledger:
        await sent(ledger, m, w)
        [first] = await apply(ledger, status(w, "delivered", T0, pricing=pricing))
        before = await row(database, w)
        [again] = await apply(ledger, status(w, "delivered", T0 + 60, pricing=pricing))
    after = await row(database, w)
    assert first.changed and not again.changed
    keep = [k for k in before.keys() if k != "updated_at"]  # noqa: SIM118 - a Record iterates values
    assert [before[k] for k in keep] == [after[k] for k in keep]
    assert (after["pricing_billable"], after["pricing_category"]) == (True, "utility")


async def test_a_status_before_the_sends_result_waits_and_is_tied_when_it_lands(
    database: str,
) -> None:
    """No callback data to go by (a message sent before it was set): the wamid ties it."""
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        [a] = await apply(ledger, status(w, "delivered", T0))
        assert (a.tenant_id, a.status) == (None, "delivered")  # kept, not dropped
        await sent(ledger, m, w)
    r = await row(database, w)
    assert (r["tenant_id"], r["internal_id"], r["status"]) == (
        m.tenant_id,
        m.internal_id,
        "delivered",
    )
    assert r["accepted_at"] is not None


async def test_an_ambiguous_send_becomes_sent_when_its_status_arrives(database: str) -> None:
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        await ambiguous(ledger, m)
        # Meta did accept it: its status carries the callback data the daemon set.
        callback = {"biz_opaque_callback_data": m.internal_id}
        _, [tie] = await apply_and_tie(ledger, status(w, "sent", T0, **callback))
        assert tie == Tied(w, m.tenant_id, m.internal_id, "retry_scheduled", True, False)
        # The retry waiting in its queue is now a duplicate; a replay is refused the same way.
        assert await ledger.claim(m) is Claim.ALREADY_SENT
        assert await ledger.claim(m, replays=1) is Claim.ALREADY_SENT
    r = await message_row(database, m)
    assert (r["status"], r["wamid"]) == ("sent", w)


async def test_a_dead_message_whose_status_shows_it_sent_is_never_replayed(database: str) -> None:
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        await ambiguous(ledger, m, "dead")
        await apply(ledger, status(w, "delivered", T0, biz_opaque_callback_data=m.internal_id))
        assert await ledger.claim(m, replays=1) is Claim.ALREADY_SENT


async def test_a_producers_own_callback_data_ties_its_status(database: str) -> None:
    mine = f"order-{uuid.uuid4().hex}"
    m, w = message(biz_opaque_callback_data=mine), wamid()
    async with ledger_at(database) as ledger:
        await ambiguous(ledger, m)
        _, [tie] = await apply_and_tie(ledger, status(w, "sent", T0, biz_opaque_callback_data=mine))
    assert (tie.tenant_id, tie.internal_id, tie.reconciled) == (m.tenant_id, m.internal_id, True)


async def test_a_callback_matching_a_message_that_was_never_ambiguous_ties_nothing(
    database: str,
) -> None:
    """Another app on the account may use callback values equal to our ids: only a message
    whose answer was lost can have a wamid we do not know."""
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        assert await ledger.claim(m) is Claim.CLAIMED
        await ledger.finish(m, Record("retry_scheduled", 1, code="500"), [])  # a clear 500
        applied, ties = await apply_and_tie(
            ledger, status(w, "sent", T0, biz_opaque_callback_data=m.internal_id)
        )
    assert ties == [] and applied[0].tenant_id is None
    assert (await message_row(database, m))["status"] == "retry_scheduled"


async def test_an_ambiguous_attempt_accepted_besides_its_retry_is_said_sent_twice(
    database: str,
) -> None:
    m, first, second = message(), wamid(), wamid()
    async with ledger_at(database) as ledger:
        await ambiguous(ledger, m)
        assert await ledger.claim(m) is Claim.CLAIMED  # the retry, answered this time
        await ledger.finish(m, Record("sent", 1, wamid=second), [])
        _, [tie] = await apply_and_tie(
            ledger, status(first, "delivered", T0, biz_opaque_callback_data=m.internal_id)
        )
    assert (tie.reconciled, tie.sent_twice) == (False, True)
    assert (await message_row(database, m))["wamid"] == second


async def test_a_status_tied_later_once_its_attempt_is_recorded_ambiguous(database: str) -> None:
    """Its `sent` came while the send still waited for its answer (then timed out)."""
    m, w = message(), wamid()
    async with ledger_at(database) as ledger:
        assert await ledger.claim(m) is Claim.CLAIMED
        await apply(ledger, status(w, "sent", T0, biz_opaque_callback_data=m.internal_id))
        await ledger.finish(m, Record("retry_scheduled", 1, code="timeout"), [AMBIGUOUS])
        [tie] = await ledger.statuses().retie()
        assert (tie.wamid, tie.reconciled) == (w, True)
        assert await ledger.claim(m) is Claim.ALREADY_SENT


async def test_a_callback_two_tenants_share_ties_to_neither(database: str) -> None:
    shared = str(uuid.uuid4())
    a, b, w = message("acme", shared), message("globex", shared), wamid()
    async with ledger_at(database) as ledger:
        for m in (a, b):
            await ambiguous(ledger, m)
        [applied] = await apply(ledger, status(w, "sent", T0, biz_opaque_callback_data=shared))
    assert applied.tenant_id is None  # kept until a send records this wamid
    assert (await message_row(database, a))["status"] == "retry_scheduled"


async def test_a_failed_status_is_classified_and_kept_with_its_text(database: str) -> None:
    m, w = message(), wamid()
    error = {"code": 131048, "title": "Spam rate limit hit", "error_data": {"details": "quality"}}
    async with ledger_at(database) as ledger:
        await sent(ledger, m, w)
        [a] = await apply(ledger, status(w, "failed", T0, errors=[error]))
    assert (a.error_category, a.error_code, a.error_message) == ("account", "131048", "quality")
    r = await row(database, w)
    assert (r["status"], r["error_title"]) == ("failed", "Spam rate limit hit")


async def test_a_read_receipt_accepted_without_a_wamid_leaves_no_delivery_row(
    database: str,
) -> None:
    body = {
        "metadata": {"tenantId": "acme", "internalId": str(uuid.uuid4())},
        "wabaPayload": {"messaging_product": "whatsapp", "status": "read", "message_id": "w.1"},
    }
    receipt = parse(orjson.dumps(body))
    async with ledger_at(database) as ledger:
        await sent(ledger, receipt, "")  # the Cloud API answers {"success": true}
    connection = await asyncpg.connect(database)
    try:
        assert await connection.fetchval("SELECT count(*) FROM wa_deliveries WHERE wamid = ''") == 0
    finally:
        await connection.close()


async def test_one_wamid_for_two_results_in_one_statement_fails_nothing(database: str) -> None:
    """A wamid given twice (a broken proxy, a stub) must not fail the statement, which would be
    taken for an outage and pause consuming. (Driven below the batcher, which decides by
    timing what shares a statement.)"""
    from wa_consumer.ledger.postgres import _Claim, _Finish

    a, b, c, w = message(), message(), message(), wamid()
    async with ledger_at(database) as ledger:
        assert {await ledger.claim(a), await ledger.claim(b)} == {Claim.CLAIMED}
        sent = Record("sent", 0, wamid=w)
        out = await ledger._statement([_Finish(a, sent, ()), _Finish(b, sent, ()), _Claim(c, 0)])
        assert out == [None, None, Claim.CLAIMED]
    assert (await message_row(database, a))["status"] == "sent"
    assert (await message_row(database, b))["status"] == "sent"
