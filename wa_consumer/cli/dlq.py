"""The DLQ group and its reads: ``dlq stats | list | show ID``.

``wa_consumer.cli`` mounts ``dlq_app``, and on it the commands that change the queue, each
from its own module: ``dlq_replay`` (replay, a canary first or not), ``dlq_purge`` and
``dlq_edit``. With the ledger on (``WA_DATABASE_URL``), ``stats``, ``list`` and ``show`` read
its mirror of the DLQ and leave the queue alone (``dlq.mirror``); ``--from-queue`` makes a
pass instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    EXIT_CODES,
    DeadCategories,
    DeadCodes,
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
)

if TYPE_CHECKING:
    from typing import Any

    import asyncpg

    from ..dlq import Filter, PassOptions
    from ..dlq.mirror import LedgerStats
    from ..settings import Settings

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: inspect, replay, purge, edit. Filters may be given more than "
    "once (any of the values); different filters must all match.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)

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


@dlq_app.command("stats")
def stats_command(
    tenant: Tenants = None,
    category: DeadCategories = None,
    code: DeadCodes = None,
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
    category: DeadCategories = None,
    code: DeadCodes = None,
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
