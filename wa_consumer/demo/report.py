"""The demo's summary: where each message ended, the totals, and whether that was expected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .queues import DeadLetter
from .samples import SENT, Sample
from .status_report import show_statuses
from .tour import Findings, Tally

ERROR_CHARS = 50
WIDE = 170
"""Columns from which the error messages fit in the table."""


@dataclass(frozen=True, slots=True)
class Ending:
    """Where one sample ended: accepted by the sandbox, in the DLQ, both (a bug), or neither."""

    sample: Sample
    attempts: int
    sends: int
    dead: DeadLetter | None

    @property
    def outcome(self) -> str:
        if self.dead is not None:
            return "dead" if not self.sends else "sent+dead"
        return "sent" if self.sends else "pending"

    def problem(self) -> str | None:
        """What is wrong with this ending, in words; None when it is the expected one."""
        expect = self.sample.expect
        wanted = "sent" if expect == SENT else f"dead ({expect})"
        if self.sends > 1:
            return f"sent {self.sends} times"
        if self.outcome == "pending":
            return f"expected {wanted}, but it never reached an end"
        if expect == SENT and self.outcome != "sent":
            got = self.dead.category if self.dead is not None else self.outcome
            return f"expected sent, got dead ({got})"
        if expect != SENT and (self.dead is None or self.dead.category != expect):
            got = f"dead ({self.dead.category})" if self.dead is not None else self.outcome
            return f"expected {wanted}, got {got}"
        return None


def endings(
    samples: Sequence[Sample], findings: Findings
) -> tuple[list[Ending], list[DeadLetter], int]:
    """Each sample's ending, the dead letters that match no sample, and how many requests
    match no sample's body (a body changed on its way)."""
    tally = Tally(samples)
    tally.update(findings.requests)
    by_id = {s.internal_id: i for i, s in enumerate(samples)}
    by_body = {s.body: i for i, s in enumerate(samples)}
    dead: dict[int, DeadLetter] = {}
    strangers: list[DeadLetter] = []
    for letter in findings.dead:
        i = by_id.get(letter.internal_id or "", by_body.get(letter.body))
        if i is None or i in dead:
            strangers.append(letter)
        else:
            dead[i] = letter
    ends = [
        Ending(s, tally.attempts[i], tally.sends[i], dead.get(i)) for i, s in enumerate(samples)
    ]
    return ends, strangers, tally.unknown


def _cut(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STYLE = {"sent": "green", "dead": "red", "pending": "yellow", "sent+dead": "bold red"}


def table(ends: Sequence[Ending], *, with_errors: bool = True) -> Table:
    """One row per message: what it shows, how many requests it took, where it ended."""
    grid = Table(
        title="Where each message ended",
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
    )
    # Minimum widths keep the outcome readable when space runs out: the labels wrap instead.
    grid.add_column("#", justify="right", no_wrap=True)
    grid.add_column("demonstrates", min_width=16)
    grid.add_column("type", min_width=8)
    grid.add_column("tenant", no_wrap=True, min_width=8)
    grid.add_column("attempts", justify="right", no_wrap=True, min_width=3)
    grid.add_column("end", no_wrap=True, min_width=4)
    grid.add_column("category", no_wrap=True, min_width=17)
    grid.add_column("code", no_wrap=True, min_width=6)
    if with_errors:
        grid.add_column("x-error-message", no_wrap=True, overflow="ellipsis", min_width=20)
    grid.add_column("", no_wrap=True, min_width=1)
    for n, end in enumerate(ends, 1):
        letter = end.dead
        cells: list[str | Text] = [
            str(n),
            end.sample.label,
            end.sample.type,
            end.sample.tenant,
            str(end.attempts),
            Text(end.outcome, style=_STYLE[end.outcome]),
            letter.category if letter else "",
            # Failures of our own (tenant_*, invalid, expired) carry their category as code.
            letter.code if letter and letter.code != letter.category else "",
        ]
        if with_errors:
            cells.append(_cut(letter.message) if letter else "")
        ok = end.problem() is None
        cells.append(Text("✓", style="green") if ok else Text("✗", style="bold red"))
        grid.add_row(*cells)
    return grid


def _print_table(console: Console, ends: Sequence[Ending]) -> None:
    """The table; on a narrow console the error messages follow it, one line each."""
    wide = console.width >= WIDE
    console.print(table(ends, with_errors=wide))
    if wide:
        return
    console.print("x-error-message of each dead message:")
    for n, end in enumerate(ends, 1):
        if end.dead is not None:
            console.print(
                f"{n:>4}  {end.dead.message}", no_wrap=True, overflow="ellipsis", highlight=False
            )


def report(
    console: Console,
    samples: Sequence[Sample],
    findings: Findings,
    log_path: str,
    timeout: float,
) -> int:
    """Print the table, the totals and the verdict; 0 when everything ended as expected."""
    ends, strangers, unknown = endings(samples, findings)
    console.print()
    _print_table(console, ends)

    by_end = Counter(end.outcome for end in ends)
    retried = sum(1 for e in ends if e.outcome == "sent" and e.attempts > 1)
    categories = Counter(e.dead.category for e in ends if e.dead is not None)
    accepted = sum(1 for r in findings.requests if r["outcome"] == "sent")
    lines = [
        f"{len(ends)} messages: {by_end['sent']} sent ({retried} of them after retries), "
        f"{by_end['dead']} dead, {by_end['pending']} never reached an end",
        "dead by category: "
        + ", ".join(f"{name} {count}" for name, count in sorted(categories.items())),
        f"Cloud API requests: {len(findings.requests)} "
        f"({accepted} accepted, {len(findings.requests) - accepted} failed or unanswered)",
    ]
    left = {name: n for name, n in findings.left.items() if n}
    lines.append(
        "left in queues: " + ", ".join(f"{name} {n}" for name, n in left.items())
        if left
        else "left in queues: none (the main queue and every wait queue are empty)"
    )
    stopped = findings.daemon_exit
    lines.append(
        "daemon stopped gracefully (exit 0)"
        if stopped == 0
        else f"daemon did not stop cleanly (exit {stopped})"
    )
    lines.append(f"daemon log: {log_path}")
    console.print()
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False)

    problems = [
        f"{e.sample.label} ({e.sample.internal_id}): {p}" for e in ends if (p := e.problem())
    ]
    if findings.statuses is not None:
        problems += show_statuses(console, samples, findings.statuses)
    problems += [f"dead letter from no sample: {d.internal_id} ({d.category})" for d in strangers]
    if unknown:
        problems.append(f"{unknown} Cloud API requests match no message's body as published")
    if findings.timed_out:
        problems.insert(
            0, f"timed out after {timeout:g} s: the messages marked pending never reached an end"
        )
    if left:
        problems.append(f"{sum(left.values())} messages left in queues after the daemon stopped")
    if stopped != 0:
        problems.append(f"the daemon's exit code was {stopped}, not 0")
    console.print()
    if not problems:
        console.print("[bold green]every message ended where expected[/]")
        return 0
    console.print(f"[bold red]{len(problems)} problem(s):[/]")
    for problem in problems:
        console.print(f"  - {problem}", soft_wrap=True, highlight=False)
    return 1
