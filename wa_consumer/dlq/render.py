"""Tables for people (``--json`` is for scripts). Values are wrapped in ``Text`` so brackets
in error messages are shown as they are, not read as rich markup."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from rich import box
from rich.columns import Columns
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table
from rich.text import Text

from .inspect import Group, Page, Stats
from .mirror import LedgerStats
from .replay import PurgeSummary, ReplaySummary

_PIPED_WIDTH = 200  # piped into grep or a file: keep one message on one line
_TOP = 15  # rows per count table; the rest are summed up in one line
_PROGRESS_FROM = 1000  # messages in a pass before a progress bar is worth drawing
_WIDE = 140  # narrower: fewer, folded columns (everything is in --json)


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


@contextmanager
def progress_bar(enabled: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal for long passes; a no-op otherwise (pipes, --json)."""
    if not (enabled and sys.stdout.isatty()):
        yield lambda done, total: None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if total < _PROGRESS_FROM:
                return
            if not task:
                task.append(bar.add_task(label, total=total))
            bar.update(task[0], completed=done)

        yield update


def console() -> Console:
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=_PIPED_WIDTH)


def age(seconds: float | None) -> str:
    """``3d 4h``, ``12m 5s``: the two largest units are enough for a person."""
    if seconds is None:
        return "-"
    left = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


def when(value: datetime | str | None) -> str:
    """A time in UTC to the second (``--json`` keeps the full precision)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def counts_table(title: str, counts: Counter[str]) -> Table:
    """One ``by ...`` table: the largest counts first, the rest summed up in one row."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column(title.removeprefix("by "), overflow="fold")
    table.add_column("count", justify="right")
    ranked = counts.most_common()
    for name, count in ranked[:_TOP]:
        table.add_row(Text(name), f"{count:,}")
    if len(ranked) > _TOP:
        rest = sum(c for _, c in ranked[_TOP:])
        table.add_row(Text(f"({len(ranked) - _TOP} more)", style="dim"), f"{rest:,}")
    return table


def _cause(group: Group) -> str:
    return group.category if group.code == group.category else f"{group.category} {group.code}"


def show_stats(stats: Stats) -> None:
    out = console()
    oldest = stats.oldest
    head = f"{stats.queue}: {stats.report.seen:,} messages"
    if stats.matched != stats.report.seen:
        head += f", {stats.matched:,} match the filters"
    out.print(Text(head, style="bold"))
    out.print(Text("from the queue (a pass over every message)", style="dim"))
    if oldest is not None:
        out.print(
            Text(
                f"oldest failed {age(stats.oldest_age_seconds())} ago "
                f"({when(oldest.failed_at)} UTC, {oldest.internal_id or '-'})"
            )
        )
    show_breakdown(out, stats)


def show_ledger_stats(stats: LedgerStats) -> None:
    """``dlq stats`` from the ledger, with the queue's depth now beside it."""
    out = console()
    s = stats.stats
    head = f"{stats.queue}: {stats.messages:,} messages"
    if s.total != stats.messages:
        head += f", {s.total:,} match the filters"
    out.print(Text(head, style="bold"))
    if stats.depth is None:
        depth = "the queue's depth is unknown (RabbitMQ did not answer)"
    elif stats.depth == stats.messages:
        depth = f"the queue holds {stats.depth:,} too"
    else:
        depth = (
            f"the queue holds {stats.depth:,} now: messages the broker dead-lettered by "
            "itself are in the queue only (--from-queue reads them all)"
        )
    out.print(Text(f"from the ledger; {depth}", style="dim"))
    if s.oldest is not None:
        out.print(
            Text(
                f"oldest failed {age(stats.oldest_age_seconds())} ago "
                f"({when(s.oldest)} UTC, {s.oldest_internal_id or '-'})"
            )
        )
    show_breakdown(out, stats)


class Breakdown(Protocol):
    """What ``dlq stats`` (from the queue or the ledger) and ``failures stats`` count alike."""

    @property
    def matched(self) -> int: ...
    @property
    def by_category(self) -> Counter[str]: ...
    @property
    def by_code(self) -> Counter[str]: ...
    @property
    def by_tenant(self) -> Counter[str]: ...
    @property
    def by_type(self) -> Counter[str]: ...
    @property
    def other_groups(self) -> int: ...

    def ranked_groups(self) -> list[Group]: ...


def show_breakdown(out: Console, stats: Breakdown) -> None:
    """The counts by category, code, tenant and type, then the failure fingerprints."""
    if not stats.matched:
        return
    out.print()
    tables = [
        counts_table("by category", stats.by_category),
        counts_table("by code", stats.by_code),
        counts_table("by tenant", stats.by_tenant),
        counts_table("by type", stats.by_type),
    ]
    out.print(Columns(tables, padding=(0, 4)))
    show_groups(out, stats.ranked_groups(), more=bool(stats.other_groups))


def show_groups(out: Console, ranked: list[Group], *, more: bool = False) -> None:
    """The failure fingerprints, most frequent first (``failures stats`` shows the same)."""
    # One line per cause: the sample is cut at the edge (whole in --json and `dlq show`).
    groups = Table(
        title="by failure fingerprint (category + code + message with ids and numbers masked)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        expand=True,
    )
    groups.add_column("fingerprint", no_wrap=True)
    groups.add_column("count", justify="right", no_wrap=True)
    wide = out.width >= _WIDE
    if wide:
        groups.add_column("category", no_wrap=True)
        groups.add_column("code", no_wrap=True)
    else:
        groups.add_column("category / code", overflow="fold", max_width=18)
    groups.add_column("tenants", justify="right", no_wrap=True)
    groups.add_column("sample message", no_wrap=True, overflow="ellipsis", ratio=1, min_width=20)
    for group in ranked[: _TOP * 2]:
        cause = [Text(group.category), Text(group.code)] if wide else [Text(_cause(group))]
        groups.add_row(
            group.fingerprint,
            f"{group.count:,}",
            *cause,
            str(group.distinct_tenants()),
            Text(group.sample),
        )
    out.print(groups)
    if len(ranked) > _TOP * 2 or more:
        out.print(Text("(more fingerprints in --json)", style="dim"))


def show_page(page: Page) -> None:
    out = console()
    shown = len(page.records)
    first = page.offset + 1 if shown else 0
    out.print(
        Text(
            f"{page.queue}: {page.report.seen:,} messages, {page.matched:,} match; "
            f"showing {first}-{page.offset + shown}",
            style="bold",
        )
    )
    if page.source == "ledger":
        out.print(Text("from the ledger, newest first", style="dim"))
    else:
        out.print(Text("from the queue, in queue order", style="dim"))
    if not shown:
        return
    wide = out.width >= _WIDE
    # expand + ratio: the message takes what the other columns leave and is cut there
    # (`dlq show ID` has it whole); ids may fold on a narrow terminal.
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("age", no_wrap=True)
    table.add_column("internal id", overflow="fold", no_wrap=wide, max_width=None if wide else 18)
    table.add_column("tenant", overflow="fold")
    if wide:
        table.add_column("type", no_wrap=True)
        table.add_column("category", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("replays", justify="right", no_wrap=True)
    else:
        table.add_column("category / code", overflow="fold", max_width=18)
    table.add_column("message", no_wrap=True, overflow="ellipsis", ratio=1, min_width=16)
    now = datetime.now(UTC)
    for r in page.records:
        when = age((now - r.failed_at).total_seconds()) if r.failed_at else "-"
        row: list[str | Text] = [str(r.position), when, Text(r.internal_id or "-")]
        row.append(Text(r.tenant or "-"))
        if wide:
            row += [Text(r.type), Text(r.category), Text(r.code), str(r.replay_count)]
        else:
            row.append(Text(r.category if r.code == r.category else f"{r.category} {r.code}"))
        row.append(Text(r.message))
        table.add_row(*row)
    out.print(table)


def show_detail(detail: dict[str, Any], copies: int) -> None:
    out = console()
    table = Table(show_header=False, title_justify="left", title=Text(detail["internal_id"] or ""))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    ledger = detail.get("source") == "ledger"
    rows = (
        ("row id", "id") if ledger else ("position", "position"),
        ("tenant", "tenant"),
        ("type", "type"),
        ("recipient", "recipient"),
        ("category", "category"),
        ("code", "code"),
        ("subcode", "subcode"),
        ("message", "message"),
        ("fingerprint", "fingerprint"),
        ("failed (UTC)", "failed_at"),
        ("first failed (UTC)", "first_failed_at"),
        ("retries", "retry_count"),
        ("replays", "replay_count"),
        ("routing key", "routing_key"),
        ("message_id", "message_id"),
    )
    for label, key in rows:
        value = detail.get(key)
        if key.endswith("_at"):
            value = when(value)
        table.add_row(label, Text("-" if value is None else str(value)))
    out.print(table)
    if ledger:
        attempts = len(detail.get("attempts") or ())
        out.print(Text(f"from the ledger; {attempts} attempts (status ID shows them)", style="dim"))
    else:
        out.print(Text("from the queue", style="dim"))
    if copies > 1:
        where = "the ledger records" if ledger else "the queue holds"
        out.print(Text(f"{where} {copies} dead messages with this id; this is the first"))
    for title, key in (("headers", "headers"), ("body", "body")):
        out.print(Text(title, style="bold"))
        value = detail[key]
        text = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_INDENT_2)
        out.print(Text(text if isinstance(text, str) else text.decode()))


def show_replay(summary: ReplaySummary) -> None:
    out = console()
    verb = "would replay" if summary.dry_run else "replayed"
    head = "dry run, nothing changed: " if summary.dry_run else ""
    out.print(
        Text(
            f"{head}{verb} {summary.replayed:,} of {summary.matched:,} matching "
            f"({summary.report.seen:,} in {summary.queue}) to {summary.target}",
            style="bold",
        )
    )
    for reason, count in summary.skipped.most_common():
        out.print(Text(f"  skipped {count:,}: {reason}"))
    if summary.by_category:
        cats = ", ".join(f"{c} {n:,}" for c, n in summary.by_category.most_common())
        out.print(Text(f"  {verb} by category: {cats}"))
    out.print(Text(f"  left in {summary.queue}: {summary.left:,}"))
    if summary.sample:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, title=f"{verb} (first 20)")
        for header in ("#", "internal id", "tenant", "category", "code", "replays"):
            table.add_column(header, overflow="fold")
        for r in summary.sample:
            table.add_row(
                str(r["position"]),
                Text(r["internal_id"] or "-"),
                Text(r["tenant"] or "-"),
                Text(r["category"]),
                Text(r["code"]),
                str(r["replay_count"]),
            )
        out.print(table)


def show_purge(summary: PurgeSummary) -> None:
    out = console()
    head = "dry run, nothing changed: would remove" if summary.dry_run else "removed"
    out.print(Text(f"{head} {summary.removed:,} of {summary.report.seen:,} from {summary.queue}"))
    for category, count in summary.by_category.most_common():
        out.print(Text(f"  {category}: {count:,}"))
    if summary.recorded:
        recorded = f"  reason recorded in the ledger for {summary.resolved:,}: {summary.reason}"
        out.print(Text(recorded))
    elif not summary.dry_run:
        out.print(Text("  reason not recorded: no ledger (WA_DATABASE_URL is not set)"))
    out.print(Text(f"  left in {summary.queue}: {summary.left:,}"))
