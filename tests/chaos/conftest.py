"""Fixtures of the chaos suite: a scenario (``chaos``) and its report.

Each scenario prints one summary line at the end of the run (``chaos <name>: messages=...
lost=... duplicates=... dead=... recover_s=...``) and, when ``WA_CHAOS_REPORT`` names a
file, appends its figures there as one JSON line. Daemon logs go to ``WA_CHAOS_LOG_DIR`` if
set, else to a temporary directory; failure messages give the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from .harness import Chaos, Figures

_LINES: list[str] = []


@pytest.fixture
def log_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    root = os.environ.get("WA_CHAOS_LOG_DIR")
    if root:
        path = Path(root) / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp(f"chaos-{name}", numbered=True)


@pytest.fixture
async def chaos(vhost: str, sandbox: Any, database: str, log_dir: Path) -> AsyncIterator[Any]:
    """``chaos(name)`` opens a scenario; its daemons and proxies are gone afterwards."""
    opened: list[Chaos] = []

    async def make(name: str) -> Chaos:
        scenario = Chaos(
            name, amqp_url=vhost, sandbox=sandbox, database_url=database, log_dir=log_dir
        )
        opened.append(scenario)
        return await scenario.open()

    try:
        yield make
    finally:
        for scenario in opened:
            await scenario.close()


@pytest.fixture
def report() -> Callable[[Figures], None]:
    """Record a scenario's figures: a summary line, and a JSON line in WA_CHAOS_REPORT."""

    def record(figures: Figures) -> None:
        line = figures.line()
        _LINES.append(line)
        print(line)
        target = os.environ.get("WA_CHAOS_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(figures.as_json(), default=str) + "\n")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _LINES:
        terminalreporter.section("chaos summary")
        for line in _LINES:
            terminalreporter.write_line(line)
