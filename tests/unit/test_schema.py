"""The published JSON Schema (SPEC §3) is what the models generate, and judges as they do.

Services in other languages validate with ``config/outbound-message.schema.json``; a stale file
would let them publish what the daemon kills as ``invalid``, or refuse what it would send.
The validation tests need the ``jsonschema`` package and are skipped without it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.meta_examples import EXAMPLES as META_EXAMPLES
from wa_consumer.errors import InvalidMessage
from wa_consumer.message import parse
from wa_consumer.payloads import MESSAGE_TYPES, STATUS
from wa_consumer.publisher import media_message, template_message, text_message

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_schema", ROOT / "scripts" / "generate_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generator = _generator()


def test_committed_schema_is_what_the_models_generate() -> None:
    path: Path = generator.SCHEMA_PATH
    assert path.is_file(), f"{path} is missing: run `{generator.COMMAND}` and commit it"
    committed = path.read_text(encoding="utf-8")
    assert committed == generator.render(), (
        f"{path.relative_to(ROOT)} is stale (the message models changed): "
        f"run `{generator.COMMAND}` and commit it"
    )


def test_check_mode_exits_1_on_a_stale_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "outbound-message.schema.json"
    stale.write_text("{}\n", encoding="utf-8")
    monkeypatch.setattr(generator, "SCHEMA_PATH", stale)
    monkeypatch.setattr(generator, "ROOT", tmp_path)

    assert generator.main(["--check"]) == 1
    assert stale.read_text(encoding="utf-8") == "{}\n"  # --check writes nothing
    assert generator.main([]) == 0
    assert generator.main(["--check"]) == 0


def test_schema_names_itself() -> None:
    schema = generator.build_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]
    assert schema["required"] == ["metadata", "wabaPayload"]


# -- validating with the schema -----------------------------------------------------------


def _text(**payload: Any) -> dict[str, Any]:
    message = text_message("acme", "27821234567", "Your order is ready", internal_id="id-1")
    message["wabaPayload"].update(payload)
    return message


def _without(message: dict[str, Any], *path: str) -> dict[str, Any]:
    """A copy of ``message`` with the key at ``path`` removed."""
    message = copy.deepcopy(message)
    node = message
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return message


SPEC_EXAMPLE = {
    "metadata": {
        "tenantId": "acme",
        "internalId": "9f1c2e7a-0001",
        "phoneNumberId": "106540352242922",
        "expiresAt": "2026-11-24T12:00:00Z",
    },
    "wabaPayload": {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "27821234567",
        "type": "text",
        "text": {"body": "Your order is ready", "preview_url": False},
    },
}

GOOD = {
    "spec example": SPEC_EXAMPLE,
    "text helper": _text(),
    "text without type (Meta's default)": _without(_text(), "wabaPayload", "type"),
    "extra metadata carried": text_message("acme", "278", "hi", metadata={"orderId": 42}),
    "template helper": template_message(
        "acme",
        "27821234567",
        "order_ready",
        "en_US",
        [{"type": "body", "parameters": [{"type": "text", "text": "A-17"}]}],
    ),
    "image by link": media_message("acme", "278", "image", link="https://x.test/a.png"),
    "document by id": media_message("acme", "278", "document", media_id="1", filename="a.pdf"),
    "reply with callback data": text_message(
        "acme", "278", "hi", reply_to="wamid.HBgL", callback_data="order-17"
    ),
}

BAD = {
    "no tenantId": _without(SPEC_EXAMPLE, "metadata", "tenantId"),
    "empty internalId": {**SPEC_EXAMPLE, "metadata": {"tenantId": "acme", "internalId": ""}},
    "phoneNumberId not digits": {
        **SPEC_EXAMPLE,
        "metadata": {"tenantId": "a", "internalId": "b", "phoneNumberId": "+1 555"},
    },
    "no wabaPayload": _without(SPEC_EXAMPLE, "wabaPayload"),
    "missing to": _without(_text(), "wabaPayload", "to"),
    "text over 4096 characters": _text(text={"body": "x" * 4097}),
    "empty text": _text(text={"body": ""}),
    "unknown type": _text(type="hologram", hologram={}),
    "wrong messaging_product": _text(messaging_product="sms"),
    "media by both id and link": media_message(
        "acme", "278", "video", media_id="1", link="https://x.test/v.mp4"
    ),
    "media by neither id nor link": media_message("acme", "278", "sticker"),
    "caption over 1024 characters": media_message(
        "acme", "278", "image", media_id="1", caption="x" * 1025
    ),
    "template without language": _without(
        template_message("acme", "278", "order_ready", "en_US"),
        "wabaPayload",
        "template",
        "language",
    ),
}


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="validating needs jsonschema")
    schema = json.loads(generator.SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", list(GOOD))
def test_schema_and_models_accept(validator: Any, name: str) -> None:
    message = GOOD[name]
    errors = [e.message for e in validator.iter_errors(message)]
    assert errors == []
    parse(json.dumps(message).encode())


@pytest.mark.parametrize("name", list(BAD))
def test_schema_and_models_refuse(validator: Any, name: str) -> None:
    message = BAD[name]
    assert not validator.is_valid(message)
    with pytest.raises(InvalidMessage):
        parse(json.dumps(message).encode())


def test_every_meta_example_is_valid_by_the_schema(validator: Any) -> None:
    # Meta's request examples, from the fixture kept in the repository (tests/meta_examples.py).
    refused = {}
    for name, example in META_EXAMPLES.items():
        message = {"metadata": {"tenantId": "acme", "internalId": name}, "wabaPayload": example}
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(message)]
        if errors:
            refused[name] = errors[:3]
    assert refused == {}


# -- the contract for other languages: identity, descriptions, a type that names itself -------


def test_schema_id_is_versioned() -> None:
    schema = generator.build_schema()
    assert schema["$id"] == (
        f"https://wa-consumer.dev/schemas/outbound-message/{generator.VERSION}.json"
    )
    assert "identifier" in schema["$comment"]  # not promised to be fetchable


def test_every_metadata_field_is_described() -> None:
    schema = generator.build_schema()
    metadata = schema["$defs"]["Metadata"]
    assert metadata["description"]
    undescribed = [k for k, v in metadata["properties"].items() if not v.get("description")]
    assert undescribed == []
    assert schema["description"] and schema["properties"]["wabaPayload"]["description"]


def test_type_is_a_discriminator_not_a_oneof() -> None:
    waba = generator.build_schema()["properties"]["wabaPayload"]
    assert "oneOf" not in waba
    assert waba["properties"]["type"]["enum"] == [*MESSAGE_TYPES, STATUS]
    text = json.dumps(generator.build_schema())
    assert '"discriminator"' not in text  # OpenAPI's keyword, which validators ignore


def _type_errors(validator: Any, message: dict[str, Any]) -> list[str]:
    errors = list(validator.iter_errors(message))
    assert errors, "the schema accepted it"
    return [".".join(map(str, e.absolute_path)) for e in errors]


@pytest.mark.parametrize(
    ("message", "where"),
    [
        (_text(type="hologram", hologram={}), "wabaPayload.type"),
        (_text(type="txt"), "wabaPayload.type"),
        (_text(type=7), "wabaPayload.type"),
        (
            text_message("acme", "278", "hi")
            | {
                "wabaPayload": {
                    "messaging_product": "whatsapp",
                    "to": "278",
                    "type": "interactive",
                    "interactive": {"type": "buton", "body": {"text": "hi"}, "action": {}},
                }
            },
            "wabaPayload.interactive.type",
        ),
        # no type and no message object: the type is what is missing
        (_without(_without(_text(), "wabaPayload", "type"), "wabaPayload", "text"), "wabaPayload"),
    ],
    ids=["unknown", "misspelt", "not a string", "interactive", "absent"],
)
def test_a_wrong_type_names_itself(validator: Any, message: dict[str, Any], where: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    best = jsonschema.exceptions.best_match(validator.iter_errors(message))
    assert ".".join(map(str, best.absolute_path)) == where
    assert "type" in best.message or best.validator == "enum", best.message
    # and only there: a wrong type is not also reported as every other type's failures
    assert set(_type_errors(validator, message)) == {where}
    with pytest.raises(InvalidMessage) as refused:
        parse(json.dumps(message).encode())
    assert refused.value.where in {where, f"{where}.type"}


def test_a_right_type_with_a_bad_body_names_the_field(validator: Any) -> None:
    message = _text(text={"body": ""})
    assert _type_errors(validator, message) == ["wabaPayload.text.body"]


@pytest.mark.parametrize(
    "payload",
    [
        {"messaging_product": "whatsapp", "to": "278", "image": {"id": "1"}},
        {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"},
    ],
    ids=["image without type", "read receipt"],
)
def test_a_payload_without_type_is_judged_by_its_object(
    validator: Any, payload: dict[str, Any]
) -> None:
    message = {"metadata": {"tenantId": "a", "internalId": "b"}, "wabaPayload": payload}
    assert [e.message for e in validator.iter_errors(message)] == []
    parse(json.dumps(message).encode())
    broken = copy.deepcopy(message)
    key = "image" if "image" in payload else "message_id"
    broken["wabaPayload"][key] = (
        {"id": "1", "link": "https://x.test/a.png"} if key == "image" else ""
    )
    assert not validator.is_valid(broken)
    with pytest.raises(InvalidMessage):
        parse(json.dumps(broken).encode())
