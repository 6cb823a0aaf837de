"""The pipeline's fault paths (SPEC §4, §5), driven with fakes in milliseconds.

Every delivery ends in exactly one call to the settler; a data problem of one message is
that message's ``invalid``; a message whose request may have reached Meta is never handed
back as unsent.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from wa_consumer.categories import DEAD, Category
from wa_consumer.errors import GraphTransportError, LedgerUnavailable
from wa_consumer.message import with_callback
from wa_consumer.outcomes import Dead, Delivered, Duplicate, HandBack, Recount, Retry
from wa_consumer.seams import Claim

from .pipeline_fakes import (
    MAX_DELIVERIES,
    METADATA,
    NUMBER,
    OTHER_NUMBER,
    TENANT,
    WABA,
    CountingSource,
    FakeDelivery,
    FakeLedger,
    HeldLimiter,
    StubGraph,
    accepted,
    body,
    meta_error,
    rig,
    settle_one,
)


def dead(outcome: object, category: Category) -> Dead:
    assert isinstance(outcome, Dead), outcome
    assert outcome.failure.category == category, outcome
    assert outcome.failure.category in DEAD
    assert outcome.failure.message
    return outcome


def retry(outcome: object, step: float, category: Category, *, counts: bool = True) -> Retry:
    assert isinstance(outcome, Retry), outcome
    assert (outcome.delay, outcome.counts, outcome.failure.category) == (step, counts, category)
    assert outcome.queue.startswith("outbound-retry-")
    return outcome


# -- each outcome of SPEC §4, one settle each ------------------------------------------------


async def test_accepted_message_is_delivered_with_its_wamid_and_body_sent_unchanged() -> None:
    r = rig(StubGraph(accepted("wamid.X")))
    call = await settle_one(r, FakeDelivery(body()))
    assert call.outcome == Delivered("wamid.X")
    assert call.tenant_id == TENANT
    sent = orjson.dumps(with_callback(WABA, METADATA["internalId"]))
    assert r.graph.calls == [(NUMBER, "token-1", sent)]
    [(_, record, attempts)] = r.ledger.finishes
    assert (record.status, record.wamid) == ("sent", "wamid.X")
    assert [a.outcome for a in attempts] == ["sent"]
    assert r.limiter.sends == [(NUMBER, WABA["to"])]


async def test_retryable_failure_goes_to_the_first_wait_queue() -> None:
    r = rig(StubGraph(meta_error(500)))
    call = await settle_one(r, FakeDelivery(body()))
    outcome = retry(call.outcome, 30.0, Category.TRANSIENT)
    assert outcome.failure.code == "500"
    assert r.ledger.finishes[0][1].status == "retry_scheduled"


async def test_third_retry_uses_the_third_step_of_the_ladder() -> None:
    r = rig(StubGraph(meta_error(503)))
    call = await settle_one(r, FakeDelivery(body(), headers={"x-retry-count": 2}))
    retry(call.outcome, 600.0, Category.TRANSIENT)


async def test_retryable_failure_with_no_retries_left_is_dead_retries_exhausted() -> None:
    r = rig(StubGraph(meta_error(500)))
    call = await settle_one(r, FakeDelivery(body(), headers={"x-retry-count": 5}))
    outcome = dead(call.outcome, Category.RETRIES_EXHAUSTED)
    assert outcome.failure.code == "500"
    assert "after 5 retries" in outcome.failure.message


@pytest.mark.parametrize(
    ("code", "category"),
    [(131026, Category.PERMANENT), (131031, Category.ACCOUNT), (None, Category.PERMANENT)],
)
async def test_non_retryable_failure_is_dead_with_its_category(
    code: int | None, category: Category
) -> None:
    r = rig(StubGraph(meta_error(400, code, subcode=2494010)))
    call = await settle_one(r, FakeDelivery(body()))
    outcome = dead(call.outcome, category)
    assert outcome.failure.code == str(code or 400)
    assert outcome.failure.subcode == 2494010
    assert len(r.graph.calls) == 1


@pytest.mark.parametrize(("code", "step"), [(130429, 120.0), (131056, 30.0)])
async def test_rate_limit_waits_at_least_its_minimum_and_slows_the_number(
    code: int, step: float
) -> None:
    r = rig(StubGraph(meta_error(400, code)))
    call = await settle_one(r, FakeDelivery(body()))
    retry(call.outcome, step, Category.RATE_LIMITED)
    assert r.limiter.feedbacks == [(NUMBER, WABA["to"], str(code))]


async def test_connect_error_retries_without_an_ambiguous_attempt() -> None:
    err = GraphTransportError("refused", maybe_sent=False, short_code="connect_error")
    r = rig(StubGraph(err))
    call = await settle_one(r, FakeDelivery(body()))
    retry(call.outcome, 30.0, Category.TRANSIENT)
    [(_, _, attempts)] = r.ledger.finishes
    assert [(a.code, a.ambiguous) for a in attempts] == [("connect_error", False)]


async def test_timeout_after_sending_retries_and_records_the_attempt_as_ambiguous() -> None:
    err = GraphTransportError("no answer", maybe_sent=True, short_code="timeout")
    r = rig(StubGraph(err))
    call = await settle_one(r, FakeDelivery(body()))
    retry(call.outcome, 30.0, Category.TRANSIENT)
    [(_, _, attempts)] = r.ledger.finishes
    assert [(a.code, a.ambiguous) for a in attempts] == [("timeout", True)]


async def test_already_sent_is_a_duplicate_and_not_sent_again() -> None:
    r = rig(ledger=FakeLedger(Claim.ALREADY_SENT))
    call = await settle_one(r, FakeDelivery(body()))
    assert call.outcome == Duplicate()
    assert r.graph.calls == []
    assert r.ledger.finishes == []


async def test_past_expires_at_is_dead_expired_without_a_call() -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = rig()
    call = await settle_one(r, FakeDelivery(body({"expiresAt": past})))
    assert "expiresAt" in dead(call.outcome, Category.EXPIRED).failure.message
    assert (r.graph.calls, r.ledger.claims) == ([], [])


async def test_message_older_than_the_max_age_is_dead_expired() -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    r = rig()
    call = await settle_one(r, FakeDelivery(body(), timestamp=old.replace(tzinfo=None)))
    assert "maximum age" in dead(call.outcome, Category.EXPIRED).failure.message
    assert r.graph.calls == []


async def test_first_failure_older_than_the_max_age_is_dead_expired() -> None:
    first = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    r = rig()
    call = await settle_one(r, FakeDelivery(body(), headers={"x-first-failed-at": first}))
    dead(call.outcome, Category.EXPIRED)


async def test_unknown_tenant_is_dead_tenant_unknown() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(body({"tenantId": "nobody"})))
    dead(call.outcome, Category.TENANT_UNKNOWN)
    assert call.tenant_id == "nobody"
    assert (r.graph.calls, r.ledger.claims) == ([], [])


async def test_number_not_the_tenants_is_dead_tenant_mismatch() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(body({"phoneNumberId": "999"})))
    dead(call.outcome, Category.TENANT_MISMATCH)
    assert r.graph.calls == []


async def test_another_of_the_tenants_numbers_is_sent_from() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(body({"phoneNumberId": OTHER_NUMBER})))
    assert isinstance(call.outcome, Delivered)
    assert r.graph.calls[0][0] == OTHER_NUMBER


async def test_throttled_waits_without_counting_a_retry_or_claiming() -> None:
    r = rig(limiter=HeldLimiter(allow=False))
    call = await settle_one(r, FakeDelivery(body(), headers={"x-retry-count": 5}))
    retry(call.outcome, 30.0, Category.THROTTLED, counts=False)
    assert (r.graph.calls, r.ledger.claims) == ([], [])


async def test_message_held_by_another_consumer_waits_without_counting_a_retry() -> None:
    r = rig(ledger=FakeLedger(Claim.BUSY))
    call = await settle_one(r, FakeDelivery(body()))
    retry(call.outcome, 30.0, Category.BUSY, counts=False)
    assert r.graph.calls == []


async def test_redelivery_past_the_bound_is_dead_crash_loop_without_a_send() -> None:
    r = rig()
    headers = {"x-deliveries": MAX_DELIVERIES - 1}
    call = await settle_one(r, FakeDelivery(body(), headers=headers, redelivered=True))
    dead(call.outcome, Category.CRASH_LOOP)
    assert r.graph.calls == []


async def test_quorum_delivery_count_also_bounds_a_crash_loop() -> None:
    r = rig()
    headers = {"x-delivery-count": MAX_DELIVERIES}
    call = await settle_one(r, FakeDelivery(body(), headers=headers, redelivered=True))
    dead(call.outcome, Category.CRASH_LOOP)


async def test_redelivery_under_the_bound_is_requeued_with_its_count() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(body(), headers={"x-deliveries": 1}, redelivered=True))
    assert call.outcome == Recount(2)
    assert r.graph.calls == []


async def test_redelivery_is_left_to_a_ledger_that_counts_deliveries() -> None:
    r = rig(ledger=FakeLedger(counts_deliveries=True))
    headers = {"x-deliveries": MAX_DELIVERIES}
    call = await settle_one(r, FakeDelivery(body(), headers=headers, redelivered=True))
    assert isinstance(call.outcome, Delivered)


async def test_ledger_crash_loop_claim_is_dead_crash_loop_and_recorded() -> None:
    r = rig(ledger=FakeLedger(Claim.CRASH_LOOP))
    call = await settle_one(r, FakeDelivery(body()))
    dead(call.outcome, Category.CRASH_LOOP)
    assert r.graph.calls == []
    [(_, record, _)] = r.ledger.finishes
    assert (record.status, record.category) == ("dead", Category.CRASH_LOOP)


async def test_row_the_ledger_refuses_is_dead_invalid_without_a_send() -> None:
    r = rig(ledger=FakeLedger(Claim.REFUSED))
    call = await settle_one(r, FakeDelivery(body()))
    assert "ledger" in dead(call.outcome, Category.INVALID).failure.message
    assert r.graph.calls == []
    assert r.ledger.finishes == []  # never claimed: nothing to finish
    assert r.ledger_down == []


async def test_unreachable_ledger_hands_back_and_pauses_consuming() -> None:
    r = rig(ledger=FakeLedger(LedgerUnavailable("connection refused")))
    call = await settle_one(r, FakeDelivery(body()))
    assert call.outcome == HandBack()
    assert r.ledger_down == [None]
    assert r.graph.calls == []
    assert r.ledger.finishes == []


async def test_paused_pipeline_hands_back_without_reading_the_body() -> None:
    r = rig()
    r.pipeline.pause()
    call = await settle_one(r, FakeDelivery(b"not even json"))
    assert call.outcome == HandBack()
    assert (r.graph.calls, r.ledger.claims, r.source.fetched) == ([], [], 0)


async def test_unexpected_error_in_a_stage_still_settles_once_as_a_retry() -> None:
    r = rig(StubGraph(RuntimeError("a bug")))
    call = await settle_one(r, FakeDelivery(body()))
    outcome = retry(call.outcome, 30.0, Category.TRANSIENT)
    assert outcome.failure.code == "internal_error"
    assert "RuntimeError" in outcome.failure.message
    assert len(r.ledger.finishes) == 1  # the claim is finished, not left held


async def test_unexpected_error_while_on_the_wire_records_an_ambiguous_attempt() -> None:
    r = rig(StubGraph(OSError("connection reset after the body was written")))
    call = await settle_one(r, FakeDelivery(body()))
    assert isinstance(call.outcome, Retry)
    [(_, _, attempts)] = r.ledger.finishes
    assert [a.ambiguous for a in attempts] == [True]


async def test_every_delivery_of_a_mixed_burst_is_settled_exactly_once() -> None:
    r = rig(StubGraph(accepted(), meta_error(500), meta_error(400, 131026)))
    deliveries = [
        FakeDelivery(body({"internalId": f"m-{i}"}), delivery_tag=i + 1) for i in range(20)
    ]
    deliveries += [FakeDelivery(b"{", delivery_tag=21), FakeDelivery(b"[]", delivery_tag=22)]
    tasks = [r.pipeline.receive(d) for d in deliveries]  # type: ignore[arg-type]
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert r.settler.registered == deliveries  # registered in delivery order, before awaiting
    assert [len(r.settler.of(d)) for d in deliveries] == [1] * len(deliveries)
    assert r.pipeline.in_flight == set()
    assert sum(r.pipeline.counts.values()) == len(deliveries)


# -- invalid messages: dead, with a reason, never retried ------------------------------------

INVALID_BODIES = {
    "empty": b"",
    "not json": b"not json",
    "not utf-8": b"\xff\xfe{}",
    "array": b"[]",
    "string": b'"hello"',
    "null": b"null",
    "metadata not an object": orjson.dumps({"metadata": [], "wabaPayload": WABA}),
    "no internalId": orjson.dumps({"metadata": {"tenantId": TENANT}, "wabaPayload": WABA}),
    "tenantId a number": body({"tenantId": 42}),
    "internalId a list": body({"internalId": ["m-1"]}),
    "internalId empty": body({"internalId": ""}),
    "tenantId with NUL": body({"tenantId": "ac\x00me"}),
    "tenantId huge": body({"tenantId": "t" * 140_000}),
    "phoneNumberId letters": body({"phoneNumberId": "abc"}),
    "unknown type": body(type="hologram"),
    "text without body": body(text={}),
    "to too long": body(to="1" * 65),
    "huge body": b" " * (300 * 1024),
}


@pytest.mark.parametrize("raw", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
async def test_invalid_body_is_dead_invalid_with_a_reason_and_no_call(raw: bytes) -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(raw, message_id="producer-id"))
    outcome = dead(call.outcome, Category.INVALID)
    assert outcome.failure.code == Category.INVALID
    assert (r.graph.calls, r.ledger.claims, r.ledger.finishes) == ([], [], [])
    # A usable tenant id, from the body or else from the routing key, never a huge one.
    assert call.tenant_id == TENANT


async def test_invalid_body_without_ids_takes_the_tenant_from_the_routing_key() -> None:
    r = rig()
    delivery = FakeDelivery(b"{}", routing_key="outbound.processed.globex")
    call = await settle_one(r, delivery)
    dead(call.outcome, Category.INVALID)
    assert call.tenant_id == "globex"


async def test_invalid_body_with_an_unusable_routing_key_has_no_tenant() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(b"{}", routing_key="elsewhere"))
    dead(call.outcome, Category.INVALID)
    assert call.tenant_id is None


async def test_huge_routing_key_tenant_is_cut() -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(b"{}", routing_key="outbound.processed." + "t" * 9000))
    assert call.tenant_id is not None
    assert len(call.tenant_id.encode()) <= 256


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    return value


BAD_COUNTS = {
    "past 32 bits": 3_000_000_000,
    "past 64 bits": 2**70,
    "negative": -1,
    "past the bound": 1_000_001,
    "letters": "abc",
    "digits too long": "9" * 400,
    "not utf-8": b"\xff\xfe",
    "bytearray": bytearray(b"\x00\x01"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "nan": float("nan"),
    "1e300": 1e300,
    "fraction": 1.5,
    "decimal fraction": Decimal("2.5"),
    "decimal nan": Decimal("NaN"),
    "decimal snan": Decimal("sNaN"),
    "table": {"count": 1},
    "deep table": nested(50),
    "array": [1],
    "true": True,
    "false": False,
    "datetime": datetime(2026, 1, 1, tzinfo=UTC),
}


@pytest.mark.parametrize("value", BAD_COUNTS.values(), ids=BAD_COUNTS.keys())
async def test_unusable_retry_count_is_dead_invalid_never_an_exception_or_a_stall(
    value: Any,
) -> None:
    r = rig()
    call = await settle_one(r, FakeDelivery(body(), headers={"x-retry-count": value}), 1.0)
    outcome = dead(call.outcome, Category.INVALID)
    assert "x-retry-count" in outcome.failure.message
    assert len(outcome.failure.message) < 300
    assert (r.graph.calls, r.ledger.claims) == ([], [])
    assert call.tenant_id == TENANT  # from the routing key: the body was not read


@pytest.mark.parametrize("name", ["x-deliveries", "x-delivery-count"])
@pytest.mark.parametrize("value", [-1, 3_000_000_000, "abc", float("nan"), True])
async def test_unusable_delivery_count_is_dead_invalid(name: str, value: Any) -> None:
    r = rig()
    delivery = FakeDelivery(body(), headers={name: value}, redelivered=True)
    call = await settle_one(r, delivery, 1.0)
    assert name in dead(call.outcome, Category.INVALID).failure.message


@pytest.mark.parametrize("value", [0, 3, "3", b"3", 3.0, Decimal(3), 1_000_000 - 1])
async def test_usable_retry_count_of_any_amqp_type_is_read(value: Any) -> None:
    r = rig(StubGraph(meta_error(500)))
    call = await settle_one(r, FakeDelivery(body(), headers={"x-retry-count": value}))
    expected = int(value) if not isinstance(value, bytes) else int(value.decode())
    if expected >= 5:
        dead(call.outcome, Category.RETRIES_EXHAUSTED)
    else:
        assert isinstance(call.outcome, Retry)
        assert r.ledger.finishes[0][1].retries == expected + 1


# -- cancellation and shutdown ---------------------------------------------------------------


async def test_send_in_flight_at_shutdown_is_not_cancelled_and_is_delivered() -> None:
    gate = asyncio.Event()
    r = rig(StubGraph(accepted("wamid.late"), gate=gate))
    delivery = FakeDelivery(body())
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(r.graph.on_the_wire.wait(), 1)
    drain = asyncio.create_task(r.pipeline.drain(grace=0))
    for _ in range(20):  # drain is past its grace and waits for the claimed task
        await asyncio.sleep(0)
    assert not task.done() and not drain.done()
    gate.set()
    handed_back = await asyncio.wait_for(drain, 2)
    assert handed_back == 0
    assert not task.cancelled()
    [call] = r.settler.of(delivery)
    assert call.outcome == Delivered("wamid.late")
    assert r.graph.finished == 1
    assert r.settler.flushes == 1


async def test_shutdown_hands_back_what_waits_before_the_claim_and_finishes_the_rest() -> None:
    send_gate, limit_gate = asyncio.Event(), asyncio.Event()
    r = rig(StubGraph(gate=send_gate), limiter=HeldLimiter())
    on_wire = FakeDelivery(body({"internalId": "a"}), delivery_tag=1)
    r.pipeline.receive(on_wire)  # type: ignore[arg-type]
    await asyncio.wait_for(r.graph.on_the_wire.wait(), 1)
    r.limiter.gate = limit_gate  # the next one waits for a send slot
    waiting = FakeDelivery(body({"internalId": "b"}), delivery_tag=2)
    r.pipeline.receive(waiting)  # type: ignore[arg-type]
    r.limiter.waiting.clear()
    await asyncio.wait_for(r.limiter.waiting.wait(), 1)
    drain = asyncio.create_task(r.pipeline.drain(grace=0))
    for _ in range(20):
        await asyncio.sleep(0)
    assert [c.outcome for c in r.settler.of(waiting)] == [HandBack()]
    send_gate.set()
    assert await asyncio.wait_for(drain, 2) == 1
    assert isinstance(r.settler.of(on_wire)[0].outcome, Delivered)
    assert len(r.graph.calls) == 1
    assert [m.internal_id for m in r.ledger.claims] == ["a"]


async def test_delivery_received_just_before_an_immediate_shutdown_is_still_settled() -> None:
    r = rig()
    delivery = FakeDelivery(body())
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await r.pipeline.drain(grace=0)  # awaited in this task: ours has not started yet
    assert not task.cancelled()
    assert [c.outcome for c in r.settler.of(delivery)] == [HandBack()]


async def test_cancelled_while_waiting_for_credentials_is_handed_back_unrecorded() -> None:
    gate = asyncio.Event()
    r = rig(source=CountingSource(gate=gate))
    delivery = FakeDelivery(body())
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(r.source.waiting.wait(), 1)
    task.cancel()
    await asyncio.wait_for(task, 1)
    assert [c.outcome for c in r.settler.of(delivery)] == [HandBack()]
    assert (r.ledger.claims, r.ledger.finishes, r.graph.calls) == ([], [], [])
    gate.set()  # let the shared fetch end, as another waiter would
    await asyncio.sleep(0)


async def test_cancelled_while_waiting_for_a_send_slot_is_handed_back_unrecorded() -> None:
    gate = asyncio.Event()
    r = rig(limiter=HeldLimiter(gate=gate))
    delivery = FakeDelivery(body())
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(r.limiter.waiting.wait(), 1)
    task.cancel()
    await asyncio.wait_for(task, 1)
    assert [c.outcome for c in r.settler.of(delivery)] == [HandBack()]
    assert (r.ledger.claims, r.ledger.finishes, r.graph.calls) == ([], [], [])


async def test_send_cut_off_on_the_wire_is_an_ambiguous_retry_never_a_hand_back() -> None:
    gate = asyncio.Event()
    r = rig(StubGraph(gate=gate))
    delivery = FakeDelivery(body())
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(r.graph.on_the_wire.wait(), 1)
    task.cancel()  # someone outside the pipeline
    await asyncio.wait_for(task, 1)
    [call] = r.settler.of(delivery)
    outcome = retry(call.outcome, 30.0, Category.TRANSIENT)
    assert outcome.failure.code == "cancelled"
    [(message, record, attempts)] = r.ledger.finishes
    assert message.internal_id == "m-1"
    assert record.status == "retry_scheduled"
    assert [(a.code, a.ambiguous) for a in attempts] == [("cancelled", True)]


async def test_send_cut_off_on_the_wire_with_no_retries_left_is_dead_not_handed_back() -> None:
    gate = asyncio.Event()
    r = rig(StubGraph(gate=gate))
    delivery = FakeDelivery(body(), headers={"x-retry-count": 5})
    task = r.pipeline.receive(delivery)  # type: ignore[arg-type]
    await asyncio.wait_for(r.graph.on_the_wire.wait(), 1)
    task.cancel()
    await asyncio.wait_for(task, 1)
    dead(r.settler.of(delivery)[0].outcome, Category.RETRIES_EXHAUSTED)
    assert r.ledger.finishes[0][2][0].ambiguous


# -- 401: refresh once, resend once ----------------------------------------------------------


async def test_auth_failure_refreshes_credentials_once_and_resends() -> None:
    r = rig(StubGraph(meta_error(401, 190), accepted("wamid.2")))
    call = await settle_one(r, FakeDelivery(body()))
    assert call.outcome == Delivered("wamid.2")
    assert r.source.fetched == 2  # the first fetch and one refetch
    assert [token for _, token, _ in r.graph.calls] == ["token-1", "token-2"]
    [(_, _, attempts)] = r.ledger.finishes
    assert [a.outcome for a in attempts] == ["refresh", "sent"]


async def test_auth_failure_after_the_refresh_is_dead_auth() -> None:
    r = rig(StubGraph(meta_error(401, 190)))
    call = await settle_one(r, FakeDelivery(body()))
    dead(call.outcome, Category.AUTH)
    assert r.source.fetched == 2
    assert len(r.graph.calls) == 2
