"""``wa-consumer``: the daemon and its tools.

One module per command group, each importing ``common`` (failures, exit codes, settings,
the event loop, connections) and never another::

    common       shared helpers and the exit codes every group's --help lists
    daemon       run, webhook, publish, sandbox, demo; topology declare | export
    dlq          dlq stats | list | show (the group; the next three are mounted on it)
    dlq_replay   dlq replay [--canary N]
    dlq_purge    dlq purge
    dlq_edit     dlq edit ID --file F
    ledger       db migrate | prune; status
    deliveries   failures stats | list | show; report costs
    tenant       tenant pause | resume | drain | status
    console      console (the web console and its API) | hash-password
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from .common import EXIT_CODES, Exit, fail, run_async, serve, settings_or_exit
from .console import console_app
from .daemon import daemon_app, topology_app
from .deliveries import failures_app, report_app
from .dlq import dlq_app
from .dlq_edit import edit_command
from .dlq_purge import purge_command
from .dlq_replay import replay_command
from .ledger import db_app, status_command
from .tenant import tenant_app

__all__ = [
    "DISTRIBUTION",
    "EXIT_CODES",
    "Exit",
    "app",
    "fail",
    "main",
    "run_async",
    "serve",
    "settings_or_exit",
]

DISTRIBUTION = "wa-consumer"  # [project] name in pyproject.toml

app = typer.Typer(
    help="Deliver outbound WhatsApp messages from RabbitMQ through Meta's Cloud API.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("status", epilog=EXIT_CODES)(status_command)
app.add_typer(daemon_app)  # no name: its commands sit at the top level
app.add_typer(topology_app, name="topology")
app.add_typer(db_app, name="db")
dlq_app.command("replay")(replay_command)
dlq_app.command("purge")(purge_command)
dlq_app.command("edit")(edit_command)
app.add_typer(dlq_app, name="dlq")
app.add_typer(failures_app, name="failures")
app.add_typer(report_app, name="report")
app.add_typer(tenant_app, name="tenant")
app.add_typer(console_app, name="console")


def _print_version(wanted: bool) -> None:
    if not wanted:
        return
    try:
        installed = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    typer.echo(f"wa-consumer {installed}")
    raise typer.Exit(0)


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    pass


def main() -> None:
    app()
