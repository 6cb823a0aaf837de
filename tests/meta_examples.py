"""The request examples of Meta's ``/messages`` operation, from the fixture kept in the repository.

``tests/fixtures/meta_messages_examples.json`` is extracted from Meta's OpenAPI file
(``business-messaging-api_v23.0.yaml``, https://github.com/facebook/openapi, MIT licence: see
``tests/fixtures/META_LICENSE``) by ``scripts/extract_meta_examples.py``, so a fresh clone runs
these tests without Meta's file; ``tests/unit/test_meta_examples.py`` checks the fixture is a
fresh extraction when the file sits in ``shared/meta/`` above the repository.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures"
EXAMPLES_PATH = FIXTURES / "meta_messages_examples.json"
LICENSE_PATH = FIXTURES / "META_LICENSE"


def load_examples() -> dict[str, Any]:
    """The examples by name, each a request body exactly as Meta's file shows it."""
    examples: dict[str, Any] = json.loads(EXAMPLES_PATH.read_text(encoding="utf-8"))["examples"]
    return examples


EXAMPLES = load_examples()
