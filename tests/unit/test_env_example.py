"""config/.env.example lists every setting, with its default: copied to .env it changes nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from wa_consumer.settings import Settings

FILE = Path(__file__).resolve().parents[2] / "config" / ".env.example"
ASSIGNMENT = re.compile(r"^(WA_[A-Z0-9_]+)=", re.MULTILINE)


def _names_in_file() -> list[str]:
    return ASSIGNMENT.findall(FILE.read_text(encoding="utf-8"))


def test_every_setting_is_in_env_example_and_nothing_else() -> None:
    named = _names_in_file()
    settings = {f"WA_{name.upper()}" for name in Settings.model_fields}
    missing = sorted(settings - set(named))
    unknown = sorted(set(named) - settings)
    twice = sorted({n for n in named if named.count(n) > 1})
    assert not missing, f"config/.env.example lacks {', '.join(missing)}"
    assert not unknown, f"config/.env.example names no setting: {', '.join(unknown)}"
    assert not twice, f"config/.env.example sets twice: {', '.join(twice)}"


def test_every_setting_has_a_comment_line_above_it() -> None:
    lines = FILE.read_text(encoding="utf-8").splitlines()
    bare = [
        line.split("=", 1)[0]
        for above, line in zip(["", *lines], lines, strict=False)
        if line.startswith("WA_") and not above.startswith("#")
    ]
    assert not bare, f"no comment above {', '.join(bare)}"


def test_env_example_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("WA_")]:
        monkeypatch.delenv(name)
    from_file = Settings(_env_file=FILE)
    defaults = Settings(_env_file=None)
    wrong = [
        f"WA_{name.upper()}={getattr(from_file, name)!r}, default {getattr(defaults, name)!r}"
        for name in Settings.model_fields
        if getattr(from_file, name) != getattr(defaults, name)
    ]
    assert not wrong, "config/.env.example differs from the defaults: " + "; ".join(wrong)
