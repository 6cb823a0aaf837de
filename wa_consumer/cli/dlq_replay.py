"""``dlq replay``: matching dead messages back to the main queue, all at once or a canary
first. ``scripts/replay_dlq.py`` runs ``replay_command`` alone.

With ``--canary N`` (the ledger needed) it replays N of them first, waits up to
``--canary-wait`` seconds for their outcomes in the ledger (sent, dead again or still
pending: ``dlq.canary``, as the console's group replay), prints them, and replays the rest
only when told so: at the prompt, or with ``--yes`` when every canary message was sent.
Otherwise it stops with exit 1 and the rest stays dead. The rest is what died before the
canary began, so a canary message that died again stays too. With the ledger on, each step
is a row of the audit trail (``dlq_replay``, or ``dlq_replay_canary``, ``_stopped``,
``_continue`` and then ``dlq_replay``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
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
    connect_broker,
    fail,
    filter_or_exit,
    on_broker,
    on_ledger,
    progress_line,
    settings_or_exit,
    show_progress,
)

if TYPE_CHECKING:
    import asyncpg
    from aio_pika.abc import AbstractConnection

    from ..dlq import Filter, PassOptions, ReplaySummary
    from ..dlq.canary import CanaryRun
    from ..settings import Settings

CANARY_WAIT = 60.0  # seconds for the canary's outcomes, unless --canary-wait


def replay_command(
    tenant: Tenants = None,
    category: DeadCategories = None,
    code: DeadCodes = None,
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
    canary: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Replay N first, show their outcomes, then ask before the rest (needs the "
            "ledger). Stopping exits 1.",
        ),
    ] = None,
    canary_wait: Annotated[
        float | None,
        typer.Option(
            min=0, metavar="SECONDS", help="With --canary: wait this long for their outcomes."
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="With --canary: no prompt; the rest goes only if every canary was sent."
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Why: kept in the audit trail.")
    ] = None,
    actor: Actor = None,
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
    selection = filter_or_exit(
        tenants=tenant, categories=category, codes=code, types=type_,
        fingerprints=fingerprint, since=since, older_than=older_than, ids=id_,
    )  # fmt: skip
    if not dry_run:
        all_or_exit(selection, every, "replay")
    if canary is None and (yes or canary_wait is not None):
        raise fail("--yes and --canary-wait go with --canary", Exit.USAGE)
    if canary is not None and dry_run:
        raise fail("--canary replays messages and --dry-run none: pass one of them", Exit.USAGE)
    settings = settings_or_exit()
    job = _Replay(settings, selection, actor_name(actor), reason, max_replays, rate, json_)
    if canary is None:
        job.show(job.rest(limit, dry_run=dry_run), None)
        return
    url = settings.database_url
    if not url:
        raise fail(
            "--canary needs the ledger (WA_DATABASE_URL): the canary's outcomes are read there",
            Exit.USAGE,
        )
    wait = CANARY_WAIT if canary_wait is None else canary_wait
    first = job.canary(url, canary if limit is None else min(canary, limit), wait)
    go, why = _decide(first, yes, rate)
    if not go:
        job.record(url, "dlq_replay_stopped", {"canary": first.counts, "why": why})
        job.show(None, first, stopped=why)
        raise fail(f"stopped after the canary ({why}): the rest stays in the DLQ", Exit.FAILED)
    job.record(url, "dlq_replay_continue", {"canary": first.counts})
    left = None if limit is None else limit - first.summary.replayed
    rest = job.rest(left, before=first.started) if left is None or left > 0 else None
    job.show(rest, first)


def _decide(first: CanaryRun, yes: bool, rate: float | None) -> tuple[bool, str]:
    """Whether the rest goes, and why not."""
    n = first.counts
    if yes:
        if n["sent"] == len(first.outcomes):
            return True, ""
        return False, f"{n['sent']} of {len(first.outcomes)} sent"
    paced = f" at {rate:g} per second" if rate else ""
    # On stderr, stdout kept for the result (--json); no answer (stdin closed) is a no.
    sys.stderr.write(f"Replay the rest{paced}? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if not sys.stdin.isatty():  # the answer, for the log
        sys.stderr.write(answer + "\n")
    go = answer.lower() in ("y", "yes")
    return go, "" if go else "declined"


class _Replay:
    """One ``dlq replay``: its settings, filter and who; the passes it makes, recorded."""

    def __init__(
        self,
        settings: Settings,
        selection: Filter,
        actor: str,
        reason: str | None,
        max_replays: int,
        rate: float | None,
        json_: bool,
    ) -> None:
        self.s, self.selection, self.actor, self.reason = settings, selection, actor, reason
        self.max_replays, self.rate, self.json = max_replays, rate, json_
        self.target = selection.target(settings.dead_letter_queue)
        self.details = {"filter": selection.to_json(), "rate": rate}

    def _options(self) -> PassOptions:
        from ..dlq import PassOptions

        return PassOptions.for_queue_type(self.s.queue_type)

    def rest(
        self, limit: int | None, *, before: datetime | None = None, dry_run: bool = False
    ) -> ReplaySummary:
        """Replay what matches (what died before ``before``, when given), at the rate."""
        from ..dlq import open_ledger, replay
        from ..dlq.canary import rest_filter

        s = self.s
        selection = self.selection if before is None else rest_filter(self.selection, before)

        async def work(connection: AbstractConnection) -> ReplaySummary:
            async with open_ledger(s.database_url) as ledger:
                done = replay(
                    connection, s.dead_letter_queue, s.queue, selection, ledger,
                    max_replays=self.max_replays, limit=limit, rate=self.rate, dry_run=dry_run,
                    options=self._options(), progress=progress,
                )  # fmt: skip
                if dry_run:  # nothing changed: nothing to record
                    return await done
                details = {**self.details, "limit": limit}
                return await audited(
                    ledger, done, _summary, action="dlq_replay", details=details,
                    actor=self.actor, target=self.target, reason=self.reason,
                )  # fmt: skip

        with show_progress("replaying", bar=not self.json) as progress:
            return on_broker(s, work)

    def canary(self, url: str, n: int, wait: float) -> CanaryRun:
        """Replay ``n`` first and wait for their outcomes (see the module docstring)."""
        from ..dlq import canary as canaries
        from ..dlq import replay
        from ..dlq.ledger import PostgresDlqLedger
        from ..ledger.dead import DeadLetters

        s, started = self.s, datetime.now(UTC)
        say = progress_line("canary")

        async def work(db: asyncpg.Connection[Any]) -> CanaryRun | None:
            items = await canaries.pick(
                DeadLetters(db), self.selection, n, before=started, max_replays=self.max_replays
            )
            if not items:
                return None
            ledger = PostgresDlqLedger(db)
            selection = canaries.canary_filter(self.selection, items, started)
            details = {**self.details, "canary": [i.internal_id for i in items]}
            broker = await connect_broker(s.amqp_url)
            try:
                done = replay(
                    broker, s.dead_letter_queue, s.queue, selection, ledger,
                    max_replays=self.max_replays, limit=len(items), options=self._options(),
                )  # fmt: skip
                summary = await audited(
                    ledger, done, _summary, action="dlq_replay_canary", details=details,
                    actor=self.actor, target=self.target, reason=self.reason,
                )  # fmt: skip
            finally:
                await broker.close()
            say(f"{summary.replayed} of {len(items)} replayed; up to {wait:g} s for outcomes")
            found = await canaries.settled(db, items, wait=wait if summary.replayed else 0)
            return canaries.CanaryRun(started, items, summary, found)

        first = on_ledger(url, work)
        if first is None:
            raise fail(
                "no matching dead message in the ledger may be replayed (none, or each "
                "replayed --max-replays times already): nothing changed",
                Exit.FAILED,
            )
        if not self.json:
            _show_outcomes(first)
        return first

    def record(self, url: str, action: str, details: dict[str, Any]) -> None:
        """One row of the audit trail, on a connection of its own (between two passes)."""
        from ..dlq.ledger import PostgresDlqLedger

        on_ledger(
            url,
            lambda db: PostgresDlqLedger(db).record(
                actor=self.actor, action=action, target=self.target, reason=self.reason,
                details={**self.details, **details},
            ),
        )  # fmt: skip

    def show(
        self, rest: ReplaySummary | None, first: CanaryRun | None, *, stopped: str | None = None
    ) -> None:
        from ..dlq.render import print_json, show_replay

        if self.json:
            if first is None and rest is not None:
                print_json(rest.to_json())  # a replay without a canary, as it always was
                return
            print_json(
                {
                    "canary": first.to_json() if first else None,
                    "continued": stopped is None,
                    "stopped": stopped,
                    "rest": rest.to_json() if rest else None,
                }
            )
        elif rest is not None:
            show_replay(rest)


def _summary(summary: ReplaySummary) -> dict[str, Any]:
    out = summary.to_json()
    del out["sample"]
    return out


def _show_outcomes(first: CanaryRun) -> None:
    for outcome in first.outcomes:
        typer.echo("  " + outcome.line())
    n = first.counts
    typer.echo(f"canary: {n['sent']} sent, {n['dead']} dead again, {n['pending']} pending")
