"""``dlq edit ID --file new.json``: send an edited copy of one dead message, then remove the
original from the DLQ, as the console's *edit and retry* does (``dlq.edit``).

The dead message is found in the ledger's mirror of the DLQ (so ``WA_DATABASE_URL`` is
needed): ``ID`` is its internalId (``--tenant`` picks one when several tenants have a dead
message with that id), or, when no dead message has that internalId, the number ``dlq
list --json`` and ``dlq show`` print as its ``id``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    Actor,
    Exit,
    Json,
    actor_name,
    connect_broker,
    fail,
    on_ledger,
    settings_or_exit,
)

if TYPE_CHECKING:
    import asyncpg

    from ..ledger.dead import DeadDetail, DeadLetters


class _Missing(Exception):
    """No such dead message, or several: the line to say and the exit code."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(line)
        self.code = code


def edit_command(
    id_: Annotated[
        str, typer.Argument(metavar="ID", help="The internalId, or the ledger's dead message id.")
    ],
    file: Annotated[
        str,
        typer.Option(
            "--file", metavar="FILE", help="The edited message, JSON: a file, or - for stdin."
        ),
    ],
    reason: Annotated[
        str, typer.Option(metavar="TEXT", help="Why: kept in the audit trail with the original.")
    ],
    tenant: Annotated[
        str | None,
        typer.Option(metavar="TENANT", help="The tenant, when several have this internalId."),
    ] = None,
    actor: Actor = None,
    json_: Json = False,
) -> None:
    """Edit a dead message's payload and send it again, then remove the original.

    The edit is validated like any message and must keep metadata.tenantId and
    metadata.internalId. It is published to the main queue with a confirm and an
    x-replay-count one higher; only then is the original purged from the DLQ. The original
    body stays in the ledger (its row marked edited), and the action goes into the audit trail.
    """
    from ..dlq.edit import prepare_edit, send_edit
    from ..ledger.dead import DeadLetters

    if not reason.strip():
        raise fail("--reason must not be empty", Exit.USAGE)
    settings = settings_or_exit()
    url = settings.database_url
    if not url:
        raise fail(
            "dlq edit needs the ledger (WA_DATABASE_URL): the dead message and its original "
            "are read and kept there",
            Exit.USAGE,
        )
    body = _read(file)
    who = actor_name(actor)

    async def work(db: asyncpg.Connection[Any]) -> dict[str, Any]:
        dead = DeadLetters(db)
        detail = await _find(dead, id_, tenant)
        edit = prepare_edit(detail, body, settings.max_message_bytes)  # InvalidMessage: exit 2
        broker = await connect_broker(settings.amqp_url)
        try:
            return await send_edit(
                edit, broker, settings, dead=dead, db=db, actor=who, reason=reason.strip()
            )
        finally:
            await broker.close()

    try:
        result = on_ledger(url, work)
    except _Missing as exc:
        raise fail(str(exc), exc.code) from None
    if json_:
        from ..dlq.render import print_json

        print_json(result)
        return
    typer.echo(
        f"edited copy of {result['internal_id']} ({result['tenant_id']}) sent to "
        f"{result['published_to']} with x-replay-count {result['replay_count']}; "
        f"{result['removed_from_dlq']} original removed from the DLQ, "
        f"dead message {result['dead_id']} marked edited"
    )


def _read(file: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise fail(f"--file: cannot read {file}: {exc.strerror or exc}", Exit.USAGE) from None


async def _find(dead: DeadLetters, given: str, tenant: str | None) -> DeadDetail:
    """The dead message ``given`` names (see the module docstring); ``_Missing`` if none or
    several."""
    rows = await dead.by_internal_id(given, tenant)
    tenants = sorted({r.tenant_id or "-" for r in rows})
    if len(tenants) > 1:
        raise _Missing(
            f"{len(rows)} dead messages of tenants {', '.join(tenants)} have internalId "
            f"{given!r}: pick one with --tenant",
            Exit.USAGE,
        )
    detail = None
    if rows:
        detail = await dead.detail(rows[0].id)  # the oldest; an edit takes every copy
    elif given.isdigit() and len(given) < 19:  # a bigint
        detail = await dead.detail(int(given))
        if detail is not None and tenant is not None and detail.row.tenant_id != tenant:
            detail = None
    if detail is None:
        where = f" of tenant {tenant}" if tenant else ""
        raise _Missing(f"no dead message {given!r}{where} in the ledger", Exit.FAILED)
    return detail
