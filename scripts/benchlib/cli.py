"""Options, the rounds, and clean-up on every way out.

Resources are taken in this order and given back in reverse, on success, failure, Ctrl-C or
SIGTERM: the vhost (``rabbitmqctl``), the scratch database (only if a ledger-on scenario is
chosen), a temporary directory for the logs, the child processes (stopped before the
database is dropped, so that no daemon still holds a connection to it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import aio_pika
import aiohttp
import aiormq
import asyncpg

from .broker import BROKER, amqp_url, bench_vhost
from .common import ROOT, BenchError
from .database import scratch_database
from .measure import Context, Run, measure
from .procs import Children, Sandbox
from .report import describe, summary, table, write_json
from .scenarios import (
    DAEMON_LOG_LEVEL,
    DAEMON_PREFETCH,
    DAEMON_TRANSPORT,
    DEFAULT,
    ORDER,
    STATUSES_PREFETCH,
    TRANSPORTS,
    Scenario,
    in_round,
    plan,
)
from .statuses import run_statuses
from .webhooks import run_webhooks

DEFAULT_JSON = ROOT / "bench-results" / "latest.json"
MEASURES = {"messages": measure, "webhooks": run_webhooks, "statuses": run_statuses}


def parse_args(argv: Sequence[str] | None, description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=description)
    add = parser.add_argument
    add("--messages", type=int, default=20_000, help="N per measurement (default 20,000)")
    add("--repeat", type=int, default=1, help="rounds of every scenario; medians are reported")
    add(
        "--scenarios",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {','.join(ORDER)}, measured in that order"
        f" (default: {','.join(DEFAULT)}; the delivery-status ones only when named)",
    )
    add(
        "--prefetch",
        type=int,
        default=DAEMON_PREFETCH,
        help=f"floor and 0 ms daemons (default: the daemon's, {DAEMON_PREFETCH})",
    )
    add("--latency-ms", type=float, default=100.0, help="sandbox delay of 'latency' (100)")
    add("--latency-prefetch", type=int, default=500, help="WA_PREFETCH of 'latency' (500)")
    add(
        "--log-level",
        default=DAEMON_LOG_LEVEL,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help=f"the daemon's WA_LOG_LEVEL (default: its own, {DAEMON_LOG_LEVEL})",
    )
    add(
        "--daemons",
        type=int,
        default=1,
        help="daemons started together on the queue of each daemon scenario but workers-N,"
        " which runs one supervisor (default 1)",
    )
    add(
        "--number-rate",
        type=float,
        default=None,
        help="the daemon's WA_NUMBER_RATE (default 0: the per-number limit off)",
    )
    add(
        "--webhook-concurrency",
        type=int,
        default=200,
        help="webhooks: requests in flight, and publishes awaiting confirms in its floor (200)",
    )
    add(
        "--statuses-prefetch",
        type=int,
        default=STATUSES_PREFETCH,
        help=f"statuses: the daemon's WA_STATUSES_PREFETCH (default: its own, {STATUSES_PREFETCH})",
    )
    add(
        "--transports",
        default="",
        help="comma-separated Cloud API transports of the daemon (aiohttp, pyreqwest): each"
        " daemon scenario is measured with each, one after the other in every round; the"
        " targets use the first (default: the daemon's own)",
    )
    add(
        "--http2-max-streams",
        type=int,
        default=100,
        help="streams at once per HTTP/2 connection the sandbox allows (latency-h2; 100)",
    )
    add("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    add("--logs", type=Path, help="keep the daemons' and the sandbox's logs here (default: not)")
    add("--deadline", type=float, default=300.0, help="seconds allowed for each wait (300)")
    add(
        "--stall",
        type=float,
        default=30.0,
        help="a daemon that sends nothing for this long is stopped, its run not clean (30)",
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if set(args.transports) - set(TRANSPORTS) or len(set(args.transports)) < len(args.transports):
        parser.error(f"--transports: each of {','.join(TRANSPORTS)} at most once")
    unknown = sorted(set(args.scenarios) - set(ORDER))
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: unknown {unknown}; choose from {','.join(ORDER)}")
    if min(args.daemons, args.webhook_concurrency, args.statuses_prefetch) < 1:
        parser.error("need --daemons, --webhook-concurrency and --statuses-prefetch >= 1")
    if args.http2_max_streams < 1:
        parser.error("need --http2-max-streams >= 1")
    if args.messages < 10 or args.repeat < 1 or args.prefetch < 1 or args.latency_prefetch < 1:
        parser.error("need --messages >= 10, --repeat >= 1 and prefetches >= 1")
    if args.latency_ms < 0 or args.deadline <= 0 or args.stall <= 0 or (args.number_rate or 0) < 0:
        parser.error("need --latency-ms >= 0, --deadline and --stall > 0, --number-rate >= 0")
    return args


async def bench(ctx: Context, scenarios: Sequence[Scenario], results: dict[str, list[Run]]) -> None:
    """Every round measures every scenario in order; the sandbox serves all the daemons."""
    try:
        if any(s.daemon or s.http for s in scenarios):
            ctx.sandbox = Sandbox(ctx.workdir, ctx.children, ctx.args.http2_max_streams)
            await ctx.sandbox.ready(30)
        for round_no in range(1, ctx.args.repeat + 1):
            for scenario in in_round(scenarios, round_no):
                run = await MEASURES[scenario.kind](scenario, round_no, ctx)
                results.setdefault(scenario.key, []).append(run)
                print(describe(run, scenario.label), flush=True)
    finally:
        if ctx.sandbox is not None:
            await ctx.sandbox.close()


def run_loop(coro: Coroutine[Any, Any, None]) -> None:
    """On uvloop, as the daemon runs, so that the floor is measured on the same loop.

    SIGTERM cancels the run, as Ctrl-C does, so that every ``finally`` on the way out runs
    (connections closed); outside the loop it raises KeyboardInterrupt.
    """
    import uvloop

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await coro

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(cancellable())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def metadata(args: argparse.Namespace, scenarios: Sequence[Scenario]) -> dict[str, Any]:
    meta = {
        "messages": args.messages,
        "repeat": args.repeat,
        "scenarios": [s.key for s in scenarios],
        "daemon_log": f"{args.log_level} json -> file",
        "number_rate": 0 if args.number_rate is None else args.number_rate,
        "daemons": args.daemons,  # started together in each daemon scenario
        "transports": args.transports or [f"daemon default ({DAEMON_TRANSPORT})"],
        "http2_max_streams": args.http2_max_streams,  # the sandbox's, per HTTP/2 connection
        "python": platform.python_version(),
        "loop": f"uvloop {importlib.metadata.version('uvloop')}",
        "aio_pika": aio_pika.__version__,
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sandbox": "separate process, request log off, no recipient rules, no number limit",
        "broker": BROKER,
    }
    if any(s.kind == "webhooks" for s in scenarios):
        meta["webhook_concurrency"] = args.webhook_concurrency
        meta["webhook_load"] = "load generator, broker and receiver share the machine's cpus"
    if any(s.kind == "statuses" for s in scenarios):
        meta["statuses_prefetch"] = args.statuses_prefetch
    return meta


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    args = parse_args(argv, description)
    scenarios = plan(args)
    meta = metadata(args, scenarios)
    print(
        f"bench: {', '.join(s.key for s in scenarios)}; {args.messages:,} messages, "
        f"{args.repeat} round(s); daemon log {args.log_level}",
        flush=True,
    )
    results: dict[str, list[Run]] = {}
    children = Children()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with (
            bench_vhost() as vhost,
            scratch_database(any(s.ledger for s in scenarios)) as database_url,
            tempfile.TemporaryDirectory(prefix="wa-bench-") as tmp,
        ):
            meta["vhost"] = vhost
            workdir = Path(tmp)
            if args.logs is not None:
                workdir = args.logs / vhost
                workdir.mkdir(parents=True)
            ctx = Context(args, amqp_url(vhost), workdir, children, None, database_url)
            try:
                run_loop(bench(ctx, scenarios, results))
            finally:
                children.stop_all()
    except (
        BenchError,
        aiormq.exceptions.AMQPError,
        aiohttp.ClientError,
        asyncpg.PostgresError,
        OSError,
    ) as exc:
        text = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        print(f"bench: {text}", file=sys.stderr)
        done = sum(len(runs) for runs in results.values())
        print(f"bench: failed after {done} completed measurement(s)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    report = summary(results, scenarios, meta)
    print()
    print(table(report))
    write_json(report, args.json)
    print(f"\nfigures written to {args.json}")
    return 1 if report["not_clean"] else 0
