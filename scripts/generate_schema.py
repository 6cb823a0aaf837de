"""Write the JSON Schema of the message (SPEC §3) from the models the daemon validates with.

    python scripts/generate_schema.py          # (re)write config/outbound-message.schema.json
    python scripts/generate_schema.py --check  # exit 1 when the file differs from the models

The file is committed so services in other languages can validate without Python;
``tests/unit/test_schema.py`` fails when it is stale. ``config/asyncapi.yaml`` refers to it.

Two changes to what pydantic generates, both so another language's validator judges like the
models and says why:

- each union chosen by ``type`` (``wabaPayload``, and ``interactive`` inside it) becomes an
  ``enum`` on ``type`` plus one ``if``/``then`` per value, instead of a ``oneOf`` whose only
  error is "not valid under any of the given schemas": a wrong ``type`` is reported at
  ``type``, and a right one with a bad body at the fields of that type's schema;
- a ``wabaPayload`` without ``type`` is judged as the models judge it (Meta's default): by the
  first message object present (``text`` first), else ``status`` (a read receipt).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import Tag

from wa_consumer.message import OutboundMessage
from wa_consumer.payloads import MESSAGE_TYPES, STATUS, WabaPayload

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "outbound-message.schema.json"
COMMAND = "python scripts/generate_schema.py"

DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic generates
VERSION = 1
"""The contract's major version, in ``$id``. Raise it only when a message valid under the
previous version is refused (a new type or field is no new version)."""
SCHEMA_ID = f"https://wa-consumer.dev/schemas/outbound-message/{VERSION}.json"
TITLE = "wa-consumer outbound message"
ID_NOTE = (
    "$id names this contract and its major version; it is an identifier, not necessarily a "
    "URL that can be fetched: use the file from the repository (config/)."
)
DESCRIPTION = (
    "One message published to exchange whatsapp-exchange with routing key "
    "outbound.processed.<tenantId> (see config/asyncapi.yaml): the envelope (metadata) and "
    "the WhatsApp Cloud API /messages request body (wabaPayload), sent as received."
)
_DEFS = "#/$defs/"


def build_schema() -> dict[str, Any]:
    """The schema as a dict: identity first, then what pydantic generates, its unions by
    ``type`` rewritten as ``if``/``then`` (see the module docstring)."""
    generated = OutboundMessage.model_json_schema()
    generated.pop("title", None)
    generated["description"] = DESCRIPTION
    properties = generated["properties"]
    properties["wabaPayload"] = _waba_payload(properties["wabaPayload"])
    for definition in generated["$defs"].values():
        for name, prop in definition.get("properties", {}).items():
            if "discriminator" in prop:
                definition["properties"][name] = _by_type(prop)
    return {
        "$schema": DIALECT,
        "$id": SCHEMA_ID,
        "$comment": ID_NOTE,
        "title": TITLE,
        **generated,
    }


def _tags() -> dict[str, str]:
    """``type`` value -> model name, in the union's order (read from ``WabaPayload``)."""
    union, _discriminator = get_args(WabaPayload)
    tags: dict[str, str] = {}
    for member in get_args(union):
        model, *marks = get_args(member)
        tag = next(mark.tag for mark in marks if isinstance(mark, Tag))
        tags[tag] = model.__name__
    return tags


def _when_type(value: str, ref: str) -> dict[str, Any]:
    return {
        "if": {"properties": {"type": {"const": value}}, "required": ["type"]},
        "then": {"$ref": ref},
    }


def _waba_payload(generated: dict[str, Any]) -> dict[str, Any]:
    tags = _tags()
    refs = {tag: _DEFS + name for tag, name in tags.items()}
    assert [item["$ref"] for item in generated["oneOf"]] == list(refs.values()), (
        "pydantic's union no longer lists the models in WabaPayload's order"
    )
    assert list(tags) == [*MESSAGE_TYPES, STATUS]
    # Without ``type``: the first message object present, else a read receipt, else missing.
    inferred: dict[str, Any] = {"required": ["type"]}
    for tag in reversed(list(tags)):
        inferred = {"if": {"required": [tag]}, "then": {"$ref": refs[tag]}, "else": inferred}
    return {
        "description": "The Cloud API /messages request body, chosen by its type. Without "
        "type, the first message object present decides (text first: Meta's default); a "
        "body with only status is a read receipt.",
        "type": "object",
        "properties": {"type": {"type": "string", "enum": list(tags)}},
        "allOf": [
            *(_when_type(tag, ref) for tag, ref in refs.items()),
            {"if": {"not": {"required": ["type"]}}, "then": inferred},
        ],
    }


def _by_type(generated: dict[str, Any]) -> dict[str, Any]:
    """A ``oneOf`` with an OpenAPI-style ``discriminator`` on ``type``, as ``if``/``then``."""
    discriminator = generated["discriminator"]
    assert discriminator["propertyName"] == "type", discriminator
    mapping: dict[str, str] = discriminator["mapping"]
    refs = {item["$ref"] for item in generated["oneOf"]}
    assert refs == set(mapping.values()), "the discriminator maps other schemas than oneOf"
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string", "enum": list(mapping)}},
        "allOf": [_when_type(tag, ref) for tag, ref in mapping.items()],
    }


def render() -> str:
    """The file's exact text: stable, so a stale file shows up as a plain diff."""
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file is stale; write nothing"
    )
    args = parser.parse_args(argv)
    wanted = render()
    current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else None
    relative = SCHEMA_PATH.relative_to(ROOT)
    if args.check:
        if current == wanted:
            print(f"{relative} is up to date")
            return 0
        print(f"{relative} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
        return 1
    if current == wanted:
        print(f"{relative} is up to date")
        return 0
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(wanted, encoding="utf-8")
    print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
