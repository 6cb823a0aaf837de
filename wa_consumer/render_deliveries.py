"""Tables for ``failures`` and ``report costs`` (``--json`` is for scripts), drawn with the
DLQ commands' own pieces so the two read alike. Values are wrapped in ``Text`` so brackets in
Meta's error texts are shown as they are, not read as rich markup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .dlq.render import age, console, show_breakdown, when
from .ledger.costs import CostReport, Counts
from .ledger.deliveries import FailurePage, FailureStats

_WIDE = 140  # narrower: fewer, folded columns (everything is in --json)
_HEAD = "failures after acceptance"


def reason(row: dict[str, Any]) -> str:
    """Meta's title and its details, once each (they are often the same words)."""
    title, message = row.get("title"), row.get("message")
    if title and message and title.lower() not in message.lower():
        return f"{title}: {message}"
    return message or title or "-"


def _cause(category: str, code: str) -> str:
    return category if category == code else f"{category} {code}"


def show_failure_stats(stats: FailureStats) -> None:
    out = console()
    out.print(Text(f"{_HEAD}: {stats.matched:,} match the filters", style="bold"))
    oldest = stats.oldest
    if oldest is not None:
        who = f"{oldest['internal_id']} of {oldest['tenant_id']}" if oldest["tenant_id"] else "-"
        out.print(
            Text(
                f"oldest failed {age(stats.oldest_age_seconds())} ago "
                f"({when(oldest['failed_at'])} UTC, {who})"
            )
        )
    show_breakdown(out, stats)


def show_failure_page(page: FailurePage, out: Console | None = None) -> None:
    """The page as ``failures list`` prints it (on ``out``: the demo's own console)."""
    out = out or console()
    shown = len(page.records)
    first = page.offset + 1 if shown else 0
    out.print(
        Text(
            f"{_HEAD}: {page.matched:,} match; showing {first}-{page.offset + shown}"
            + (" (newest first)" if shown > 1 else ""),
            style="bold",
        )
    )
    if not shown:
        return
    wide = out.width >= _WIDE
    # As `dlq list`: the reason takes what the other columns leave and is cut there
    # (`failures show ID` has it whole).
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), expand=True)
    table.add_column("age", no_wrap=True)
    if wide:
        table.add_column("failed (UTC)", no_wrap=True)
    table.add_column("tenant", overflow="fold")
    table.add_column("internal id", overflow="fold", no_wrap=wide, max_width=None if wide else 18)
    if wide:
        for header in ("type", "recipient", "category", "code"):
            table.add_column(header, no_wrap=True)
    else:
        table.add_column("category / code", overflow="fold", max_width=18)
    table.add_column("reason", no_wrap=True, overflow="ellipsis", ratio=1, min_width=16)
    now = datetime.now(UTC)
    for r in page.records:
        at = r["failed_at"]
        row: list[str | Text] = [age((now - at).total_seconds()) if at else "-"]
        if wide:
            row.append(when(at))
        row += [Text(r["tenant_id"] or "-"), Text(r["internal_id"] or "-")]
        if wide:
            row += [Text(r[k] or "-") for k in ("type", "recipient", "category", "code")]
        else:
            row.append(Text(_cause(r["category"], r["code"])))
        row.append(Text(reason(r)))
        table.add_row(*row)
    out.print(table)


_DETAIL = (
    ("tenant", "tenant_id"),
    ("internal id", "internal_id"),
    ("type", "type"),
    ("recipient", "recipient"),
    ("number", "phone_number_id"),
    ("category", "category"),
    ("code", "code"),
    ("title", "title"),
    ("message", "message"),
    ("fingerprint", "fingerprint"),
    ("accepted (UTC)", "accepted_at"),
    ("sent (UTC)", "sent_at"),
    ("delivered (UTC)", "delivered_at"),
    ("read (UTC)", "read_at"),
    ("failed (UTC)", "failed_at"),
    ("callback", "callback"),
)


def show_failure_detail(rows: list[dict[str, Any]]) -> None:
    out = console()
    for n, row in enumerate(rows):
        if n:
            out.print()
        table = Table(show_header=False, title_justify="left", title=Text(row["wamid"]))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, key in _DETAIL:
            value = row.get(key)
            shown = when(value) if key.endswith("_at") else value
            table.add_row(label, Text("-" if shown is None else str(shown)))
        out.print(table)


def show_costs(report: CostReport, since: str) -> None:
    out = console()
    scope = f" for {', '.join(report.tenants)}" if report.tenants else ""
    total = report.total
    out.print(
        Text(
            f"billable messages since {when(report.since)} UTC ({since}){scope}: "
            f"{total.billable:,} billable, {total.non_billable:,} not billable, "
            f"{total.unpriced:,} not priced yet",
            style="bold",
        )
    )
    if not report.rows:
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, title_justify="left")
    for header, right in (
        ("tenant", False),
        ("pricing category", False),
        ("model", False),
        ("billable", True),
        ("not billable", True),
    ):
        table.add_column(header, justify="right" if right else "left", overflow="fold")
    for r in report.rows:
        table.add_row(
            Text(r.tenant),
            Text(r.category),
            Text(r.model),
            f"{r.counts.billable:,}",
            f"{r.counts.non_billable:,}",
        )
    out.print(table)
    tenants = _totals("by tenant", "tenant", report.by_tenant, unpriced=True)
    categories = _totals("by pricing category", "category", report.by_category, unpriced=False)
    out.print(Columns([tenants, categories], padding=(0, 4)))


def _totals(title: str, first: str, by: dict[str, Counts], *, unpriced: bool) -> Table:
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column(first, overflow="fold")
    headers = (
        ("billable", "not billable", "not priced") if unpriced else ("billable", "not billable")
    )
    for header in headers:
        table.add_column(header, justify="right")
    for name, counts in sorted(by.items()):
        values = [counts.billable, counts.non_billable, counts.unpriced][: len(headers)]
        table.add_row(Text(name), *(f"{v:,}" for v in values))
    return table
