"""Every request example of Meta's ``/messages`` OpenAPI operation is accepted and sent unchanged.

The OpenAPI file lives in ``shared/meta/`` beside the repository (SPEC §3); it is found by
walking up from this file. Without it, or without pyyaml, these tests are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from wa_consumer.message import parse, with_callback
from wa_consumer.payloads import MESSAGE_TYPES, STATUS

yaml = pytest.importorskip("yaml", reason="pyyaml is needed to read Meta's OpenAPI file")

OPENAPI_NAME = "business-messaging-api_v23.0.yaml"
MESSAGES_PATH = "/{Version}/{Phone-Number-ID}/messages"


def _find_openapi() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "shared" / "meta" / OPENAPI_NAME
        if candidate.is_file():
            return candidate
    return None


def _load_examples(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open(encoding="utf-8") as file:
        spec = yaml.load(file, Loader=loader)  # a safe loader: CSafeLoader or SafeLoader
    body = spec["paths"][MESSAGES_PATH]["post"]["requestBody"]["content"]["application/json"]
    return {name: example["value"] for name, example in body["examples"].items()}


OPENAPI = _find_openapi()
if OPENAPI is None:
    pytest.skip(
        f"Meta's OpenAPI file (shared/meta/{OPENAPI_NAME}) was not found in any folder above "
        f"{Path(__file__).resolve().parent}; copy shared/ beside the repository to run these",
        allow_module_level=True,
    )
EXAMPLES = _load_examples(OPENAPI)


def test_the_examples_were_all_found() -> None:
    # Meta's v23.0 file holds 50; fewer would mean the walk missed some.
    assert len(EXAMPLES) >= 50


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_meta_example_is_accepted_and_sent_unchanged(name: str) -> None:
    example = EXAMPLES[name]
    body = orjson.dumps(
        {"metadata": {"tenantId": "acme", "internalId": f"example-{name}"}, "wabaPayload": example}
    )

    out = parse(body)

    sent = with_callback(example, f"example-{name}")
    assert orjson.loads(out.payload) == sent
    assert out.payload == orjson.dumps(sent)  # same key order too
    assert out.type == example.get("type", out.type)
    assert out.type in (*MESSAGE_TYPES, STATUS)
    assert out.to == example.get("to")
