"""Reading Meta's webhook bodies: statuses and customers' messages, bounded where they enter."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_consumer.webhooks.payload import StatusUpdate, UnreadableWebhook, furthest, merge, read

T0 = 1_765_000_000


def status(wamid: str, name: str, at: int = T0, **extra: Any) -> dict[str, Any]:
    return {
        "id": wamid,
        "status": name,
        "timestamp": str(at),
        "recipient_id": "27821234567",
        **extra,
    }


def webhook(*statuses: dict[str, Any], messages: list[Any] | None = None) -> bytes:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
    }
    if statuses:
        value["statuses"] = list(statuses)
    if messages is not None:
        value["messages"] = messages
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [{"id": "4195", "changes": [{"field": "messages", "value": value}]}],
        }
    )


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_a_delivered_status_keeps_its_time_pricing_conversation_and_callback() -> None:
    body = webhook(
        status(
            "wamid.A",
            "delivered",
            biz_opaque_callback_data="order-1",
            pricing={"billable": True, "pricing_model": "PMP", "category": "utility"},
            conversation={"id": "c-1", "origin": {"type": "utility"}, "expiration_timestamp": T0},
        )
    )
    [update] = read(body).statuses
    assert update.wamid == "wamid.A"
    assert update.status == "delivered"
    assert update.delivered_at == at(T0)
    assert update.sent_at is None
    assert update.phone_number_id == "106540352242922"
    assert update.callback == "order-1"
    assert (update.billable, update.pricing_category, update.pricing_model) == (
        True,
        "utility",
        "PMP",
    )
    assert (update.conversation_id, update.conversation_origin) == ("c-1", "utility")


@pytest.mark.parametrize(
    ("code", "category"),
    [(131026, "permanent"), (131047, "permanent"), (131049, "permanent"), (131048, "account"),
     (131000, "transient"), (999999, "permanent")],
)  # fmt: skip
def test_a_failed_status_is_classified_by_the_same_table_as_sends(code: int, category: str) -> None:
    error = {"code": code, "title": "Message undeliverable", "error_data": {"details": "x"}}
    [update] = read(webhook(status("wamid.F", "failed", errors=[error]))).statuses
    assert (update.error_code, update.error_category) == (str(code), category)
    assert (update.error_title, update.error_message) == ("Message undeliverable", "x")
    assert update.failed_at == at(T0)


def test_a_failed_status_without_errors_is_still_failed() -> None:
    [update] = read(webhook(status("wamid.F", "failed"))).statuses
    assert (update.status, update.error_category, update.error_code) == (
        "failed",
        "permanent",
        "unknown",
    )


def test_customers_messages_are_kept_whole_for_forwarding() -> None:
    messages = [{"from": "2782", "id": "wamid.IN", "type": "text", "text": {"body": "hi"}}]
    found = read(webhook(messages=messages))
    [inbound] = found.inbound
    assert inbound.count == 1
    assert inbound.phone_number_id == "106540352242922"
    assert orjson.loads(inbound.body)["messages"] == messages


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "delivered", "timestamp": str(T0)},  # no id
        status("wamid.A", "queued"),  # no such status
        status("wamid.A", "accepted"),  # ours, never Meta's
        status("wamid.A", "read", at=-5),  # no real time
        status("wamid.A", "read", at=10**15),
        {**status("wamid.A", "read"), "timestamp": "soon"},
        "not an object",
        {**status("", "read")},
    ],
)
def test_a_status_that_cannot_be_read_is_skipped_and_counted(bad: Any) -> None:
    found = read(webhook(bad, status("wamid.OK", "sent")))
    assert [u.wamid for u in found.statuses] == ["wamid.OK"]
    assert found.skipped == 1


def test_values_are_bounded_where_they_enter() -> None:
    long = "x" * 5000
    [update] = read(
        webhook(
            status(
                "w" * 300,
                "failed",
                recipient_id=long,
                biz_opaque_callback_data="a\x00b" + long,
                errors=[{"code": 131026, "title": long, "message": long}],
            )
        )
    ).statuses
    assert len(update.wamid) == 256
    assert update.recipient is not None and len(update.recipient) == 64
    assert update.callback is not None and "\x00" not in update.callback
    assert len(update.callback) == 512
    assert update.error_title is not None and len(update.error_title) == 1024


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"object": "x"}', b'{"entry": {}}', b"\xff\xfe"]
)
def test_a_body_that_is_no_webhook_is_unreadable(body: bytes) -> None:
    with pytest.raises(UnreadableWebhook):
        read(body)


def test_odd_shapes_inside_entry_are_ignored_not_fatal() -> None:
    body = orjson.dumps(
        {"entry": [1, {"changes": "x"}, {"changes": [None, {"value": []}, {"value": {}}]}]}
    )
    found = read(body)
    assert (found.statuses, found.inbound, found.skipped) == ([], [], 0)


# -- merging: never backwards, failed final, first times kept --------------------------------

STEPS = ["sent", "delivered", "read"]


def one(wamid: str, name: str, seconds: int) -> StatusUpdate:
    [update] = read(webhook(status(wamid, name, seconds))).statuses
    return update


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_order_of_sent_delivered_read_ends_read_with_every_time(order: tuple[int, ...]) -> None:
    updates = [one("wamid.A", STEPS[i], T0 + i) for i in order]
    [merged] = merge(updates)
    assert merged.status == "read"
    assert (merged.sent_at, merged.delivered_at, merged.read_at) == (at(T0), at(T0 + 1), at(T0 + 2))


@pytest.mark.parametrize("late", ["sent", "delivered", "read"])
def test_failed_is_final(late: str) -> None:
    [merged] = merge([one("wamid.A", "failed", T0), one("wamid.A", late, T0 + 5)])
    assert merged.status == "failed"
    assert merged.failed_at == at(T0)


def test_merge_gives_one_update_per_wamid_sorted() -> None:
    merged = merge(
        [one("wamid.B", "sent", T0), one("wamid.A", "sent", T0), one("wamid.B", "read", T0)]
    )
    assert [(m.wamid, m.status) for m in merged] == [("wamid.A", "sent"), ("wamid.B", "read")]


@given(st.lists(st.sampled_from(["sent", "delivered", "read", "failed"]), min_size=1, max_size=8))
def test_merge_does_not_depend_on_order(names: list[str]) -> None:
    updates = [one("wamid.A", name, T0 + i) for i, name in enumerate(names)]
    forward, backward = merge(updates), merge(list(reversed(updates)))
    assert forward[0].status == backward[0].status
    expected = "failed" if "failed" in names else max(names, key=STEPS.index)
    assert forward[0].status == expected
    assert furthest(expected, "sent") == expected


def test_values_of_other_fields_are_counted_and_messages_carry_their_ids() -> None:
    other = {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
    body = orjson.loads(webhook(messages=[{"id": "wamid.IN", "type": "text"}]))
    body["entry"][0]["changes"].append(other)
    found = read(orjson.dumps(body))
    assert found.ignored == 1
    [inbound] = found.inbound
    assert (inbound.waba_id, inbound.first_id) == ("4195", "wamid.IN")


@pytest.mark.parametrize("code", [2**62, -1, True, "131026", 1.5])
def test_a_code_that_is_no_meta_code_is_unknown(code: Any) -> None:
    [update] = read(webhook(status("wamid.F", "failed", errors=[{"code": code}]))).statuses
    assert (update.error_code, update.error_category) == ("unknown", "permanent")
