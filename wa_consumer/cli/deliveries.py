"""The commands that read Meta's delivery statuses from the ledger:
``failures stats | list | show ID`` and ``report costs``.

A failure here is a message Meta accepted (our send got its 200, so it never reached the
DLQ) and later reported ``failed`` in a status webhook. ``failures`` takes ``dlq``'s filters
and groups by ``dlq``'s fingerprints (category + code + masked text), so causes are grouped
alike before and after acceptance.
"""

from __future__ import annotations

from typing import Annotated

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
    database_url,
    fail,
    filter_or_exit,
    on_ledger,
)

failures_app = typer.Typer(
    name="failures",
    help="Failures after acceptance: messages Meta accepted, then reported failed in a "
    "status webhook (from the ledger). Filters as in `dlq`: one may be given more than once "
    "(any of the values); different filters must all match.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)
report_app = typer.Typer(
    name="report", help="Reports from the ledger.", epilog=EXIT_CODES, no_args_is_help=True
)

Categories = Annotated[
    list[str] | None,
    typer.Option("--category", metavar="CATEGORY", help="Our category, e.g. permanent"),
]
Codes = Annotated[
    list[str] | None, typer.Option("--code", metavar="CODE", help="Meta's code, e.g. 131026")
]


@failures_app.command("stats")
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
    from ..dlq.render import print_json
    from ..ledger.deliveries import failure_stats
    from ..render_deliveries import show_failure_stats

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    result = on_ledger(database_url(), lambda c: failure_stats(c, selection))
    if json_:
        print_json(result.to_json())
    else:
        show_failure_stats(result)


@failures_app.command("list")
def list_command(
    tenant: Tenants = None,
    category: Categories = None,
    code: Codes = None,
    type_: Types = None,
    fingerprint: Fingerprints = None,
    since: Since = None,
    older_than: OlderThan = None,
    limit: Annotated[int, typer.Option(min=1, help="Failures to show.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Matching failures to skip first.")] = 0,
    json_: Json = False,
) -> None:
    """One row per failed wamid, newest first, with Meta's reason."""
    from ..dlq.render import print_json
    from ..ledger.deliveries import failure_page
    from ..render_deliveries import show_failure_page

    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than,
    )  # fmt: skip
    page = on_ledger(
        database_url(), lambda c: failure_page(c, selection, limit=limit, offset=offset)
    )
    if json_:
        print_json(page.to_json())
    else:
        show_failure_page(page)


@failures_app.command("show")
def show_command(
    key: Annotated[str, typer.Argument(metavar="ID", help="A wamid, or a message's internalId.")],
    json_: Json = False,
) -> None:
    """Every failed wamid of one message (every tenant's, for a shared internalId)."""
    from ..dlq.render import print_json
    from ..ledger.deliveries import failure_detail
    from ..render_deliveries import show_failure_detail

    found = on_ledger(database_url(), lambda c: failure_detail(c, key))
    if not found:
        raise fail(f"no failure after acceptance of {key!r} in the ledger", Exit.FAILED)
    if json_:
        print_json(found)
    else:
        show_failure_detail(found)


@report_app.command("costs")
def costs_command(
    since: Annotated[
        str,
        typer.Option(
            "--since",
            metavar="WHEN",
            help="Messages the ledger first heard of at or after: 7d, 24h or an ISO time.",
        ),
    ] = "7d",
    tenant: Tenants = None,
    json_: Json = False,
) -> None:
    """Billable messages per tenant and pricing category, as Meta's statuses priced them.

    Once per wamid, by its latest pricing; those not priced yet are counted apart.
    The window is on when the ledger first heard of each wamid (its send's result
    or its first status, seconds apart).
    """
    from ..dlq.filters import parse_since
    from ..dlq.render import print_json
    from ..ledger.costs import costs
    from ..render_deliveries import show_costs

    try:
        start = parse_since(since)
    except ValueError as exc:
        raise fail(f"--since: {exc}", Exit.USAGE) from None
    report = on_ledger(database_url(), lambda c: costs(c, start, tenant))
    if json_:
        print_json(report.to_json())
    else:
        show_costs(report, since)
