"""``wa-consumer demo``: the newcomer's tour, end to end on the local RabbitMQ.

The sandbox (Cloud API and tenant service stand-in), the webhook receiver and the daemon run
in this process, on a vhost of the demo's own, with retry delays of a second or two, and
with a scratch PostgreSQL database as the ledger (dropped at the end; without PostgreSQL the
demo runs without a ledger and skips statuses). The demo publishes one message of every type
and one for every outcome (retried then sent, dead for each reason, accepted then failed in
a status webhook), follows each to its end and its delivery status, and prints where each
ended and why. It exits 0 only when every message ended where it should. The daemon's log
goes to a file, so that the summary stays readable; its path is printed.

Modules: ``samples`` (the traffic), ``isolation`` (the vhost, or unique names), ``scratch``
(the ledger's database), ``tour`` (the run), ``statuses`` (webhooks, waiting for them),
``queues`` (what the run left in them), ``report`` and ``status_report`` (the summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TextIO

from aiormq.exceptions import AMQPError
from rich.console import Console

from ..errors import WaConsumerError
from ..logs import configure_logging
from ..settings import Settings
from .isolation import Place, prepare, remove_names, remove_vhost
from .report import report
from .samples import build_samples
from .scratch import ScratchLedger
from .tour import Findings, tour

__all__ = ["DEMO_POLICY", "run_demo"]

DEMO_POLICY: dict[str, Any] = {
    "retry_delays": [0.5, 1.0, 2.0],
    "max_retries": 3,
    "rate_limit_min_delay": 0.5,
    "pair_limit_min_delay": 0.5,
    # Short, so the sample whose first request gets no answer is retried within the tour.
    "http_timeout_seconds": 2.0,
    "shutdown_grace_seconds": 5.0,
    "prefetch": 50,
    "metrics_port": 0,
    # Not WA_DATABASE_URL's database: the demo's made-up messages go to a scratch one (or none).
    "database_url": None,
}
"""Settings that make the tour take seconds instead of the production ladder's hour."""

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


def _console() -> Console:
    console = Console()
    # Piped or captured: no terminal to size the table by, so do not squeeze it into 80.
    return console if console.is_terminal else Console(width=180)


def _log_to(stream: TextIO, settings: Settings) -> None:
    # configure_logging writes to the sys.stdout it finds: point it at the file meanwhile.
    with contextlib.redirect_stdout(stream):
        configure_logging(settings.log_level, settings.log_format)


def run_demo(
    settings: Settings,
    *,
    timeout: float = 40.0,
    keep_ledger: bool = False,
    run: Runner = asyncio.run,
    console: Console | None = None,
) -> int:
    """Run the tour and print its summary; the exit code (0: all as expected).

    ``keep_ledger``: leave the scratch database in place at the end, for the ledger commands.
    """
    console = console or _console()
    started = time.monotonic()
    samples = build_samples()
    try:
        place = prepare(settings)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    scratch = ScratchLedger(settings.database_url, place.tag)
    settings = settings.model_copy(
        update={"amqp_url": place.amqp_url, **place.names, **DEMO_POLICY}
    )
    log_path = Path(tempfile.mkdtemp(prefix="wa-demo-")) / "daemon.log"
    console.print(f"[bold]wa-consumer demo[/]: {len(samples)} messages, end to end")
    console.print(f"  broker      {place.where()}", highlight=False)
    console.print(f"  daemon log  {log_path}", highlight=False)
    code = 1
    with log_path.open("w", encoding="utf-8") as log:
        _log_to(log, settings)
        try:
            ledger = _open_ledger(console, scratch, keep_ledger, run)
            if ledger is not None:
                settings = settings.model_copy(update={"database_url": ledger.url})
            findings: Findings = run(
                tour(settings, samples, console, timeout, scratch=ledger, keep=keep_ledger)
            )
            code = report(console, samples, findings, str(log_path), timeout)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: cleaning up[/]")
            code = 130
        except (WaConsumerError, AMQPError, ConnectionError) as exc:
            console.print(f"[red]demo failed: {exc}[/]")
        finally:
            code = _clean_up(console, place, settings, run) or code
            code = _drop(console, scratch, keep_ledger, run) or code
    console.print(f"done in {time.monotonic() - started:.1f} s", highlight=False)
    return code


def _open_ledger(
    console: Console, scratch: ScratchLedger, keep: bool, run: Runner
) -> ScratchLedger | None:
    """The scratch database, made; None (and a note) when PostgreSQL is not at hand."""
    reason: str | None = run(scratch.create())
    if reason is not None:
        console.print(f"  ledger      off: {reason}; delivery statuses skipped", highlight=False)
        return None
    end = "kept at the end" if keep else "dropped at the end"
    console.print(
        f"  ledger      database {scratch.name} on {scratch.where()} (its own, {end})",
        highlight=False,
    )
    return scratch


def _drop(console: Console, scratch: ScratchLedger, keep: bool, run: Runner) -> int:
    """Drop the scratch database unless kept; 1 if that failed."""
    if not scratch.made:
        return 0
    if keep:
        console.print(
            f"kept database {scratch.name} on {scratch.where()} "
            f'(when done: DROP DATABASE "{scratch.name}")',
            highlight=False,
        )
        return 0
    error: str | None = run(scratch.drop())
    if error is None:
        console.print(f"dropped database {scratch.name}", highlight=False)
        return 0
    console.print(f"[red]could not drop database {scratch.name}: {error}[/]", highlight=False)
    return 1


def _clean_up(console: Console, place: Place, settings: Settings, run: Runner) -> int:
    """Remove the demo's vhost (or its queues and exchanges); 1 if that failed."""
    if place.vhost is not None:
        error = remove_vhost(place.vhost)
        what = f"vhost {place.vhost}"
    else:
        what = f"the queues and exchanges named {place.prefix}-*"
        try:
            run(remove_names(settings))
            error = None
        except (WaConsumerError, AMQPError, ConnectionError) as exc:
            error = str(exc) or type(exc).__name__
    if error is None:
        console.print(f"removed {what}", highlight=False)
        return 0
    console.print(f"[red]could not remove {what}: {error}[/]")
    return 1
