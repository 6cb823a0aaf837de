"""Whatever a producer puts in a body or its headers, the pipeline ends the delivery once.

Bodies: random bytes, random JSON, and the SPEC example with one field fuzzed. Headers: any
value an AMQP field table decodes to (ints of any size, floats with inf and nan, Decimal,
strings with NUL, bytes, bool, None, datetime, nested tables and arrays). Each example runs
``Pipeline.handle`` to completion with a recording settler, then has the real ``Settler``
build the copy it would publish and checks that the broker could take it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pamqp import encode

from wa_consumer import headers as h
from wa_consumer.categories import DEAD
from wa_consumer.outcomes import Dead, Delivered, Duplicate, HandBack, Recount, Retry
from wa_consumer.settle import Settler

from .pipeline_fakes import (
    MAX_DELIVERIES,
    FakeDelivery,
    FakeLedger,
    StubGraph,
    accepted,
    message,
    meta_error,
    rig,
)

OUTCOMES = (Delivered, Duplicate, Retry, Dead, HandBack, Recount)
#: Our headers, the quorum queue's and the broker's: the names most worth fuzzing.
NAMES = (
    h.RETRY_COUNT,
    h.DELIVERIES,
    h.QUORUM_DELIVERIES,
    h.FIRST_FAILED,
    h.ORIGINAL_KEY,
    h.TENANT,
    h.DROPPED,
    "x-death",
    "x-first-death-queue",
)
#: What ``carry`` may add beyond its limit: the ``x-dropped-headers`` list, itself bounded.
DROPPED_MARGIN = 1024

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["", "\x00", "acme", "106540352242922", "2020-01-01T00:00:00Z"])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)

amqp_scalars = (
    st.integers()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=-2, max_value=h.MAX_COUNT + 2)
    | st.floats()
    | st.sampled_from([float("inf"), float("nan"), 1e300, 3.0, -0.0])
    | st.decimals()
    | st.text(max_size=30)
    | st.sampled_from(
        ["\x00", "3", " 7 ", "\uff11\uff12", "abc", "9" * 400, "2026-01-01T00:00:00+14:00"]
    )
    | st.text(min_size=1, max_size=1).map(lambda c: c * 20_000)
    | st.binary(max_size=30)
    | st.builds(bytearray, st.binary(max_size=30))
    | st.booleans()
    | st.none()
    | st.datetimes(timezones=st.none() | st.just(UTC))
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
any_headers = st.dictionaries(
    st.sampled_from(NAMES) | st.text(max_size=20) | st.just("k" * 200), amqp_values, max_size=6
)
#: Headers a message of ours plausibly carries, with one odd value now and then.
usual_headers = st.fixed_dictionaries(
    {},
    optional={
        h.RETRY_COUNT: st.integers(min_value=0, max_value=6),
        h.DELIVERIES: st.integers(min_value=0, max_value=MAX_DELIVERIES),
        h.ERROR_MESSAGE: st.text(max_size=50),
        "x-death": amqp_values,
        "x-producer": amqp_values,
    },
)
amqp_headers = st.just({}) | usual_headers | any_headers


def _fuzzed(path: tuple[str, ...], value: Any) -> bytes:
    """The SPEC example with the field at ``path`` replaced by ``value`` (or removed: ...)."""
    obj: Any = message()
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is Ellipsis:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return json.dumps(obj).encode()  # json, not orjson: big ints, NaN and lone surrogates pass


FIELDS = [
    ("metadata",),
    ("metadata", "tenantId"),
    ("metadata", "internalId"),
    ("metadata", "phoneNumberId"),
    ("metadata", "expiresAt"),
    ("metadata", "extra"),
    ("wabaPayload",),
    ("wabaPayload", "to"),
    ("wabaPayload", "type"),
    ("wabaPayload", "text"),
    ("wabaPayload", "text", "body"),
    ("wabaPayload", "messaging_product"),
]
near_valid = st.builds(
    _fuzzed,
    st.sampled_from(FIELDS),
    json_values | st.just(Ellipsis) | st.text(min_size=1, max_size=1).map(lambda c: c * 300),
)
valid = st.just(json.dumps(message()).encode())
bodies = st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()) | near_valid
bodies = valid | bodies | near_valid
graph_answers = st.sampled_from(
    [accepted(), meta_error(500), meta_error(400, 131026), meta_error(401, 190), meta_error(400, 4)]
)

# The settler that builds copies: ``_copy`` touches neither the channel nor the exchange.
REAL_SETTLER = Settler(object(), object(), main_queue="outbound-processed", dead_routing_key="x")  # type: ignore[arg-type]


def _check_copy(delivery: FakeDelivery, outcome: Any, tenant_id: str | None) -> None:
    """The copy ``settle`` would publish for ``outcome`` encodes, and within bounds."""
    if isinstance(outcome, Retry | Dead):
        retry = isinstance(outcome, Retry) and outcome.counts
        headers = REAL_SETTLER._copy(delivery, outcome.failure, tenant_id, retry=retry).headers  # type: ignore[arg-type]
    elif isinstance(outcome, HandBack | Recount):
        headers = h.carry(delivery.headers)
    else:
        return
    assert headers is not None
    size = len(encode.field_table(headers))
    assert size <= h.MAX_CARRIED_BYTES + 2 * DROPPED_MARGIN + 3 * h.MAX_TEXT_BYTES
    assert not any(k.startswith(h.BROKER_PREFIXES) for k in headers)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    raw=bodies,
    headers=amqp_headers,
    redelivered=st.booleans(),
    routing_key=st.none() | st.just("outbound.processed.acme") | st.text(max_size=40),
    timestamp=st.none() | st.none() | st.datetimes(timezones=st.none() | st.just(UTC)),
    answer=graph_answers,
    counts_deliveries=st.booleans(),
)
def test_any_body_and_headers_end_in_exactly_one_settle(
    raw: bytes,
    headers: dict[str, Any],
    redelivered: bool,
    routing_key: str | None,
    timestamp: datetime | None,
    answer: Any,
    counts_deliveries: bool,
) -> None:
    delivery = FakeDelivery(
        raw,
        headers=headers,
        redelivered=redelivered,
        routing_key=routing_key,
        timestamp=timestamp,
    )

    async def run() -> Any:
        r = rig(StubGraph(answer), ledger=FakeLedger(counts_deliveries=counts_deliveries))
        await asyncio.wait_for(r.pipeline.handle(delivery), 5)  # type: ignore[arg-type]
        return r

    r = asyncio.run(run())
    [call] = r.settler.calls
    assert call.delivery is delivery
    outcome = call.outcome
    assert isinstance(outcome, OUTCOMES)
    event(
        type(outcome).__name__
        + (f" {outcome.failure.category}" if isinstance(outcome, Dead | Retry) else "")
    )
    if isinstance(outcome, Dead):
        assert outcome.failure.category in DEAD
        assert outcome.failure.message
    if isinstance(outcome, Recount):
        assert 1 <= outcome.deliveries < MAX_DELIVERIES
    if call.tenant_id is not None:
        assert len(call.tenant_id.encode("utf-8", "replace")) <= h.MAX_TEXT_BYTES
    assert len(r.ledger.finishes) == len(r.ledger.claims)  # every claim is finished
    _check_copy(delivery, outcome, call.tenant_id)
