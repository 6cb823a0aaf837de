"""The console: ``console`` (serve the web page and its JSON API) and
``console hash-password`` (a password hash for ``WA_CONSOLE_USERS``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .common import EXIT_CODES, Exit, fail, serve, settings_or_exit

console_app = typer.Typer(
    name="console",
    help="Failures and tenants in a browser, and the same as a JSON API under /api/ "
    "(login: WA_CONSOLE_USERS; API: WA_CONSOLE_API_TOKENS). With no command: serve it on "
    "WA_CONSOLE_HOST:WA_CONSOLE_PORT until SIGTERM/SIGINT.",
    epilog=EXIT_CODES,
    invoke_without_command=True,
)


@console_app.callback()
def console_command(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Listen here instead of WA_CONSOLE_HOST.")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Listen here instead of WA_CONSOLE_PORT."),
    ] = None,
) -> None:
    """Serve the console until SIGTERM/SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_or_exit()
    from ..errors import SettingsError
    from ..logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    from ..console import ConsoleServer

    try:
        server = ConsoleServer(settings)
    except SettingsError as exc:
        raise fail(f"bad setting {exc}", Exit.USAGE) from None
    serve(server.run(host, port, signals=True))


@console_app.command("hash-password")
def hash_password_command() -> None:
    """Print a hash of a password for WA_CONSOLE_USERS ({"<user>": "<hash>"}).

    Asks for the password twice on a terminal; otherwise reads its first line from stdin.
    """
    from ..console import hash_password

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise fail("a password needs at least 8 characters", Exit.USAGE)
    typer.echo(hash_password(password))
