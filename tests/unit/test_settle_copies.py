"""The copies ``settle`` republishes (SPEC §4): body unchanged, every header bounded, and the
whole header table one the broker can take, whatever the producer sent."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import pytest
from pamqp import encode

from wa_consumer import headers as h
from wa_consumer.outcomes import Dead, Delivered, Failure, HandBack, Recount, Retry
from wa_consumer.settle import Settled, Settler

from .pipeline_fakes import FakeDelivery, body

ERROR_BYTES = 1024
#: Ours on top of what ``carry`` keeps: category, code, subcode, message, two times, the
#: routing key, the tenant, the retry count, and the dropped list.
OURS = ERROR_BYTES + 64 + 3 * h.MAX_TEXT_BYTES + 512


def settler(error_bytes: int = ERROR_BYTES, channel: Any = None, dlx: Any = None) -> Settler:
    return Settler(
        channel or object(),
        dlx or object(),
        main_queue="outbound-processed",
        dead_routing_key="dead",
        error_text_bytes=error_bytes,
        requeue_backoff=0.0,
    )


def copy_headers(
    delivery: FakeDelivery,
    failure: Failure,
    tenant_id: str | None = "acme",
    *,
    retry: bool = False,
    error_bytes: int = ERROR_BYTES,
) -> dict[str, Any]:
    message = settler(error_bytes)._copy(delivery, failure, tenant_id, retry=retry)  # type: ignore[arg-type]
    assert message.body == delivery.body
    assert message.headers is not None
    encode.field_table(message.headers)  # raises if the broker could not be sent it
    return dict(message.headers)


def size(value: Any) -> int:
    return len(encode.encode_table_value(value))


def test_copy_of_a_hostile_message_has_every_header_bounded() -> None:
    delivery = FakeDelivery(
        body(),
        headers={h.RETRY_COUNT: 3_000_000_000, "x-producer": "p" * 50_000},
        routing_key="outbound.processed." + "r" * 100_000,
    )
    failure = Failure("permanent", "9" * 5000, "e" * 10_000, subcode=2**40)
    headers = copy_headers(delivery, failure, tenant_id="t" * 140_000)
    assert len(headers[h.TENANT].encode()) <= h.MAX_TEXT_BYTES
    assert len(headers[h.ORIGINAL_KEY].encode()) <= h.MAX_TEXT_BYTES
    assert headers[h.ORIGINAL_KEY].startswith("outbound.processed.rrr")
    assert len(headers[h.ERROR_MESSAGE].encode()) <= ERROR_BYTES
    assert len(headers[h.ERROR_CODE].encode()) <= 64
    assert h.ERROR_SUBCODE not in headers  # past 32 bits: kept in the message text only
    assert headers[h.RETRY_COUNT] == 0  # the bad count (dead as invalid) is not carried on
    assert "x-producer" in headers[h.DROPPED]
    assert len(encode.field_table(headers)) <= h.MAX_CARRIED_BYTES + OURS
    assert all(size(value) <= h.MAX_CARRIED_BYTES for value in headers.values())


def test_copy_of_200_kb_of_headers_stays_within_the_carried_bound() -> None:
    producer = {f"h{i}": "v" * 20_000 for i in range(10)}
    producer.update({f"s{i}": "w" * 30 for i in range(2000)})
    delivery = FakeDelivery(body(), headers=producer)
    headers = copy_headers(delivery, Failure("transient", "500", "x" * 10_000), retry=True)
    assert len(encode.field_table(headers)) <= h.MAX_CARRIED_BYTES + OURS
    assert headers[h.RETRY_COUNT] == 1


@pytest.mark.parametrize("bad", [b"\xff\xfe", 1e300, 2**64, -(2**63) - 1, "\udc80"])
def test_copy_drops_what_cannot_be_encoded_and_says_so(bad: Any) -> None:
    delivery = FakeDelivery(body(), headers={"bad": bad, "good": 1})
    headers = copy_headers(delivery, Failure("invalid", "invalid", "reason"))
    assert headers["good"] == 1
    assert "bad" not in headers
    assert headers[h.DROPPED] == "bad"


def test_copy_drops_the_brokers_death_headers_and_our_delivery_count() -> None:
    delivery = FakeDelivery(
        body(),
        headers={
            "x-death": [{"count": 2, "queue": "outbound-processed"}],
            "x-first-death-queue": "outbound-processed",
            "x-last-death-reason": "expired",
            h.DELIVERIES: 3,
        },
    )
    headers = copy_headers(delivery, Failure("transient", "500", "x"), retry=True)
    assert not [k for k in headers if k.startswith(h.BROKER_PREFIXES)]
    assert h.DELIVERIES not in headers
    assert h.DROPPED not in headers  # removed on purpose, not dropped for size or type


def test_retry_copy_counts_a_retry_and_a_wait_does_not() -> None:
    delivery = FakeDelivery(body(), headers={h.RETRY_COUNT: 2})
    failure = Failure("transient", "500", "x")
    assert copy_headers(delivery, failure, retry=True)[h.RETRY_COUNT] == 3
    assert copy_headers(delivery, failure, retry=False)[h.RETRY_COUNT] == 2


def test_copy_writes_every_spec_header() -> None:
    delivery = FakeDelivery(body(), routing_key="outbound.processed.acme")
    headers = copy_headers(delivery, Failure("rate_limited", "130429", "too fast", subcode=7))
    assert headers[h.ERROR_CATEGORY] == "rate_limited"
    assert headers[h.ERROR_CODE] == "130429"
    assert headers[h.ERROR_SUBCODE] == 7
    assert headers[h.ERROR_MESSAGE] == "too fast"
    assert headers[h.ORIGINAL_KEY] == "outbound.processed.acme"
    assert headers[h.TENANT] == "acme"
    for name in (h.FIRST_FAILED, h.FAILED_AT):
        assert datetime.fromisoformat(headers[name].replace("Z", "+00:00")).tzinfo is not None


def test_later_copies_keep_the_first_failure_time_and_original_key() -> None:
    delivery = FakeDelivery(
        body(),
        headers={
            h.FIRST_FAILED: "2026-01-01T00:00:00.000Z",
            h.ORIGINAL_KEY: "outbound.processed.acme",
            h.ERROR_SUBCODE: 99,
        },
        routing_key="outbound-retry-30s",
    )
    headers = copy_headers(delivery, Failure("transient", "500", "x"), retry=True)
    assert headers[h.FIRST_FAILED] == "2026-01-01T00:00:00.000Z"
    assert headers[h.ORIGINAL_KEY] == "outbound.processed.acme"
    assert h.ERROR_SUBCODE not in headers  # not this failure's


def test_error_text_is_cut_to_the_configured_size_on_a_character_boundary() -> None:
    failure = Failure("permanent", "100", "\u00e9" * 5000)
    headers = copy_headers(FakeDelivery(body()), failure, error_bytes=256)
    assert len(headers[h.ERROR_MESSAGE].encode()) <= 256
    assert headers[h.ERROR_MESSAGE].endswith("...")


def test_copy_keeps_the_body_and_properties() -> None:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    delivery = FakeDelivery(
        b"\x00 any bytes",
        message_id="m-1",
        correlation_id="c-1",
        timestamp=stamp,
        content_type=None,
        app_id="producer",
        priority=3,
    )
    copy = settler()._copy(delivery, Failure("invalid", "invalid", "x"), None, retry=False)  # type: ignore[arg-type]
    assert copy.body == b"\x00 any bytes"
    assert (copy.message_id, copy.correlation_id, copy.app_id, copy.priority) == (
        "m-1",
        "c-1",
        "producer",
        3,
    )
    assert copy.content_type == "application/json"
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


# -- settle: ack only after the copy is confirmed --------------------------------------------


class Channel:
    """The consuming channel as ``AckCoalescer`` uses it."""

    is_closed = False

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, *, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, *, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("nack", tag, requeue))


class Exchange:
    """Publishes by recording; confirms with ``answer`` (or raises it)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.published: list[tuple[str, aio_pika.Message, bool]] = []

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool, timeout: float
    ) -> Any:
        self.published.append((routing_key, message, mandatory))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class PublishChannel:
    def __init__(self, default: Exchange) -> None:
        self.default_exchange = default


ACK = aiormq.spec.Basic.Ack(delivery_tag=1)
NACK = aiormq.spec.Basic.Nack(delivery_tag=1)


async def settle(outcome: Any, answer: Any) -> tuple[Settled, Channel, Exchange, Exchange]:
    consuming, default, dlx = Channel(), Exchange(answer), Exchange(answer)
    s = settler(channel=PublishChannel(default), dlx=dlx)
    delivery = FakeDelivery(
        body(), headers={h.RETRY_COUNT: 1, "x-death": []}, channel=consuming, delivery_tag=7
    )
    s.delivered(delivery)  # type: ignore[arg-type]
    recorded: list[bool] = []

    async def record(copied: bool, headers: Any = None) -> None:
        recorded.append(copied)

    settled = await s.settle(delivery, outcome, tenant_id="acme", record=record)  # type: ignore[arg-type]
    await s.flush()
    assert len(recorded) == 1  # the ledger's write, once, before the ack
    return settled, consuming, default, dlx


DEAD = Dead(Failure("permanent", "131026", "undeliverable"))
RETRY = Retry("outbound-retry-30s", 30.0, Failure("transient", "500", "x"))


async def test_dead_copy_confirmed_is_acked() -> None:
    settled, consuming, default, dlx = await settle(DEAD, ACK)
    assert settled is Settled.DEAD
    [(key, copy, mandatory)] = dlx.published
    assert (key, mandatory) == ("dead", True)
    assert copy.headers is not None
    assert copy.headers[h.ERROR_CATEGORY] == "permanent"
    assert "x-death" not in copy.headers
    assert consuming.frames == [("ack", 7, True)]
    assert default.published == []


@pytest.mark.parametrize("answer", [NACK, TimeoutError(), aiormq.exceptions.ChannelClosed()])
async def test_dead_copy_not_confirmed_is_left_to_the_brokers_dead_lettering(answer: Any) -> None:
    settled, consuming, _, _ = await settle(DEAD, answer)
    assert settled is Settled.DEAD_BY_BROKER
    assert consuming.frames == [("nack", 7, False)]


async def test_retry_copy_goes_to_its_wait_queue_and_is_acked_once_confirmed() -> None:
    settled, consuming, default, dlx = await settle(RETRY, ACK)
    assert settled is Settled.RETRIED
    [(key, copy, _)] = default.published
    assert key == "outbound-retry-30s"
    assert copy.headers is not None
    assert copy.headers[h.RETRY_COUNT] == 2
    assert consuming.frames == [("ack", 7, True)]
    assert dlx.published == []


async def test_retry_copy_not_confirmed_goes_back_to_its_queue() -> None:
    settled, consuming, _, _ = await settle(RETRY, TimeoutError())
    assert settled is Settled.REQUEUED
    assert consuming.frames == [("nack", 7, True)]


@pytest.mark.parametrize("outcome", [HandBack(), Recount(3)])
async def test_hand_back_is_a_confirmed_copy_at_the_tail_of_the_main_queue(outcome: Any) -> None:
    settled, consuming, default, _ = await settle(outcome, ACK)
    assert settled is Settled.HANDED_BACK
    [(key, copy, _)] = default.published
    assert key == "outbound-processed"
    assert copy.headers is not None
    assert copy.headers.get(h.DELIVERIES) == (3 if isinstance(outcome, Recount) else None)
    assert consuming.frames == [("ack", 7, True)]


async def test_delivered_is_acked_without_a_copy() -> None:
    settled, consuming, default, dlx = await settle(Delivered("wamid.1"), ACK)
    assert settled is Settled.ACKED
    assert (default.published, dlx.published) == ([], [])
    assert consuming.frames == [("ack", 7, True)]
