"""The ledger's commands: ``db migrate``, ``db prune`` and ``status INTERNAL_ID``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import EXIT_CODES, Exit, database_url, fail, on_ledger, progress_line, show_progress

if TYPE_CHECKING:
    # Imported in the commands at run time: asyncpg and rich would slow every other command.
    import asyncpg

db_app = typer.Typer(
    name="db", help="The ledger's database.", epilog=EXIT_CODES, no_args_is_help=True
)


@db_app.command("migrate")
def migrate_command() -> None:
    """Apply the missing schema migrations (safe while daemons run or start).

    Each migration is named on stderr as it starts, so a long one shows which.
    """
    from ..ledger.migrate import migrate

    say = progress_line("migrating")
    applied = on_ledger(database_url(), lambda c: migrate(c, lambda name: say(f"applying {name}")))
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
    """Delete old sent and dead messages, their attempts and delivery statuses; the old
    statuses of no message; the DLQ's records of messages replayed or purged long ago.
    Others are never touched (a message still in the DLQ keeps its record)."""
    from ..ledger.queries import parse_age, prune, prune_dead, prune_statuses

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise fail(f"--older-than: {exc}", Exit.USAGE) from None

    async def work(connection: asyncpg.Connection[Any]) -> tuple[int, int, int]:
        with show_progress("pruning", "messages", bar=False) as messages:
            removed = await prune(connection, age, batch, lambda n: messages(n, 0))
        with show_progress("pruning", "statuses of no message", bar=False) as statuses:
            orphans = await prune_statuses(connection, age, batch, lambda n: statuses(n, 0))
        with show_progress("pruning", "dead rows", bar=False) as dead:
            settled = await prune_dead(connection, age, batch, lambda n: dead(n, 0))
        return removed, orphans, settled

    removed, statuses, settled = on_ledger(database_url(), work)
    typer.echo(
        f"removed {removed} sent or dead messages not updated for {older_than}, with their "
        f"attempts and delivery statuses, {statuses} older delivery statuses of no message, "
        f"and {settled} records of dead messages replayed or purged before then"
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
    from ..ledger.queries import message_status
    from ..render_status import show_record

    url = database_url()
    records = on_ledger(url, lambda connection: message_status(connection, internal_id, tenant))
    if not records:
        of = f" of tenant {tenant!r}" if tenant is not None else ""
        raise fail(f"no message {internal_id!r}{of} in the ledger", Exit.FAILED)
    if json_:
        if len(records) > 1:
            raise fail(_ambiguous(internal_id, records), Exit.USAGE)
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
