"""A dead message stays dead across a broker cut: its redelivery is never sent again."""

from __future__ import annotations

from wa_consumer.categories import Category
from wa_consumer.outcomes import Dead, Duplicate, Failure
from wa_consumer.seams import Claim

from .pipeline_fakes import (
    FakeDelivery,
    FakeLedger,
    RecordingSettler,
    StubGraph,
    body,
    meta_error,
    rig,
    settle_one,
)


def undeliverable() -> StubGraph:
    return StubGraph(meta_error(400, 131026))


async def test_a_dead_message_whose_copy_is_confirmed_is_recorded_dead() -> None:
    r = rig(undeliverable())
    call = await settle_one(r, FakeDelivery(body()))
    assert isinstance(call.outcome, Dead)
    [(_, record, _)] = r.ledger.finishes
    assert record.status == "dead"


async def test_a_dead_message_whose_copy_is_unconfirmed_is_recorded_dying() -> None:
    r = rig(undeliverable())
    r.pipeline.settler = r.settler = RecordingSettler(copied=False)
    call = await settle_one(r, FakeDelivery(body()))
    assert isinstance(call.outcome, Dead)
    [(_, record, _)] = r.ledger.finishes
    assert record.status == "dying"


async def test_a_redelivery_of_a_message_dead_in_the_dlq_is_acked_without_a_call() -> None:
    r = rig(ledger=FakeLedger(Claim.ALREADY_DEAD, counts_deliveries=True))
    call = await settle_one(r, FakeDelivery(body(), redelivered=True))
    assert isinstance(call.outcome, Duplicate)
    assert r.graph.calls == []


async def test_a_redelivery_of_a_dying_message_is_dead_lettered_again_as_it_was() -> None:
    ledger = FakeLedger(Claim.DYING, counts_deliveries=True)
    ledger.failure = Failure(Category.PERMANENT, "131026", "undeliverable")
    r = rig(ledger=ledger)
    call = await settle_one(r, FakeDelivery(body(), redelivered=True))
    assert call.outcome == Dead(ledger.failure)
    assert r.graph.calls == []  # no second call to the Cloud API
    [(_, record, _)] = r.ledger.finishes
    assert record.status == "dead"  # its copy is confirmed now


async def test_a_replay_passes_its_replay_count_to_the_claim() -> None:
    r = rig()
    await settle_one(r, FakeDelivery(body(), headers={"x-replay-count": 2}))
    assert r.ledger.replays == [2]
