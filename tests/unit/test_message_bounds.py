"""What a producer controls is bounded where it enters (STYLE §11): a value the ledger or the
broker would refuse is refused by ``parse`` as that message's own ``invalid``, naming the
field, and with the ids only when they are themselves usable."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from wa_consumer.errors import InvalidMessage
from wa_consumer.message import (
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECIPIENT_CHARS,
    parse,
    with_callback,
)

from .pipeline_fakes import WABA, body


def refused(raw: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse(raw)
    assert info.value.reason
    assert len(str(info.value)) <= 600  # the offending value is named, never quoted whole
    return info.value


def nested(levels: int) -> Any:
    """``levels`` nested objects around a leaf: the leaf sits ``levels + 1`` deep."""
    value: Any = "leaf"
    for _ in range(levels):
        value = {"n": value}
    return value


@pytest.mark.parametrize("field", ["tenantId", "internalId"])
def test_id_of_the_maximum_length_is_accepted(field: str) -> None:
    message = parse(body({field: "i" * MAX_ID_CHARS}))
    assert "i" * MAX_ID_CHARS in (message.tenant_id, message.internal_id)


@pytest.mark.parametrize("length", [MAX_ID_CHARS + 1, 140_000])
def test_tenant_id_too_long_is_refused_and_not_returned(length: int) -> None:
    error = refused(body({"tenantId": "t" * length}))
    assert error.where == "metadata.tenantId"
    assert error.tenant_id is None
    assert error.internal_id == "m-1"


@pytest.mark.parametrize("length", [MAX_ID_CHARS + 1, 140_000])
def test_internal_id_too_long_is_refused_and_not_returned(length: int) -> None:
    error = refused(body({"internalId": "i" * length}))
    assert error.where == "metadata.internalId"
    assert error.internal_id is None
    assert error.tenant_id == "acme"


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\u2028"])
@pytest.mark.parametrize("field", ["tenantId", "internalId"])
def test_id_with_a_control_character_is_refused_and_not_returned(field: str, char: str) -> None:
    error = refused(body({field: f"ac{char}me"}))
    assert error.where == f"metadata.{field}"
    assert "control" in error.reason
    ids = {"tenantId": error.tenant_id, "internalId": error.internal_id}
    assert ids[field] is None
    assert ids[{"tenantId": "internalId", "internalId": "tenantId"}[field]] is not None


def test_both_ids_unusable_return_neither() -> None:
    error = refused(body({"tenantId": "t" * 300, "internalId": "a\x00b"}))
    assert error.where.startswith("metadata.")
    assert (error.tenant_id, error.internal_id) == (None, None)


@pytest.mark.parametrize("ok", ["1", "1" * 32])
def test_phone_number_id_of_1_to_32_digits_is_accepted(ok: str) -> None:
    assert parse(body({"phoneNumberId": ok})).phone_number_id == ok


@pytest.mark.parametrize("bad", ["1" * 33, "1" * 10_000, "", "12a", "١٢٣", "1\n", 123])
def test_phone_number_id_not_1_to_32_ascii_digits_is_refused(bad: Any) -> None:
    error = refused(body({"phoneNumberId": bad}))
    assert error.where == "metadata.phoneNumberId"
    assert (error.tenant_id, error.internal_id) == ("acme", "m-1")


def test_recipient_of_the_maximum_length_is_accepted() -> None:
    assert parse(body(to="1" * MAX_RECIPIENT_CHARS)).to == "1" * MAX_RECIPIENT_CHARS


@pytest.mark.parametrize(
    "to", ["1" * (MAX_RECIPIENT_CHARS + 1), "1" * 100_000, "2782\x001", "1\n2"]
)
def test_recipient_too_long_or_with_control_characters_is_refused(to: str) -> None:
    error = refused(body(to=to))
    assert error.where == "wabaPayload.to"
    assert (error.tenant_id, error.internal_id) == ("acme", "m-1")


def nested_list(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


METADATA_REFUSED = {
    "NUL in a top-level key": ({"ke\x00y": 1}, "metadata"),
    "NUL in a value": ({"note": "a\x00b"}, "metadata.note"),
    "NUL in a nested key": ({"note": {"a\x00": 1}}, "metadata.note"),
    "NUL in a nested value": ({"note": {"a": ["x", "y\x00"]}}, "metadata.note.a[1]"),
    "NUL deep in a list": ({"tags": [[["\x00"]]]}, "metadata.tags[0][0][0]"),
    "objects too deep": ({"deep": nested(MAX_METADATA_DEPTH)}, "metadata.deep" + ".n" * 16),
    "lists too deep": ({"deep": nested_list(MAX_METADATA_DEPTH)}, "metadata.deep" + "[0]" * 16),
    "too large": ({"blob": "x" * MAX_METADATA_BYTES}, "metadata"),
    "too large in many keys": ({f"k{i}": "x" * 100 for i in range(200)}, "metadata"),
}


@pytest.mark.parametrize(("extra", "where"), METADATA_REFUSED.values(), ids=METADATA_REFUSED.keys())
def test_metadata_extras_the_ledger_could_not_keep_are_refused(
    extra: dict[str, Any], where: str
) -> None:
    error = refused(body(extra))
    assert error.where == where
    assert (error.tenant_id, error.internal_id) == ("acme", "m-1")


def test_metadata_extras_at_the_bounds_are_kept() -> None:
    extra = {"deep": nested(MAX_METADATA_DEPTH - 1), "blob": "x" * (MAX_METADATA_BYTES - 300)}
    message = parse(body(extra))
    assert dict(message.extra) == extra


def test_where_of_a_deep_path_with_long_keys_is_cut() -> None:
    extra: Any = "\x00"
    for _ in range(10):
        extra = {"k" * 100: extra}
    error = refused(body({"note": extra}))
    assert error.where.startswith("metadata.note.kkk")
    assert len(error.where) <= 200


def test_payload_fields_other_than_to_are_not_bounded_here() -> None:
    """Only what the ledger keeps is bounded by parse; the payload goes to Meta as it came."""
    waba = {**WABA, "text": {"body": "x" * 4096}}
    raw = orjson.dumps({"metadata": {"tenantId": "acme", "internalId": "m-1"}, "wabaPayload": waba})
    assert parse(raw).payload == orjson.dumps(with_callback(waba, "m-1"))
