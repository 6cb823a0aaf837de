"""The CLI package: command modules share ``cli.common`` and never import each other; exit
codes are one table, listed in each group's --help; help text cites no SPEC sections."""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import wa_consumer.cli
from wa_consumer.cli import app
from wa_consumer.cli.common import EXIT_CODES, Exit, exit_code, show_progress
from wa_consumer.errors import (
    LedgerUnavailable,
    LedgerUnreachable,
    SettingsError,
    TopologyMismatch,
    Unreachable,
    WaConsumerError,
)

PACKAGE = Path(wa_consumer.cli.__file__).parent
COMMAND_MODULES = sorted(
    p.stem for p in PACKAGE.glob("*.py") if p.stem not in {"__init__", "common"}
)


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_a_command_module_imports_the_shared_module_and_no_other_command_module(
    module: str,
) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    siblings = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
    }
    assert siblings <= {"common"}, siblings
    absolute = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    ] + [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert not [m for m in absolute if m.startswith("wa_consumer.cli")]


def test_errors_map_to_one_exit_code_each() -> None:
    assert (
        exit_code(TopologyMismatch("q", "x-queue-type", "classic", "quorum")) == Exit.TOPOLOGY == 3
    )
    assert exit_code(Unreachable("broker")) == Exit.UNREACHABLE == 4
    assert exit_code(LedgerUnreachable("db")) == 4
    # Reached, but refused (a wrong password or database): waiting will not help.
    assert exit_code(LedgerUnavailable("db")) == Exit.FAILED
    assert exit_code(SettingsError("WA_X")) == Exit.USAGE == 2
    assert exit_code(WaConsumerError("other")) == Exit.FAILED == 1


def _groups(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group
            found += _groups(command, (*path, name))
    return found


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


ROOT = typer.main.get_group(app)


@pytest.mark.parametrize("group", _groups(ROOT), ids=" ".join)
def test_every_groups_help_lists_the_exit_codes(group: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    for code in ("0 ok", "1 not found", "2 bad usage", "3 topology mismatch", "4 broker"):
        assert code in result.output
    assert "Exit codes" in EXIT_CODES


@pytest.mark.parametrize("command", [(), *_groups(ROOT), *_commands(ROOT)], ids=" ".join)
def test_no_help_text_cites_a_spec_section(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "SPEC" not in result.output


@pytest.mark.parametrize("args", [["replay"], ["purge", "--yes"], ["replay", "--limit", "5"]])
def test_replay_and_purge_with_no_filter_refuse_before_touching_anything(
    args: list[str],
) -> None:
    # WA_AMQP_URL points nowhere: the refusal comes before settings or the broker.
    result = CliRunner().invoke(app, ["dlq", *args], env={"WA_AMQP_URL": "amqp://x:1/"})
    assert result.exit_code == 2
    assert "pass a filter" in result.output and "--all" in result.output


def test_progress_lines_every_thousand_and_at_the_end_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    err = io.StringIO()  # not a TTY
    monkeypatch.setattr("sys.stderr", err)
    with show_progress("replaying") as progress:
        for done in range(100, 2600, 100):
            progress(done, 2500)
    assert err.getvalue().splitlines() == [
        "wa-consumer: replaying: 1,000 of 2,500 messages",
        "wa-consumer: replaying: 2,000 of 2,500 messages",
        "wa-consumer: replaying: 2,500 of 2,500 messages",
    ]


def test_a_short_pass_prints_no_progress_line(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with show_progress("purging") as progress:
        progress(12, 12)
    assert err.getvalue() == ""
