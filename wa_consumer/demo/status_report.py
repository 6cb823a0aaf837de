"""The summary's "Delivery statuses" part: what Meta's webhooks (here the sandbox's) said of
the accepted messages, the failures after acceptance as ``wa-consumer failures list`` shows
them (its own query and table), and the commands a newcomer can run next."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

from ..render_deliveries import show_failure_page
from .samples import SENT, Sample
from .statuses import FINAL, WAIT_SECONDS, StatusFindings

_RANK = {status: i for i, status in enumerate((*FINAL, "sent", "accepted"))}
"""How the counts are listed: the ends first, then what is still under way."""
KEEP_FLAG = "--keep-ledger"


def _counts(statuses: StatusFindings) -> str:
    ranked = sorted(statuses.by_status.items(), key=lambda kv: _RANK.get(kv[0], len(_RANK)))
    missing = statuses.accepted - sum(statuses.by_status.values())
    if missing > 0:
        ranked.append(("not in the ledger", missing))
    return ", ".join(f"{status} {n}" for status, n in ranked) or "none"


def _problems(samples: Sequence[Sample], statuses: StatusFindings) -> list[str]:
    """A failure after acceptance that did not come, or one that should not have."""
    problems: list[str] = []
    if statuses.timed_out:
        final = sum(statuses.by_status.get(s, 0) for s in FINAL)
        problems.append(
            f"timed out after {WAIT_SECONDS:g} s waiting for statuses: "
            f"{max(statuses.accepted - final, 0)} of {statuses.accepted} accepted messages "
            "have no delivered, read or failed status"
        )
    for sample in samples:
        status, code = statuses.by_message.get(sample.internal_id, (None, None))
        if sample.fails_after is not None and (status, code) != ("failed", sample.fails_after):
            got = f"{status} {code}" if code else status or "no status"
            problems.append(
                f"{sample.label} ({sample.internal_id}): expected failed "
                f"{sample.fails_after} after acceptance, got {got}"
            )
        elif sample.fails_after is None and sample.expect == SENT and status == "failed":
            problems.append(
                f"{sample.label} ({sample.internal_id}): failed {code} after acceptance"
            )
    return problems


def _next_steps(console: Console, statuses: StatusFindings) -> None:
    env = f"WA_DATABASE_URL={statuses.url}"
    records = statuses.failures.records
    example = records[-1]["internal_id"] if records else None
    if statuses.kept:
        console.print(f"next, on this ledger (kept: {statuses.database}):", highlight=False)
    else:
        console.print(
            f"next (the ledger {statuses.database} is dropped at the end; run the demo with "
            f"{KEEP_FLAG} to keep it and try these):",
            highlight=False,
        )
    console.print(f"  {env} wa-consumer failures list", soft_wrap=True, highlight=False)
    if example:
        console.print(f"  {env} wa-consumer status {example}", soft_wrap=True, highlight=False)


def show_statuses(
    console: Console, samples: Sequence[Sample], statuses: StatusFindings
) -> list[str]:
    """Print the part; the problems it found (for the verdict)."""
    console.print()
    console.print(
        f"[bold]Delivery statuses[/] (status webhooks the sandbox signed, checked by the "
        f"receiver, applied to the ledger {statuses.database} by the daemon)",
        highlight=False,
    )
    console.print(
        f"{statuses.accepted} messages accepted with a wamid; latest status of each: "
        f"{_counts(statuses)}",
        highlight=False,
    )
    console.print()
    show_failure_page(statuses.failures, console)
    console.print()
    _next_steps(console, statuses)
    return _problems(samples, statuses)
