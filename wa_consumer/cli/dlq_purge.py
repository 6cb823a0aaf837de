"""``dlq purge``: delete matching dead messages for good, the reason recorded.

With no filter it refuses unless ``--all``, and without ``--yes`` (or ``--dry-run``) it
deletes nothing. With the ledger on, the reason goes on each message's record, its row in
the DLQ's mirror becomes ``resolved``, and the purge (who, why, the filter, what it removed)
is one row of the audit trail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    Actor,
    All,
    DeadCategories,
    DeadCodes,
    Exit,
    Fingerprints,
    Ids,
    Json,
    OlderThan,
    Since,
    Tenants,
    Types,
    actor_name,
    all_or_exit,
    audited,
    fail,
    filter_or_exit,
    on_broker,
    settings_or_exit,
    show_progress,
)

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from ..dlq import PurgeSummary


def purge_command(
    tenant: Tenants = None,
    category: DeadCategories = None,
    code: DeadCodes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    id_: Ids = None,
    reason: Annotated[
        str,
        typer.Option(
            metavar="TEXT",
            help="Recorded in the ledger as how each was resolved, and in the audit trail.",
        ),
    ] = "purged from the dead-letter queue",
    actor: Actor = None,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete them.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be purged; touch nothing.")
    ] = False,
    every: All = False,
    json_: Json = False,
) -> None:
    """Delete matching dead messages for good (--yes required, or --dry-run to count them).

    With no filter it refuses unless --all (a dry run needs neither). Progress goes to
    stderr: a bar on a terminal, else a line every 1,000 messages or 2 s.
    """
    from ..dlq import NoLedger, PassOptions, open_ledger, purge
    from ..dlq.render import print_json, show_purge

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    if not dry_run:
        all_or_exit(selection, every, "purge")
        if not yes:
            raise fail(
                "purge deletes messages for good: add --yes (see them first with "
                "--dry-run, or `dlq list` and the same filters)",
                Exit.USAGE,
            )
    if not reason.strip():
        raise fail("--reason must not be empty", Exit.USAGE)
    settings = settings_or_exit()
    queue, options = settings.dead_letter_queue, PassOptions.for_queue_type(settings.queue_type)

    async def work(connection: AbstractConnection) -> PurgeSummary:
        if dry_run:  # nothing is changed or recorded: no need to reach the ledger
            return await purge(
                connection, queue, selection, NoLedger(), reason,
                dry_run=True, options=options, progress=progress,
            )  # fmt: skip
        async with open_ledger(settings.database_url) as ledger:
            done = purge(
                connection, queue, selection, ledger, reason, options=options, progress=progress
            )
            return await audited(
                ledger, done, _summary, action="dlq_purge", details={"filter": selection.to_json()},
                actor=actor_name(actor), target=selection.target(queue), reason=reason,
            )  # fmt: skip

    with show_progress("purging", bar=not json_) as progress:
        summary = on_broker(settings, work)
    if json_:
        print_json(summary.to_json())
    else:
        show_purge(summary)


def _summary(summary: PurgeSummary) -> dict[str, Any]:
    return summary.to_json()
