"""The headers a producer controls, read with bounds and carried so the broker can take them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import decode, encode

from wa_consumer import headers as h

#: What ``carry`` may write beyond its limit: the ``x-dropped-headers`` list (itself cut to
#: ``MAX_TEXT_BYTES``), its name, type byte and length, and the table's own length.
MARGIN = h.MAX_TEXT_BYTES + 64


def encodes(table: dict[str, Any]) -> int:
    """Size of ``table`` as a header frame's field table; fails if pamqp cannot write it."""
    raw = encode.field_table(table)
    _, back = decode.field_table(raw)
    assert set(back) == set(table)
    return len(raw)


# -- read / count ----------------------------------------------------------------------------


def test_no_headers_read_as_zero_counts() -> None:
    assert h.read(None) == h.Counts()
    assert h.read({}) == h.Counts(0, 0, None)
    assert h.read({"other": "x"}) == h.Counts(0, 0, None)


@pytest.mark.parametrize(
    "value", [7, "7", " 7 ", b"7", bytearray(b"7"), 7.0, Decimal(7), Decimal("7.000")]
)
def test_count_of_any_amqp_type_is_read(value: Any) -> None:
    assert h.count({h.RETRY_COUNT: value}, h.RETRY_COUNT) == 7


@pytest.mark.parametrize("value", [0, h.MAX_COUNT, str(h.MAX_COUNT), float(h.MAX_COUNT)])
def test_count_bounds_are_inclusive(value: Any) -> None:
    assert h.count({h.RETRY_COUNT: value}, h.RETRY_COUNT) == int(value)


BAD = {
    "past the bound": h.MAX_COUNT + 1,
    "past 32 bits": 3_000_000_000,
    "past 64 bits": 2**64,
    "negative": -1,
    "string past the bound": "1000001",
    "negative string": "-1",
    "letters": "abc",
    "fullwidth digits": "\uff17",
    "empty": "",
    "long digits": "9" * 5000,
    "not utf-8": b"\xff\xfe",
    "fraction": 1.5,
    "inf": float("inf"),
    "nan": float("nan"),
    "1e300": 1e300,
    "negative zero point five": -0.5,
    "decimal nan": Decimal("NaN"),
    "decimal snan": Decimal("sNaN"),
    "decimal inf": Decimal("-Infinity"),
    "decimal huge": Decimal("1E+999999"),
    "true": True,
    "false": False,
    "table": {"n": 1},
    "array": [1],
    "datetime": datetime(2026, 1, 1, tzinfo=UTC),
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_count_out_of_type_or_range_is_a_bad_header_naming_it(value: Any) -> None:
    with pytest.raises(h.BadHeader) as info:
        h.count({h.RETRY_COUNT: value}, h.RETRY_COUNT)
    assert info.value.name == h.RETRY_COUNT
    assert str(info.value).startswith(f"header {h.RETRY_COUNT} ")
    assert len(str(info.value)) < 200  # a 5000-digit value is not quoted whole


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_count_or_zero_reads_a_bad_count_as_zero(value: Any) -> None:
    assert h.count_or_zero({h.RETRY_COUNT: value}, h.RETRY_COUNT) == 0


def test_read_takes_the_larger_of_our_and_the_quorum_queues_delivery_count() -> None:
    assert h.read({h.DELIVERIES: 2, h.QUORUM_DELIVERIES: 5}).deliveries == 5
    assert h.read({h.DELIVERIES: 4, h.QUORUM_DELIVERIES: 1}).deliveries == 4


@pytest.mark.parametrize("name", [h.RETRY_COUNT, h.DELIVERIES, h.QUORUM_DELIVERIES])
def test_read_refuses_a_bad_value_in_any_count_header(name: str) -> None:
    with pytest.raises(h.BadHeader) as info:
        h.read({name: -1})
    assert info.value.name == name


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (b"2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (datetime(2026, 1, 2), datetime(2026, 1, 2, tzinfo=UTC)),
        (
            "2026-01-02T03:04:05+02:00",
            datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("yesterday", None),
        ("2026-01-02T03:04:05Z" + " " * 100, None),
        (1767322245, None),
        (b"\xff\xfe", None),
        (None, None),
        ({"at": "2026-01-02"}, None),
    ],
)
def test_first_failed_at_is_a_time_or_ignored(value: Any, expected: datetime | None) -> None:
    counts = h.read({h.FIRST_FAILED: value})
    assert counts.first_failed_at == expected
    assert counts.first_failed_at is None or counts.first_failed_at.tzinfo is not None


# -- carry -----------------------------------------------------------------------------------


def test_carry_keeps_what_encodes() -> None:
    kept: dict[str, Any] = {
        "int": 2**63 - 1,
        "negative": -(2**63),
        "float": 1.5,
        "inf": float("inf"),
        "decimal": Decimal("1.25"),
        "text": "caf\u00e9 \x00 nul",
        "bytes": bytearray(b"\xff\x00"),
        "true": True,
        "none": None,
        "time": datetime(2026, 1, 1, tzinfo=UTC),
        "table": {"a": [1, "b", {"c": None}]},
        h.RETRY_COUNT: 2,
    }
    assert h.carry(kept) == kept
    encodes(h.carry(kept))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"n": value}
    return value


UNENCODABLE = {
    "non-utf-8 bytes": b"\xff\xfe",
    "double past single precision": 1e300,
    "int past 64 bits": 2**64,
    "int below 64 bits": -(2**63) - 1,
    "decimal nan": Decimal("NaN"),
    "decimal with a huge mantissa": Decimal("12345678901234567890"),
    "lone surrogate": "\ud800",
    "table holding one bad value": {"ok": 1, "bad": 1e300},
    "array holding one bad value": [1, 2**70],
    "object": object(),
    "nested past the recursion limit": _deep(5000),
}


@pytest.mark.parametrize("value", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_carry_drops_an_unencodable_value_names_it_and_keeps_the_rest(value: Any) -> None:
    carried = h.carry({"bad": value, "good": "yes", h.RETRY_COUNT: 1})
    assert carried == {"good": "yes", h.RETRY_COUNT: 1, h.DROPPED: "bad"}
    encodes(carried)


def test_carry_drops_a_name_past_128_bytes() -> None:
    long_name = "k" * 129
    carried = h.carry({long_name: 1, "k" * 128: 2})
    assert carried["k" * 128] == 2
    assert long_name not in carried
    assert carried[h.DROPPED] == long_name


def test_carry_removes_the_brokers_dead_letter_headers_silently() -> None:
    death = [{"count": 3, "queue": "outbound-processed", "reason": "rejected"}]
    carried = h.carry(
        {
            "x-death": death,
            "x-first-death-queue": "q",
            "x-first-death-reason": "rejected",
            "x-last-death-exchange": "whatsapp-dlx",
            h.TENANT: "acme",
        }
    )
    assert carried == {h.TENANT: "acme"}


def test_carry_replaces_a_producers_dropped_list() -> None:
    carried = h.carry({h.DROPPED: "forged", "bad": 1e300})
    assert carried == {h.DROPPED: "bad"}
    assert h.carry({h.DROPPED: "forged"}) == {}


def test_carry_of_nothing_is_empty() -> None:
    assert h.carry(None) == {}
    assert h.carry({}) == {}


def test_carry_of_200_kb_drops_the_largest_first_and_stays_within_the_limit() -> None:
    big = {f"big-{i}": "x" * 20_000 for i in range(10)}
    small = {f"small-{i}": i for i in range(20)}
    carried = h.carry({**big, **small, h.RETRY_COUNT: 3})
    assert encodes(carried) <= h.MAX_CARRIED_BYTES + MARGIN
    assert all(carried[k] == v for k, v in small.items())
    assert carried[h.RETRY_COUNT] == 3
    dropped = set(carried[h.DROPPED].split(","))
    assert dropped == {k for k in big if k not in carried}
    assert len(dropped) >= 9


def test_carry_of_thousands_of_small_headers_bounds_the_dropped_list_too() -> None:
    many = {f"header-{i:05d}": "v" * 40 for i in range(5000)}  # ~270 KB
    carried = h.carry(many)
    assert encodes(carried) <= h.MAX_CARRIED_BYTES + MARGIN
    assert len(carried[h.DROPPED].encode()) <= h.MAX_TEXT_BYTES


def test_carry_with_one_header_over_the_limit_drops_only_it() -> None:
    carried = h.carry({"huge": "x" * 200_000, "tenant": "acme"})
    assert carried == {"tenant": "acme", h.DROPPED: "huge"}


def test_carry_honours_a_smaller_limit() -> None:
    carried = h.carry({"a": "x" * 100, "b": "y" * 10}, limit=64)
    assert carried == {"b": "y" * 10, h.DROPPED: "a"}


def test_text_cuts_on_a_character_boundary() -> None:
    assert h.text("abc", 10) == "abc"
    cut = h.text("\u00e9" * 1000, 100)
    assert len(cut.encode()) <= 100
    assert cut.endswith("...")
    assert h.text("\ud800" * 10, 8).endswith("...")  # unencodable text is cut, not raised on


amqp_scalars = (
    st.integers()
    | st.floats()
    | st.decimals()
    | st.text(max_size=20)
    | st.integers(min_value=1, max_value=40).map(lambda n: "x" * (n * 1000))
    | st.binary(max_size=20)
    | st.builds(bytearray, st.binary(max_size=20))
    | st.booleans()
    | st.none()
    | st.datetimes(timezones=st.none() | st.just(UTC))
)
amqp_values = st.recursive(
    amqp_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=20) | st.just("k" * 129), amqp_values, max_size=8))
def test_carry_always_encodes_within_the_limit(headers: dict[str, Any]) -> None:
    carried = h.carry(headers)
    assert encodes(carried) <= h.MAX_CARRIED_BYTES + MARGIN
    assert not any(k.startswith(h.BROKER_PREFIXES) for k in carried)
    dropped = carried.get(h.DROPPED, "")
    for key, value in headers.items():
        if key.startswith(h.BROKER_PREFIXES) or key == h.DROPPED:
            assert key not in carried or key == h.DROPPED
        elif key in carried:
            assert carried[key] is value
        elif len(dropped) < h.MAX_TEXT_BYTES - 3:
            assert key in dropped  # named, unless the list itself was cut


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([h.RETRY_COUNT, h.DELIVERIES, "x"]), amqp_values))
def test_read_raises_only_bad_header(headers: dict[str, Any]) -> None:
    try:
        counts = h.read(headers)
    except h.BadHeader as exc:
        name = exc.name
    else:
        assert 0 <= counts.retries <= h.MAX_COUNT
        assert 0 <= counts.deliveries <= h.MAX_COUNT
        return
    assert name in (h.RETRY_COUNT, h.DELIVERIES)


def test_the_broker_may_dead_letter_its_own_death_headers_but_never_forged_ones() -> None:
    from datetime import UTC, datetime

    death = {
        "count": 1,
        "reason": "expired",
        "queue": "outbound-retry-30s",
        "time": datetime.now(UTC),
        "exchange": "",
        "routing-keys": ["outbound-retry-30s"],
    }
    assert h.broker_can_dead_letter(None)
    assert h.broker_can_dead_letter({"x-death": [death], "x-first-death-reason": "expired"})
    assert not h.broker_can_dead_letter({"x-death": ["not a table"]})
    assert not h.broker_can_dead_letter({"x-death": [{**death, "count": 1.5}]})
    assert not h.broker_can_dead_letter({"x-death": {"count": 1}})
    assert not h.broker_can_dead_letter({"x-last-death-queue": 7})
