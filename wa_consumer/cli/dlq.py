"""The DLQ commands: ``dlq stats | list | show ID | replay | purge``.

``wa_consumer.cli`` mounts ``dlq_app``; ``scripts/replay_dlq.py`` runs ``replay_command``
alone. Replay and purge change the queue, so with no filter they refuse unless ``--all``.
With the ledger on (``WA_DATABASE_URL``), ``stats``, ``list`` and ``show`` read its mirror of
the DLQ and leave the queue alone (``dlq.mirror``); ``--from-queue`` makes a pass instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    EXIT_CODES,
    Exit,
    Fingerprints,
    Json,
    OlderThan,
    Since,
    Tenants,
    Types,
    connect_broker,
    fail,
    filter_or_exit,
    on_broker,
    on_ledger,
    settings_or_exit,
    show_progress,
)

if TYPE_CHECKING:
    from typing import Any

    import asyncpg
    from aio_pika.abc import AbstractConnection

    from ..dlq import Filter, PassOptions, PurgeSummary, ReplaySummary
    from ..dlq.mirror import LedgerStats
    from ..settings import Settings

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: inspect, replay, purge. Filters may be given more than "
    "once (any of the values); different filters must all match.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)

Categories = Annotated[
    list[str] | None,
    typer.Option("--category", metavar="CATEGORY", help="x-error-category, e.g. permanent"),
]
Codes = Annotated[
    list[str] | None, typer.Option("--code", metavar="CODE", help="x-error-code, e.g. 131026")
]
Ids = Annotated[
    list[str] | None,
    typer.Option("--id", metavar="INTERNAL_ID", help="One message (internalId or message_id)."),
]
All = Annotated[
    bool, typer.Option("--all", help="Every message in the DLQ: needed when no filter is given.")
]
FromQueue = Annotated[
    bool,
    typer.Option(
        "--from-queue",
        help="Read the queue itself (a pass over every message) even when the ledger is on.",
    ),
]


def _options(settings: Settings) -> PassOptions:
    from ..dlq import PassOptions

    return PassOptions.for_queue_type(settings.queue_type)


def _ledger(settings: Settings, from_queue: bool) -> str | None:
    """The ledger to read the DLQ's mirror from, or None for a pass over the queue."""
    return None if from_queue else settings.database_url


def _all_or_exit(selection: Filter, every: bool, command: str) -> None:
    """A command that changes the queue acts on all of it only when asked in so many words."""
    if selection.empty and not every:
        raise fail(
            f"{command} with no filter would act on every message: pass a filter "
            "(--category, --code, --id...) or --all",
            Exit.USAGE,
        )


@dlq_app.command("stats")
def stats_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    from_queue: FromQueue = False,
    json_: Json = False,
) -> None:
    """Counts by category, code, tenant, type and failure fingerprint; the oldest's age.

    With the ledger on, from its record of the DLQ (and the queue's depth now beside it).
    """
    from ..dlq import stats
    from ..dlq.render import print_json, progress_bar, show_ledger_stats, show_stats

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    settings = settings_or_exit()
    if url := _ledger(settings, from_queue):
        found = on_ledger(url, lambda db: _ledger_stats(settings, db, selection))
        if json_:
            print_json(found.to_json())
        else:
            show_ledger_stats(found)
        return
    opts = _options(settings)
    with progress_bar(not json_, "reading the DLQ") as progress:
        result = on_broker(
            settings,
            lambda c: stats(
                c, settings.dead_letter_queue, selection, options=opts, progress=progress
            ),
        )
    if json_:
        print_json(result.to_json())
    else:
        show_stats(result)


async def _ledger_stats(
    settings: Settings, db: asyncpg.Connection[Any], selection: Filter
) -> LedgerStats:
    from ..dlq import mirror
    from ..errors import Unreachable

    depth = None
    try:
        connection = await connect_broker(settings.amqp_url)
    except Unreachable:
        pass  # the counts are the ledger's; the depth is said to be unknown
    else:
        try:
            depth = await mirror.queue_depth(connection, settings.dead_letter_queue)
        finally:
            await connection.close()
    return await mirror.stats(db, settings.dead_letter_queue, selection, depth)


@dlq_app.command("list")
def list_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    limit: Annotated[int, typer.Option(min=1, help="Messages to show.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Matching messages to skip first.")] = 0,
    from_queue: FromQueue = False,
    json_: Json = False,
) -> None:
    """The dead messages with their reasons: newest first from the ledger, when it is on;
    in queue order from the queue."""
    from ..dlq import list_page, mirror
    from ..dlq.render import print_json, progress_bar, show_page

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    settings = settings_or_exit()
    queue, opts = settings.dead_letter_queue, _options(settings)
    if url := _ledger(settings, from_queue):
        page = on_ledger(
            url, lambda db: mirror.list_page(db, queue, selection, limit=limit, offset=offset)
        )
        if json_:
            print_json(page.to_json())
        else:
            show_page(page)
        return
    with progress_bar(not json_, "reading the DLQ") as progress:
        page = on_broker(
            settings,
            lambda c: list_page(
                c, queue, selection, limit=limit, offset=offset, options=opts, progress=progress
            ),
        )
    if json_:
        print_json(page.to_json())
    else:
        show_page(page)


@dlq_app.command("show")
def show_command(
    internal_id: Annotated[str, typer.Argument(help="metadata.internalId (or message_id).")],
    from_queue: FromQueue = False,
    json_: Json = False,
) -> None:
    """One dead message: its reason, headers and body (and, from the ledger, its attempts)."""
    from ..dlq import mirror, show
    from ..dlq.render import print_json, progress_bar, show_detail

    settings = settings_or_exit()
    if url := _ledger(settings, from_queue):
        found, copies = on_ledger(url, lambda db: mirror.show(db, internal_id))
        if found is None:
            raise fail(
                f"no dead message {internal_id!r} in the ledger "
                "(--from-queue looks in the queue itself)",
                1,
            )
        if json_:
            print_json({**found, "copies": copies})
        else:
            show_detail(found, copies)
        return
    opts = _options(settings)
    with progress_bar(not json_, "looking for it") as progress:
        found, copies = on_broker(
            settings,
            lambda c: show(
                c, settings.dead_letter_queue, internal_id, options=opts, progress=progress
            ),
        )
    if found is None:
        raise fail(f"no message {internal_id!r} in {settings.dead_letter_queue}", 1)
    if json_:
        print_json({**found, "copies": copies})
    else:
        show_detail(found, copies)


def replay_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    id_: Ids = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Replay at most this many.")] = None,
    rate: Annotated[
        float | None, typer.Option(min=0.001, help="At most this many messages per second.")
    ] = None,
    max_replays: Annotated[
        int, typer.Option(min=1, help="A message replayed this often stays in the DLQ.")
    ] = 3,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Change nothing; say what would happen.")
    ] = False,
    every: All = False,
    json_: Json = False,
) -> None:
    """Move matching dead messages back to the main queue (confirmed before the DLQ ack).

    With no filter it refuses unless --all (a dry run needs neither). Progress goes to
    stderr: a bar on a terminal, else a line every 1,000 messages or 2 s.
    """
    from ..dlq import open_ledger, replay
    from ..dlq.render import print_json, show_replay

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    if not dry_run:
        _all_or_exit(selection, every, "replay")
    settings = settings_or_exit()

    async def work(connection: AbstractConnection) -> ReplaySummary:
        async with open_ledger(settings.database_url) as ledger:
            return await replay(
                connection,
                settings.dead_letter_queue,
                settings.queue,
                selection,
                ledger,
                max_replays=max_replays,
                limit=limit,
                rate=rate,
                dry_run=dry_run,
                options=_options(settings),
                progress=progress,
            )

    with show_progress("replaying", bar=not json_) as progress:
        summary = on_broker(settings, work)
    if json_:
        print_json(summary.to_json())
    else:
        show_replay(summary)


dlq_app.command("replay")(replay_command)


@dlq_app.command("purge")
def purge_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    id_: Ids = None,
    reason: Annotated[
        str,
        typer.Option(metavar="TEXT", help="Recorded in the ledger as how each was resolved."),
    ] = "purged from the dead-letter queue",
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
    from ..dlq import NoLedger, open_ledger, purge
    from ..dlq.render import print_json, show_purge

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    if not dry_run:
        _all_or_exit(selection, every, "purge")
        if not yes:
            raise fail(
                "purge deletes messages for good: add --yes (see them first with "
                "--dry-run, or `dlq list` and the same filters)",
                Exit.USAGE,
            )
    if not reason.strip():
        raise fail("--reason must not be empty", Exit.USAGE)
    settings = settings_or_exit()

    async def work(connection: AbstractConnection) -> PurgeSummary:
        if dry_run:  # nothing is recorded: no need to reach the ledger
            return await purge(
                connection, settings.dead_letter_queue, selection, NoLedger(), reason,
                dry_run=True, options=_options(settings), progress=progress,
            )  # fmt: skip
        async with open_ledger(settings.database_url) as ledger:
            return await purge(
                connection, settings.dead_letter_queue, selection, ledger, reason,
                options=_options(settings), progress=progress,
            )  # fmt: skip

    with show_progress("purging", bar=not json_) as progress:
        summary = on_broker(settings, work)
    if json_:
        print_json(summary.to_json())
    else:
        show_purge(summary)
