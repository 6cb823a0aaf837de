"""Every request example of Meta's ``/messages`` OpenAPI operation is accepted and sent unchanged.

The examples come from ``tests/fixtures/meta_messages_examples.json`` (read by
``tests/meta_examples.py``), so these tests run in a fresh clone. When Meta's OpenAPI file sits in
``shared/meta/`` above the repository (SPEC §3), one more test checks the fixture is a fresh
extraction of it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import orjson
import pytest

from tests.meta_examples import EXAMPLES, EXAMPLES_PATH, LICENSE_PATH
from wa_consumer.message import parse, with_callback
from wa_consumer.payloads import MESSAGE_TYPES, STATUS

ROOT = Path(__file__).resolve().parents[2]


def _extractor() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "extract_meta_examples", ROOT / "scripts" / "extract_meta_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extractor = _extractor()


def test_the_examples_were_all_found() -> None:
    # Meta's v23.0 file holds 50; fewer would mean the extraction missed some.
    assert len(EXAMPLES) >= 50


def test_the_fixture_keeps_metas_licence_notice() -> None:
    notice = LICENSE_PATH.read_text(encoding="utf-8")
    assert notice.startswith("MIT License")
    assert "Copyright (c) Meta Platforms, Inc. and affiliates." in notice
    source = orjson.loads(EXAMPLES_PATH.read_bytes())["source"]
    assert (source["license"], source["license_file"]) == ("MIT", LICENSE_PATH.name)
    assert source["repository"] == "https://github.com/facebook/openapi"


def test_the_fixture_is_a_fresh_extraction_of_metas_file() -> None:
    openapi = extractor.find_openapi()
    if openapi is None:
        pytest.skip(
            f"Meta's OpenAPI file (shared/meta/{extractor.OPENAPI_NAME}) is not above the "
            "repository; the committed fixture is used as it is"
        )
    pytest.importorskip("yaml", reason="pyyaml is needed to read Meta's OpenAPI file")
    assert extractor.FIXTURE_PATH == EXAMPLES_PATH
    assert EXAMPLES_PATH.read_text(encoding="utf-8") == extractor.render(
        extractor.extract(openapi)
    ), f"the fixture is stale: run `{extractor.COMMAND}` and commit it"
    beside = openapi.parent / "LICENSE"
    if beside.is_file():
        assert LICENSE_PATH.read_text(encoding="utf-8") == beside.read_text(encoding="utf-8")


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
