"""The DLQ commands: ``dlq stats | list | show ID | replay | purge`` (SPEC §8).

``cli`` mounts ``dlq_app``; ``scripts/replay_dlq.py`` runs ``replay_command`` alone. Like
``cli_ledger``, this module borrows ``cli``'s helpers inside each command, never at import
time, because ``cli`` imports it while it is itself being loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from .errors import WaConsumerError

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from .dlq import Filter, PassOptions, PurgeSummary, ReplaySummary
    from .settings import Settings

T = TypeVar("T")

dlq_app = typer.Typer(
    name="dlq",
    help="The dead-letter queue: inspect, replay, purge. Filters may be given more than "
    "once (any of the values); different filters must all match.",
    no_args_is_help=True,
)

Tenants = Annotated[
    list[str] | None, typer.Option("--tenant", metavar="TENANT", help="metadata.tenantId")
]
Categories = Annotated[
    list[str] | None,
    typer.Option("--category", metavar="CATEGORY", help="x-error-category, e.g. permanent"),
]
Codes = Annotated[
    list[str] | None, typer.Option("--code", metavar="CODE", help="x-error-code, e.g. 131026")
]
Types = Annotated[
    list[str] | None, typer.Option("--type", metavar="TYPE", help="wabaPayload.type, e.g. text")
]
Fingerprints = Annotated[
    list[str] | None,
    typer.Option("--fingerprint", metavar="FP", help="Failure fingerprint (a prefix will do)."),
]
Since = Annotated[
    str | None,
    typer.Option("--since", metavar="WHEN", help="Failed at or after: 2h, 7d or an ISO time."),
]
OlderThan = Annotated[
    str | None, typer.Option("--older-than", metavar="AGE", help="Failed before: 30d, 12h...")
]
Ids = Annotated[
    list[str] | None,
    typer.Option("--id", metavar="INTERNAL_ID", help="One message (internalId or message_id)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def filter_or_exit(**values: Any) -> Filter:
    """The filters given, or the command ends with one line saying which one is wrong."""
    from .cli import fail
    from .dlq import Filter

    try:
        return Filter.of(**values)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


def _settings() -> Settings:
    from .cli import settings_or_exit

    return settings_or_exit()


def _options(settings: Settings) -> PassOptions:
    from .dlq import PassOptions

    return PassOptions.for_queue_type(settings.queue_type)


def _on_broker(settings: Settings, work: Callable[[AbstractConnection], Awaitable[T]]) -> T:
    """Run ``work`` on a connection of its own; any failure ends the command with one line."""
    from .cli import fail, run_async
    from .topology import connect

    async def main() -> T:
        connection = await connect(settings.amqp_url)
        try:
            return await work(connection)
        finally:
            await connection.close()

    try:
        return run_async(main())
    except WaConsumerError as exc:
        raise fail(str(exc), 1) from None


@dlq_app.command("stats")
def stats_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    json_: Json = False,
) -> None:
    """Counts by category, code, tenant, type and failure fingerprint; the oldest's age."""
    from .dlq import stats
    from .dlq.render import print_json, progress_bar, show_stats

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    settings = _settings()
    opts = _options(settings)
    with progress_bar(not json_, "reading the DLQ") as progress:
        result = _on_broker(
            settings,
            lambda c: stats(
                c, settings.dead_letter_queue, selection, options=opts, progress=progress
            ),
        )
    if json_:
        print_json(result.to_json())
    else:
        show_stats(result)


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
    json_: Json = False,
) -> None:
    """The dead messages with their reasons, in queue order."""
    from .dlq import list_page
    from .dlq.render import print_json, progress_bar, show_page

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    settings = _settings()
    queue, opts = settings.dead_letter_queue, _options(settings)
    with progress_bar(not json_, "reading the DLQ") as progress:
        page = _on_broker(
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
    json_: Json = False,
) -> None:
    """One dead message: its reason, headers and body."""
    from .cli import fail
    from .dlq import show
    from .dlq.render import print_json, progress_bar, show_detail

    settings = _settings()
    opts = _options(settings)
    with progress_bar(not json_, "looking for it") as progress:
        found, copies = _on_broker(
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
    json_: Json = False,
) -> None:
    """Move matching dead messages back to the main queue (confirmed before the DLQ ack)."""
    from .dlq import open_ledger, replay
    from .dlq.render import print_json, progress_bar, show_replay

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    settings = _settings()

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

    with progress_bar(not json_, "replaying") as progress:
        summary = _on_broker(settings, work)
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
    json_: Json = False,
) -> None:
    """Delete matching dead messages for good (--yes required)."""
    from .cli import fail
    from .dlq import open_ledger, purge
    from .dlq.render import print_json, progress_bar, show_purge

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    if not yes:
        raise fail(
            "purge deletes messages for good: add --yes (see them first with `dlq list` "
            "and the same filters)",
            2,
        )
    if not reason.strip():
        raise fail("--reason must not be empty", 2)
    settings = _settings()

    async def work(connection: AbstractConnection) -> PurgeSummary:
        async with open_ledger(settings.database_url) as ledger:
            return await purge(
                connection, settings.dead_letter_queue, selection, ledger, reason,
                options=_options(settings), progress=progress,
            )  # fmt: skip

    with progress_bar(not json_, "purging") as progress:
        summary = _on_broker(settings, work)
    if json_:
        print_json(summary.to_json())
    else:
        show_purge(summary)
