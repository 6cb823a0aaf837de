"""The ``webhooks`` scenario: how many webhooks/s ``wa-consumer webhook`` accepts.

Each round, over the same N new bodies (``bodies.traffic``):

floor
    The bodies published straight to the broker from one aio-pika channel in this process,
    exactly as the receiver publishes each (persistent, ``mandatory``, confirmed),
    ``--webhook-concurrency`` awaiting their confirms at a time: the most the receiver could
    do, since it does that plus HTTP and the signature check. Timed from the first publish to
    the last confirm.
receiver
    ``python -m wa_consumer webhook`` with names of its own, the app secret and a free port;
    the load generator (``loadgen.py``, a process of its own) POSTs every body signed, as many
    requests in flight, on connections it opened before the clock. Timed by the load generator
    from its first request to its last answer; CPU counted over that window.

Each side's queue must then hold exactly N bodies (fewer: a 200 for a body that was lost;
more: a body published twice), every answer must be a 200, and the receiver must log no
warning and exit 0 on SIGTERM; otherwise the round is not clean. The load generator, the
broker and the receiver share this machine's cores: the client's own CPU is in the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

from .bodies import traffic
from .broker import declare_topology, depth, publish_confirmed, purge
from .common import (
    BenchError,
    Deadline,
    bounded,
    close_quietly,
    free_port,
    per_unit,
    rates,
    tail,
)
from .measure import Context, Run
from .procs import CpuMeter, Daemon, broker_pid, machine_cpu_seconds, pid_cpu
from .scenarios import NO_SANDBOX, Scenario, daemon_env, make_settings, overrides

LOADGEN = Path(__file__).with_name("loadgen.py")


async def floor(scenario: Scenario, ctx: Context, bodies: list[bytes]) -> dict[str, Any]:
    """The publish-with-confirms floor over ``bodies``, in a topology of its own."""
    settings = make_settings(overrides(scenario, ctx.args, ctx.amqp_url, NO_SANDBOX, None))
    admin = await bounded(aio_pika.connect(ctx.amqp_url, timeout=10), 15, "connect")
    try:
        await declare_topology(admin, settings)
        meter = CpuMeter(
            {
                "bench": time.process_time,
                "broker": pid_cpu(broker_pid()),
                "machine": machine_cpu_seconds,
            }
        )
        meter.start()
        t10, t90, seconds = await publish_confirmed(
            admin,
            settings.webhook_exchange,
            settings.webhook_routing_key,
            bodies,
            scenario.prefetch,
            ctx.args.deadline,
        )
        meter.stop()
        queued, _ = await depth(admin, settings.webhook_queue)
        await purge(admin, settings.webhook_queue)
    finally:
        await close_quietly(admin)
    n = len(bodies)
    rate, steady = rates(n, t10, t90, seconds)
    problems = [] if queued == n else [f"{queued:,} in its queue for {n:,} confirmed"]
    return {
        "rate": rate,
        "steady_rate": steady,
        "seconds": seconds,
        "cpu": meter.shares,
        "cpu_us": per_unit(meter.used, n),
        "queued": queued,
        "problems": problems,
    }


async def ready(receiver: Daemon, port: int, what: str, seconds: float) -> None:
    """Until ``/readyz`` says 200 (connected, topology declared, channel open)."""
    deadline = Deadline(seconds, f"{what}: receiver start")
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            receiver.alive(what)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            if deadline.passed:
                raise deadline.missed(f"{url} not ready\n{tail(receiver.log)}")
            await asyncio.sleep(0.05)


async def load(
    url: str,
    bodies_file: Path,
    concurrency: int,
    secret: str,
    log: Path,
    readers: dict[str, Callable[[], float | None]],
    seconds: float,
) -> tuple[dict[str, Any], CpuMeter]:
    """Run the load generator: its result, and the CPU of ``readers`` and of the client
    from its go to its answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    env["WA_BENCH_SECRET"] = secret
    command = [str(LOADGEN), url, str(bodies_file), "--concurrency", str(concurrency)]
    with log.open("wb") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            *command,
            env=env,
            cwd=log.parent,
            start_new_session=True,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    assert process.stdin is not None
    assert process.stdout is not None
    meter = CpuMeter({**readers, "client": pid_cpu(process.pid)})
    try:
        line = await bounded(process.stdout.readline(), 120, "load generator start")
        if line.strip() != b"ready":
            raise BenchError(f"load generator: {line[:200]!r}\n{tail(log)}")
        meter.start()
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        line = await bounded(process.stdout.readline(), seconds, "load generator")
        meter.stop()
        if not line:
            raise BenchError(f"load generator exited with nothing to say:\n{tail(log)}")
        result: dict[str, Any] = orjson.loads(line)
        code = await bounded(process.wait(), 30, "load generator exit")
        if code != 0:
            raise BenchError(f"load generator exited with {code}:\n{tail(log)}")
        return result, meter
    finally:
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)


async def run_webhooks(scenario: Scenario, round_no: int, ctx: Context) -> Run:
    n = ctx.args.messages
    what = f"{scenario.key} round {round_no}"
    bodies = traffic(n).bodies
    bodies_file = ctx.workdir / f"webhooks-{round_no}.jsonl"
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    floor_figures = await floor(scenario, ctx, bodies)

    secret = secrets.token_hex(16)
    port = free_port()
    values = overrides(scenario, ctx.args, ctx.amqp_url, NO_SANDBOX, None)
    values |= {
        "webhook_app_secret": secret,
        "webhook_host": "127.0.0.1",
        "webhook_port": port,
        "log_level": ctx.args.log_level,
        "log_format": "json",
    }
    settings = make_settings(values)
    admin = await bounded(aio_pika.connect(ctx.amqp_url, timeout=10), 15, "connect")
    try:
        await declare_topology(admin, settings)
        log = ctx.workdir / f"receiver-{round_no}.log"
        spawned = time.perf_counter()
        receiver = Daemon(daemon_env(values), log, ctx.children, command="webhook")
        print(f"  ({what}: receiver pid {receiver.pid}, log {log})", flush=True)
        await ready(receiver, port, what, ctx.args.deadline)
        startup = time.perf_counter() - spawned
        rss_start = receiver.sample_rss()
        readers: dict[str, Callable[[], float | None]] = {
            "receiver": pid_cpu(receiver.pid),
            "receiver_system": pid_cpu(receiver.pid, system_only=True),
            "broker": pid_cpu(broker_pid()),
            "machine": machine_cpu_seconds,
        }
        result, meter = await load(
            f"http://127.0.0.1:{port}{settings.webhook_path}",
            bodies_file,
            scenario.prefetch,
            secret,
            ctx.workdir / f"loadgen-{round_no}.log",
            readers,
            ctx.args.deadline,
        )
        bodies_file.unlink()  # the bodies are in the queue now; megabytes not worth keeping
        receiver.sample_rss()
        peak = receiver.peak_rss_kb()
        queued, _ = await depth(admin, settings.webhook_queue)
        stopped = await receiver.stop(settings.shutdown_grace_seconds + 15, what)
        await purge(admin, settings.webhook_queue)
    finally:
        await close_quietly(admin)

    answers: dict[str, int] = result["answers"]
    accepted = answers.get("200", 0)
    problems = [f"floor: {p}" for p in floor_figures["problems"]]
    if accepted != n:
        problems.append(f"{accepted:,} of {n:,} answered 200 (answers by status {answers})")
    if queued != n:
        problems.append(f"{queued:,} bodies in the queue for {n:,} sent, {accepted:,} accepted")
    logged = receiver.log_stats()
    if logged.warnings:
        problems.append(f"the receiver logged warnings or errors: {logged.warnings}")
    for problem in problems:
        print(f"  {what}: NOT CLEAN, excluded from the medians: {problem}", flush=True)
    seconds = float(result["seconds"])
    rate, steady = rates(accepted, float(result["t10"]), float(result["t90"]), seconds)
    return Run(
        scenario=scenario.key,
        round=round_no,
        messages=n,
        seconds=seconds,
        rate=rate,
        steady_rate=steady,
        prefill_rate=None,
        cpu=meter.shares,
        pid=receiver.pid,
        startup_seconds=startup,
        shutdown_seconds=stopped,
        max_rss_mb=receiver.max_rss_kb / 1024,
        peak_rss_mb=peak / 1024 if peak else None,
        rss_at_start_mb=rss_start / 1024,
        log_lines=logged.lines,
        log_bytes=logged.bytes,
        log_warnings=logged.warnings,
        problems=problems,
        unit="webhook",
        units=n,
        cpu_us=per_unit(meter.used, n),
        floor=floor_figures,
        detail={"answers": answers, "queued": queued, "concurrency": scenario.prefetch},
    )
