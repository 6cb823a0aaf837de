"""The ``statuses`` scenario: how many statuses/s the daemon's status consumer applies.

Before the clock, for each measurement: its messages are written to the run's scratch ledger
as the daemon leaves a send (``bodies.ledger_rows``: ``wa_messages`` sent, ``wa_deliveries``
accepted; by COPY after the ledger's migrations, then ANALYZE), under a tenant of its own, and
its N webhook bodies are published with confirms into the webhook queue of a topology of its
own. Then ``python -m wa_consumer run`` starts on that ledger with its own defaults (statuses
on, ``WA_STATUSES_BATCH_SECONDS``) but ``WA_STATUSES_PREFETCH`` (``--statuses-prefetch``, by
default the daemon's own) and with an empty outbound queue.

The clock runs from its status consumer's appearance on the webhook queue until every row has
taken every step its statuses give it and the queue is empty. Each status moves a row one step
(accepted -> sent -> delivered -> read), so the sum of the rows' steps, read every 100 ms with
one indexed query, counts the statuses applied; the moment of the last is interpolated between
two reads, as the daemon scenarios do with sends. That query runs on the same PostgreSQL: its
CPU is in ``postgres``, and so is that of any other client of the server.

Clean: the daemon exits 0 on SIGTERM, every queue of the topology is then empty (so every body
was acked, none sent to the failed queue), every row is in the status its last webhook gives it,
and the daemon logged no warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
import asyncpg

from wa_consumer.ledger.migrate import migrate

from .bodies import DELIVERY_COLUMNS, MESSAGE_COLUMNS, STEPS, Traffic, ledger_rows, traffic
from .broker import declare_topology, depth, leftovers, publish_confirmed
from .common import (
    BenchError,
    Deadline,
    bounded,
    close_quietly,
    crossing,
    free_port,
    per_unit,
    rates,
)
from .measure import POLL_DRAIN, Context, Run, consumer_on
from .procs import CpuMeter, Daemons, GroupCpu, broker_pid, machine_cpu_seconds, pid_cpu
from .scenarios import NO_SANDBOX, NUMBER_RATE, Scenario, daemon_env, make_settings, overrides

_ROWS = "SELECT status, count(*) AS n FROM wa_deliveries WHERE tenant_id = $1 GROUP BY status"


async def seed(connection: asyncpg.Connection[Any], made: Traffic) -> None:
    """The measurement's messages, sent, in the ledger (its schema first, if still missing)."""
    messages, deliveries = ledger_rows(made)
    try:
        await bounded(migrate(connection), 60, "ledger migrations")
        await bounded(
            connection.copy_records_to_table(
                "wa_messages", records=messages, columns=MESSAGE_COLUMNS
            ),
            120,
            "copy wa_messages",
        )
        await bounded(
            connection.copy_records_to_table(
                "wa_deliveries", records=deliveries, columns=DELIVERY_COLUMNS
            ),
            120,
            "copy wa_deliveries",
        )
        await bounded(connection.execute("ANALYZE wa_messages, wa_deliveries"), 120, "analyze")
    except asyncpg.PostgresError as exc:
        raise BenchError(f"seeding the ledger: {exc}") from None


async def rows(connection: asyncpg.Connection[Any], tenant: str) -> dict[str, int]:
    """The measurement's ``wa_deliveries`` rows by status."""
    try:
        found = await bounded(connection.fetch(_ROWS, tenant), 10, "ledger rows")
    except asyncpg.PostgresError as exc:
        raise BenchError(f"reading the ledger: {exc}") from None
    return {str(r["status"]): int(r["n"]) for r in found}


def steps(counts: dict[str, int]) -> int:
    """The rows' steps from ``accepted`` (``failed`` or anything else: none)."""
    return sum(STEPS.index(s) * n for s, n in counts.items() if s in STEPS)


async def run_statuses(scenario: Scenario, round_no: int, ctx: Context) -> Run:
    n = ctx.args.messages
    what = f"{scenario.key} round {round_no}"
    if ctx.database_url is None:
        raise BenchError(f"{what}: no scratch database")
    made = traffic(n)
    total = made.statuses
    values = overrides(scenario, ctx.args, ctx.amqp_url, NO_SANDBOX, ctx.database_url)
    values |= {
        "database_url": ctx.database_url,
        "metrics_port": free_port(),  # /metrics on, as deployed
        "log_level": ctx.args.log_level,
        "log_format": "json",
        NUMBER_RATE: 0.0,
        "statuses_prefetch": scenario.prefetch,
    }
    settings = make_settings(values)
    ledger = await bounded(asyncpg.connect(ctx.database_url, timeout=10), 15, "ledger database")
    admin = await bounded(aio_pika.connect(ctx.amqp_url, timeout=10), 15, "connect")
    try:
        await seed(ledger, made)
        await declare_topology(admin, settings)
        _, _, filled = await publish_confirmed(
            admin,
            settings.webhook_exchange,
            settings.webhook_routing_key,
            made.bodies,
            scenario.prefetch,
            ctx.args.deadline,
        )

        spawned = time.perf_counter()
        log = ctx.workdir / f"daemon-{scenario.key}-{round_no}.log"
        daemon = Daemons([daemon_env(values)], log, ctx.children)
        print(f"  ({what}: daemon pid {daemon.pid}, log {log})", flush=True)
        meter = CpuMeter(
            {
                "daemon": daemon.cpu(),
                "daemon_system": daemon.cpu(system_only=True),
                "broker": pid_cpu(broker_pid()),
                "postgres": GroupCpu("postgres"),
                "machine": machine_cpu_seconds,
            }
        )
        await consumer_on(admin, settings.webhook_queue, n, daemon, what, ctx)
        started = time.perf_counter()
        meter.start()
        rss_start = daemon.sample_rss()

        samples: list[tuple[float, int]] = [(started, 0)]
        deadline = Deadline(ctx.args.deadline, f"{what}: drain")
        stalled, progressed = "", started
        while True:
            await asyncio.sleep(POLL_DRAIN)
            daemon.alive(what)
            applied = steps(await rows(ledger, made.tenant))
            now = time.perf_counter()
            if applied != samples[-1][1]:
                progressed = now
            samples.append((now, applied))
            daemon.sample_rss()
            ready, _ = await depth(admin, settings.webhook_queue)
            if applied >= total and ready == 0:
                break
            if now - progressed > ctx.args.stall:
                stalled = (
                    f"stalled: {applied:,} of {total:,} statuses applied, {ready:,} bodies"
                    f" ready, none for {ctx.args.stall:.0f} s"
                )
                break
            if deadline.passed:
                raise deadline.missed(f"{applied:,} of {total:,} statuses applied, {ready:,} ready")
        meter.stop()
        peak = daemon.peak_rss_kb()
        stopped = await daemon.stop(settings.shutdown_grace_seconds + 15, what)
        left = {q: count for q, count in (await leftovers(admin, settings)).items() if count}
        final = await rows(ledger, made.tenant)
    finally:
        await close_quietly(admin)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ledger.close(), 10)

    problems = [stalled] if stalled else []
    if final != made.final:
        problems.append(f"the ledger's rows end as {final}, {made.final} expected")
    if left:
        problems.append(f"left in queues after the stop: {left}")
    logged = daemon.log_stats()
    if logged.warnings:
        problems.append(f"the daemon logged warnings or errors: {logged.warnings}")
    for problem in problems:
        print(f"  {what}: NOT CLEAN, excluded from the medians: {problem}", flush=True)
    done = min(total, samples[-1][1])  # total, unless it stalled
    seconds = crossing(samples, done) - started
    t10, t90 = (crossing(samples, share * total) - started for share in (0.1, 0.9))
    rate, steady = rates(done, t10, t90, seconds)
    return Run(
        scenario=scenario.key,
        round=round_no,
        messages=n,
        seconds=seconds,
        rate=rate,
        steady_rate=steady,
        prefill_rate=n / filled,
        cpu=meter.shares,
        pid=daemon.pid,
        startup_seconds=started - spawned,
        shutdown_seconds=stopped,
        max_rss_mb=daemon.max_rss_kb / 1024,
        peak_rss_mb=peak / 1024 if peak else None,
        rss_at_start_mb=rss_start / 1024,
        log_lines=logged.lines,
        log_bytes=logged.bytes,
        log_outcomes=logged.outcomes,
        log_warnings=logged.warnings,
        ledger=final,
        problems=problems,
        unit="status",
        units=total,
        cpu_us=per_unit(meter.used, total),
        detail={
            "bodies_per_s": n / seconds,
            "statuses_per_body": total / n,
            "messages": len(made.sends),
            "prefetch": settings.statuses_prefetch,
            "batch_seconds": settings.statuses_batch_seconds,
        },
    )
