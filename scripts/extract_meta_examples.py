"""Extract the request examples of Meta's ``/messages`` operation into a fixture the tests read.

    python scripts/extract_meta_examples.py          # (re)write the fixture from Meta's file
    python scripts/extract_meta_examples.py --check  # exit 1 when the fixture differs from it
    python scripts/extract_meta_examples.py --openapi PATH  # read Meta's file from PATH

Meta's OpenAPI description of the WhatsApp Business Platform
(``business-messaging-api_v23.0.yaml``, from https://github.com/facebook/openapi, MIT licence,
Copyright (c) Meta Platforms, Inc. and affiliates) is 1 MB and lives outside the repository
(``shared/meta/`` in a folder above it). The tests need only the request examples of
``POST /{Version}/{Phone-Number-ID}/messages``, so those are committed in
``tests/fixtures/meta_messages_examples.json``, with Meta's licence notice beside them in
``tests/fixtures/META_LICENSE``; a fresh clone runs every test without Meta's file, and
``tests/unit/test_meta_examples.py`` checks the fixture against Meta's file when it is present.
Needs pyyaml (in the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PATH = ROOT / "tests" / "fixtures" / "meta_messages_examples.json"
LICENSE_PATH = ROOT / "tests" / "fixtures" / "META_LICENSE"
COMMAND = "python scripts/extract_meta_examples.py"

OPENAPI_NAME = "business-messaging-api_v23.0.yaml"
MESSAGES_PATH = "/{Version}/{Phone-Number-ID}/messages"
SOURCE = {
    "file": OPENAPI_NAME,
    "repository": "https://github.com/facebook/openapi",
    "license": "MIT",
    "copyright": "Copyright (c) Meta Platforms, Inc. and affiliates.",
    "license_file": "META_LICENSE",
    "extracted": f"paths['{MESSAGES_PATH}'].post.requestBody.content['application/json'].examples",
    "generated_by": COMMAND,
}


def find_openapi(start: Path = ROOT) -> Path | None:
    """Meta's file in ``shared/meta/`` of the first folder above ``start`` that has it."""
    for folder in start.resolve().parents:
        candidate = folder / "shared" / "meta" / OPENAPI_NAME
        if candidate.is_file():
            return candidate
    return None


def extract(openapi: Path) -> dict[str, Any]:
    """The examples by name, each the request body Meta shows, in the file's order."""
    import yaml  # type: ignore[import-untyped, unused-ignore]

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with openapi.open(encoding="utf-8") as file:
        spec = yaml.load(file, Loader=loader)  # a safe loader: CSafeLoader or SafeLoader
    body = spec["paths"][MESSAGES_PATH]["post"]["requestBody"]["content"]["application/json"]
    return {name: example["value"] for name, example in body["examples"].items()}


def render(examples: dict[str, Any]) -> str:
    """The fixture's exact text: stable, so a stale fixture shows up as a plain diff."""
    document = {"source": SOURCE, "examples": examples}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openapi", type=Path, help=f"Meta's {OPENAPI_NAME} (found if omitted)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the fixture is stale; write nothing"
    )
    args = parser.parse_args(argv)
    openapi = args.openapi or find_openapi()
    if openapi is None or not openapi.is_file():
        print(
            f"Meta's {OPENAPI_NAME} was not found (looked for shared/meta/ above {ROOT}); "
            "pass --openapi PATH",
            file=sys.stderr,
        )
        return 2
    license_path = openapi.parent / "LICENSE"
    wanted = render(extract(openapi))
    wanted_license = license_path.read_text(encoding="utf-8") if license_path.is_file() else None
    current = FIXTURE_PATH.read_text(encoding="utf-8") if FIXTURE_PATH.exists() else None
    current_license = LICENSE_PATH.read_text(encoding="utf-8") if LICENSE_PATH.exists() else None
    relative = FIXTURE_PATH.relative_to(ROOT)
    if args.check:
        if current == wanted and wanted_license in (None, current_license):
            print(f"{relative} is up to date")
            return 0
        print(f"{relative} is stale: run `{COMMAND}` and commit it", file=sys.stderr)
        return 1
    FIXTURE_PATH.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE_PATH.write_text(wanted, encoding="utf-8")
    if wanted_license is not None:
        LICENSE_PATH.write_text(wanted_license, encoding="utf-8")
    elif current_license is None:
        print(f"warning: no LICENSE beside {openapi}; keep Meta's notice in {LICENSE_PATH}")
    print(f"wrote {relative} ({len(json.loads(wanted)['examples'])} examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
