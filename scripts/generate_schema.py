"""Write the JSON Schema of the message (SPEC §3) from the models the daemon validates with.

    python scripts/generate_schema.py          # (re)write config/outbound-message.schema.json
    python scripts/generate_schema.py --check  # exit 1 when the file differs from the models

The file is committed so services in other languages can validate without Python;
``tests/unit/test_schema.py`` fails when it is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wa_consumer.message import OutboundMessage

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "outbound-message.schema.json"
COMMAND = "python scripts/generate_schema.py"

DIALECT = "https://json-schema.org/draft/2020-12/schema"  # the dialect pydantic generates
SCHEMA_ID = "urn:wa-consumer:outbound-message"
TITLE = "wa-consumer outbound message"


def build_schema() -> dict[str, Any]:
    """The schema as a dict: identity first, then what pydantic generates."""
    generated = OutboundMessage.model_json_schema()
    generated.pop("title", None)
    return {"$schema": DIALECT, "$id": SCHEMA_ID, "title": TITLE, **generated}


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
