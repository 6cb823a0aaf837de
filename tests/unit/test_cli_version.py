"""``wa-consumer --version`` prints the installed distribution's version and exits 0."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from wa_consumer.cli import DISTRIBUTION, app


def test_version_prints_the_installed_version_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"wa-consumer {version('wa-consumer')}\n"


def test_version_is_eager_and_runs_no_command() -> None:
    # Eager: printed before any command is parsed or run (`run` would need settings).
    result = CliRunner().invoke(app, ["--version", "run"], env={"WA_AMQP_URL": ""})
    assert result.exit_code == 0, result.output
    assert result.output == f"wa-consumer {version(DISTRIBUTION)}\n"


def test_the_distribution_is_the_one_pyproject_names() -> None:
    assert DISTRIBUTION == "wa-consumer"
    assert version(DISTRIBUTION)
