"""The ledger's commands: ``db migrate``, ``db prune`` and ``status INTERNAL_ID`` (SPEC §8-§9).

``cli`` mounts these and this module borrows ``cli``'s helpers inside each command, never
at import time, because ``cli`` imports this module while it is itself being loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .errors import LedgerUnavailable, WaConsumerError

if TYPE_CHECKING:
    # Imported in the commands at run time: asyncpg and rich would slow every other command.
    import asyncpg

T = TypeVar("T")

_CONNECT_TIMEOUT = 5.0

db_app = typer.Typer(name="db", help="The ledger's database (SPEC §9).", no_args_is_help=True)


def _database_url() -> str:
    from .cli import fail, settings_or_exit

    url = settings_or_exit().database_url
    if not url:
        raise fail("WA_DATABASE_URL is not set; the ledger commands need its database", 2)
    return url


def _on_ledger(url: str, work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` on a connection of its own; any failure ends the command with one line."""
    import asyncpg

    from .cli import fail, run_async

    async def main() -> T:
        try:
            connection = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise LedgerUnavailable(f"cannot open the ledger: {exc}") from exc
        try:
            return await work(connection)
        except asyncpg.UndefinedTableError:
            raise LedgerUnavailable(
                "the ledger has no tables yet; run `wa-consumer db migrate` first"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(f"ledger query failed: {exc}") from exc
        finally:
            await connection.close(timeout=_CONNECT_TIMEOUT)

    try:
        return run_async(main())
    except WaConsumerError as exc:
        raise fail(str(exc), 1) from None


@db_app.command("migrate")
def migrate_command() -> None:
    """Apply the missing schema migrations (safe while daemons run or start)."""
    from .ledger.migrate import migrate

    applied = _on_ledger(_database_url(), migrate)
    for name in applied:
        typer.echo(f"applied {name}")
    if not applied:
        typer.echo("up to date")


@db_app.command("prune")
def prune_command(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Remove sent and dead messages not updated for this long: 30d, 12h, 2w...",
        ),
    ],
    batch: Annotated[
        int, typer.Option(min=1, help="Rows deleted per statement (keeps each lock short).")
    ] = 5000,
) -> None:
    """Delete old sent and dead messages, their attempts and delivery statuses; and the old
    statuses of no message. Others are never touched."""
    from .cli import fail
    from .ledger.queries import parse_age, prune, prune_statuses

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise fail(f"--older-than: {exc}", 2) from None

    async def work(connection: asyncpg.Connection[Any]) -> tuple[int, int]:
        return await prune(connection, age, batch), await prune_statuses(connection, age, batch)

    removed, statuses = _on_ledger(_database_url(), work)
    typer.echo(
        f"removed {removed} sent or dead messages not updated for {older_than}, with their "
        f"attempts and delivery statuses, and {statuses} older delivery statuses of no message"
    )


def status_command(
    internal_id: Annotated[str, typer.Argument(help="The message's metadata.internalId.")],
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            metavar="TENANT",
            help="The message's tenantId; needed with --json when several tenants use this id.",
        ),
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """The ledger's record of one message, its attempts and each wamid's delivery statuses.

    The ledger keeps one record per (tenant, internalId). Without --tenant, the tables show
    every tenant's record of the id; --json prints one object, so it asks for --tenant when
    the id is ambiguous rather than change its shape.
    """
    from .cli import fail
    from .ledger.queries import message_status
    from .render_status import show_record

    url = _database_url()
    records = _on_ledger(url, lambda connection: message_status(connection, internal_id, tenant))
    if not records:
        of = f" of tenant {tenant!r}" if tenant is not None else ""
        raise fail(f"no message {internal_id!r}{of} in the ledger", 1)
    if json_:
        if len(records) > 1:
            raise fail(_ambiguous(internal_id, records), 2)
        import orjson

        typer.echo(orjson.dumps(records[0], option=orjson.OPT_INDENT_2).decode())
        return
    if len(records) > 1:
        typer.echo(f"{len(records)} tenants use internalId {internal_id!r}; --tenant shows one")
    for n, record in enumerate(records):
        if n:
            typer.echo()
        show_record(record)


def _ambiguous(internal_id: str, records: list[dict[str, Any]]) -> str:
    tenants = ", ".join(repr(r["tenant_id"]) for r in records)
    return (
        f"{len(records)} tenants have a message {internal_id!r} in the ledger ({tenants}); "
        "choose one with --tenant"
    )
