"""The DLQ's mirror in the ledger, without a database: a filter in SQL (values never in the
text), the row a death becomes, and which deaths the pipeline tells the ledger of."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from wa_consumer.dlq.filters import Filter
from wa_consumer.dlq.record import UNREADABLE, fingerprint
from wa_consumer.ledger.dead_sql import Params, filter_sql, needs_rows
from wa_consumer.ledger.dead_write import row_of
from wa_consumer.outcomes import Dead, Delivered, Failure, Outcome
from wa_consumer.seams import Death

from .pipeline_fakes import (
    ROUTING_KEY,
    FakeDelivery,
    RecordingSettler,
    SettleCall,
    StubGraph,
    accepted,
    body,
    meta_error,
    rig,
    settle_one,
)

# -- a filter in SQL -------------------------------------------------------------------------

HOSTILE = "x'); DROP TABLE wa_dead; --"


def placeholders(sql: str) -> list[int]:
    return sorted(int(n) for n in re.findall(r"\$(\d+)", sql))


def test_the_empty_filter_is_true_and_takes_no_parameter() -> None:
    params = Params()
    assert filter_sql(Filter(), params) == "TRUE"
    assert params.values == []


def test_every_value_of_a_filter_is_a_numbered_parameter_never_text() -> None:
    since, before = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
    f = Filter(
        tenants=frozenset({HOSTILE, "acme"}),
        categories=frozenset({"permanent"}),
        codes=frozenset({"131026", HOSTILE}),
        types=frozenset({"text"}),
        fingerprints=("3f9a1c",),
        ids=frozenset({HOSTILE}),
        since=since,
        before=before,
    )
    params = Params(["already there"])
    sql = filter_sql(f, params)
    assert HOSTILE not in sql and "acme" not in sql and "131026" not in sql
    assert placeholders(sql) == list(range(2, len(params.values) + 1))  # after the first
    assert params.values[1:] == [
        sorted({HOSTILE, "acme"}),
        ["permanent"],
        sorted({"131026", HOSTILE}),
        ["text"],
        ["3f9a1c%"],
        [HOSTILE],
        since,
        before,
    ]
    assert sql.count(" AND ") == 7


def test_one_whole_fingerprint_is_an_equality_several_are_any_and_prefixes_are_escaped_likes() -> (
    None
):
    one = Params()
    assert filter_sql(Filter(fingerprints=("0123456789",)), one) == "w.fingerprint = $1"
    several = Params()
    sql = filter_sql(Filter(fingerprints=("0123456789", "abcdefabcd")), several)
    assert sql == "w.fingerprint = ANY($1::text[])"
    prefix = Params()
    sql = filter_sql(Filter(fingerprints=("ab%_\\",)), prefix)
    assert sql == "w.fingerprint LIKE ANY($1::text[])"
    assert prefix.values == [["ab\\%\\_\\\\%"]]  # a typed % or _ matches itself only


def test_an_unreadable_type_is_null_in_the_rows_and_empty_in_the_counters() -> None:
    f = Filter(types=frozenset({UNREADABLE, "text"}))
    rows, counters = Params(), Params()
    assert filter_sql(f, rows) == "(w.type = ANY($1::text[]) OR w.type IS NULL)"
    assert filter_sql(f, counters, counters=True) == "(w.type = ANY($1::text[]) OR w.type = '')"
    assert rows.values == counters.values == [["text"]]


@pytest.mark.parametrize(
    "f",
    [
        Filter(ids=frozenset({"m-1"})),
        Filter(since=datetime(2026, 1, 1, tzinfo=UTC)),
        Filter(before=datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_ids_and_times_need_the_rows_not_the_counters(f: Filter) -> None:
    assert needs_rows(f)
    with pytest.raises(ValueError, match="not in wa_dead_groups"):
        filter_sql(f, Params(), counters=True)


def test_tenants_categories_codes_types_and_fingerprints_are_answered_by_the_counters() -> None:
    f = Filter.of(tenants=["acme"], categories=["account"], codes=["1"], types=["text"],
                  fingerprints=["3F9A"])  # fmt: skip
    assert not needs_rows(f)
    params = Params()
    filter_sql(f, params, counters=True)
    assert params.values[-1] == ["3f9a%"]  # Filter.of lower-cases a fingerprint


# -- the row a death becomes -----------------------------------------------------------------


def death(**overrides: Any) -> Death:
    values: dict[str, Any] = {
        "failure": Failure("permanent", "131026", "(#131026) undeliverable to 27821234567"),
        "body": body(),
        "body_bytes": len(body()),
        "headers": {"x-retry-count": 2, "x-replay-count": 1, "x-error-category": "permanent"},
        "tenant_id": "acme",
        "internal_id": "m-1",
        "type": "text",
        "phone_number_id": "106540352242922",
        "routing_key": ROUTING_KEY,
        "claimed": True,
    }
    values.update(overrides)
    return Death(**values)


def test_a_rows_fingerprint_is_the_one_a_pass_over_the_queue_computes() -> None:
    row = row_of(death())
    assert row[2] == fingerprint("permanent", "131026", "(#131026) undeliverable to 27821234567")
    assert (row[10], row[11]) == (2, 1)  # x-retry-count, x-replay-count
    assert row[15] is True


def test_a_row_holds_no_token_and_nothing_postgresql_refuses() -> None:
    headers = {
        "authorization": "Bearer EAAGsecret",
        "x-note": "sent with Bearer EAAGsecret\x00",
        "x-amount": Decimal("1.50"),
        "x-when": datetime(2026, 11, 24, 12, tzinfo=UTC),
        "x-raw": b"\xff\xfebytes",
        "x-nested": {"a": [1, float("nan"), 2**70]},
    }
    row = row_of(death(headers=headers, failure=Failure("invalid", "invalid", "bad\x00byte")))
    text = orjson.dumps(row).decode()
    assert "EAAGsecret" not in text
    assert "\\u0000" not in text
    stored = row[12]
    assert stored["x-amount"] == "1.50"
    assert stored["x-when"] == "2026-11-24T12:00:00+00:00"
    assert stored["x-nested"] == {"a": [1, "nan", str(2**70)]}
    assert row[6] == "badbyte"


def test_an_unbound_deaths_type_is_read_from_its_body_as_dlq_list_reads_it() -> None:
    assert row_of(death(type=None))[7] == "text"
    assert row_of(death(type=None, body=b"{not json"))[7] is None


# -- which deaths the pipeline tells the ledger of -----------------------------------------


class CopyingSettler(RecordingSettler):
    """A settler that says what its copy carries, as ``settle.Settler`` does."""

    def __init__(self, headers: dict[str, Any], *, copied: bool = True) -> None:
        super().__init__(copied=copied)
        self.headers = headers

    async def settle(self, delivery: Any, outcome: Outcome, *, tenant_id: str | None,
                     record: Any) -> str:  # fmt: skip
        await record(self.copied, self.headers)
        self.calls.append(SettleCall(delivery, outcome, tenant_id))
        return "recorded"


async def test_an_invalid_body_dies_before_the_claim_and_its_death_is_still_recorded() -> None:
    r = rig()
    await settle_one(r, FakeDelivery(b"{not json", message_id="poison-1"))
    assert r.ledger.claims == [] and r.ledger.finishes == []  # never claimed
    [told] = r.ledger.deaths
    assert (told.tenant_id, told.internal_id, told.claimed) == ("acme", "poison-1", False)
    assert told.failure.category == "invalid"
    assert told.body == b"{not json"
    assert told.routing_key == ROUTING_KEY


async def test_a_death_after_the_claim_is_recorded_with_its_result_and_as_its_copy_states_it() -> (
    None
):
    r = rig(StubGraph(meta_error(400, 131026)))
    copy = {"x-error-category": "permanent", "x-error-code": "131026",
            "x-error-message": "cut...", "x-error-subcode": 7}  # fmt: skip
    r.pipeline.settler = r.settler = CopyingSettler(copy)
    await settle_one(r, FakeDelivery(body()))
    [(_, record, _)] = r.ledger.finishes
    assert record.status == "dead"
    [told] = r.ledger.deaths
    assert told.claimed is True
    assert told.headers == copy
    assert told.failure == Failure("permanent", "131026", "cut...", 7)
    assert (told.type, told.phone_number_id) == ("text", "106540352242922")


async def test_a_sent_message_tells_the_dead_letters_nothing() -> None:
    r = rig(StubGraph(accepted()))
    call = await settle_one(r, FakeDelivery(body()))
    assert isinstance(call.outcome, Delivered)
    assert r.ledger.deaths == []


async def test_an_unconfirmed_death_is_recorded_as_the_broker_dead_letters_it() -> None:
    r = rig(StubGraph(meta_error(400, 131026)))
    r.pipeline.settler = r.settler = CopyingSettler({"x-error-code": "ours"}, copied=False)
    original = {"x-custom": "kept"}
    await settle_one(r, FakeDelivery(body(), headers=original))
    [told] = r.ledger.deaths
    assert told.headers == original  # the broker dead-letters the original, not our copy
    assert told.failure.code == "131026"


async def test_a_death_with_no_copy_at_all_is_not_recorded() -> None:
    """A fault while settling: the message goes back to its queue and dies later."""
    r = rig(StubGraph(meta_error(400, 131026)))
    r.pipeline.settler = r.settler = RecordingSettler(copied=False)
    call = await settle_one(r, FakeDelivery(body()))
    assert isinstance(call.outcome, Dead)
    assert r.ledger.deaths == []
