"""The adaptive back-off's steady state against each way a Cloud API may count its limit.

For each kind in ``--kinds`` (the sandbox's ``number_rate_window``: ``token_bucket``,
``sliding``, ``fixed``) and each round: a sandbox in a process of its own allowing
``--allowed`` sends/s (30) from one number, counted that way and answering 130429 past it;
``python -m wa_consumer run`` (``--daemons`` of them, sharing ``--redis`` when given) set to
``--daemon-rate`` (80/s, Meta's default) with a backlog it cannot finish within the run, so
it always has a message to send. The run lasts ``--seconds`` (60) on the sandbox's clock from
its first request; then, from the sandbox's request log, over the last ``--steady`` seconds
(40):

steady     sends accepted per second (on the sandbox's clock), and that over the allowed rate;
130429     share of the requests in that span answered 130429;
first 3 s  130429 answers in the first three seconds (the daemon learning the limit);
adaptive   the rate the daemon books at (``wa_limiter_rate``, sampled 4 times a second) in
           that span: mean, min, max; cuts: its ``number_rate_lowered`` log lines there.

Each figure is printed per round, then the median per kind; ``--json`` keeps them all. Runs
in a RabbitMQ vhost of its own (``rabbitmqctl``), removed at the end.

    .venv/bin/python scripts/adaptive_bench.py
    .venv/bin/python scripts/adaptive_bench.py --kinds sliding --repeat 3 --latency-ms 100
    .venv/bin/python scripts/adaptive_bench.py --daemons 2 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
from benchlib.broker import bench_vhost, unique_names
from benchlib.common import free_port

from wa_consumer.publisher import Publisher, text_message
from wa_consumer.settings import Settings
from wa_consumer.topology import Topology, declare

NUMBER = "106540352242922"  # the sandbox's tenant acme, its first number
KINDS = ("token_bucket", "sliding", "fixed")
FIRST_SECONDS = 3.0


class Children:
    """The processes this run started; each stopped by its own pid on the way out."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=self.workdir,  # no .env is read there
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def stop_all(self) -> None:
        for process in self.processes:
            self.stop(process)


def daemon_env(values: dict[str, Any]) -> dict[str, str]:
    """This environment without any ``WA_`` variable, plus ``values`` as ``WA_<NAME>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WA_")}
    for name, value in values.items():
        text = orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)
        env[f"WA_{name.upper()}"] = text
    return env


async def poll(check: Any, seconds: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            if result := await check():
                return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def sample_rates(session: aiohttp.ClientSession, ports: list[int], out: list[Any]) -> None:
    """``(time, [rate of each daemon])`` four times a second, from ``wa_limiter_rate``."""
    while True:
        rates = []
        for port in ports:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    for line in (await response.text()).splitlines():
                        if line.startswith(f'wa_limiter_rate{{phone_number_id="{NUMBER}"}}'):
                            rates.append(float(line.rsplit(" ", 1)[1]))
        if rates:
            out.append((time.time(), rates))
        await asyncio.sleep(0.25)


def cuts_in(log: Path, start: float, end: float) -> list[float]:
    """The rates the daemon cut to (``number_rate_lowered``) between ``start`` and ``end``."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"number_rate_lowered"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            record = json.loads(line)
            at = datetime.fromisoformat(record["timestamp"]).timestamp()
            if start <= at < end:
                found.append(float(record["rate"]))
    return found


async def one_run(
    kind: str, args: argparse.Namespace, amqp_url: str, workdir: Path
) -> dict[str, Any]:
    children = Children(workdir)
    try:
        return await _measure(kind, args, amqp_url, workdir, children)
    finally:
        children.stop_all()


async def _measure(
    kind: str, args: argparse.Namespace, amqp_url: str, workdir: Path, children: Children
) -> dict[str, Any]:
    port = free_port()
    sandbox_url = f"http://127.0.0.1:{port}"
    config = {
        "number_rates": {NUMBER: args.allowed},
        "number_rate_window": kind,
        "rules": [],
        "latency": {"ms": args.latency_ms, "jitter_ms": args.jitter_ms},
        "max_requests": 1_000_000,
    }
    (workdir / "sandbox.json").write_text(json.dumps(config))
    sandbox_cmd = [sys.executable, "-m", "wa_consumer.sandbox", "--port", str(port)]
    children.spawn("sandbox", [*sandbox_cmd, "--config", "sandbox.json"], dict(os.environ))

    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        **unique_names(),
        "graph_api_url": sandbox_url,
        "tenant_service_url": sandbox_url,
        "number_rate": args.daemon_rate,
        "log_level": "INFO",
        "log_format": "json",
    }
    if args.redis:
        values["redis_url"] = args.redis
        values["redis_prefix"] = f"wa-adaptive-{secrets.token_hex(4)}:"
    settings = Settings(_env_file=None, **{k: v for k, v in values.items()})

    async with http() as session:
        await poll(lambda: _ok(session, f"{sandbox_url}/_sandbox/stats"), 20, "sandbox start")
        connection = await aio_pika.connect(amqp_url)
        try:
            await declare(connection, Topology.from_settings(settings))
            publisher = Publisher(
                connection,
                exchange=settings.exchange,
                routing_key_prefix=settings.routing_key_prefix,
            )
            batch = [
                text_message("acme", f"1666{i:07d}", "hello", phone_number_id=NUMBER)
                for i in range(args.messages)
            ]
            results = await publisher.publish_many(batch)
            await publisher.close()
            assert all(r.ok for r in results), "publish failed"
        finally:
            await connection.close()

        metrics_ports = [free_port() for _ in range(args.daemons)]
        daemons = [
            children.spawn(
                f"daemon{i}",
                [sys.executable, "-m", "wa_consumer", "run"],
                daemon_env({**values, "metrics_port": metrics_ports[i]}),
            )
            for i in range(args.daemons)
        ]
        rates: list[Any] = []
        sampler = asyncio.create_task(sample_rates(session, metrics_ports, rates))
        try:
            first = await poll(lambda: _first_at(session, sandbox_url), 60, "first request")
            end = first + args.seconds
            while time.time() < end + 0.2:
                if any(d.poll() is not None for d in daemons):
                    raise RuntimeError(f"a daemon exited early: see {workdir}/daemon*.log")
                await asyncio.sleep(0.2)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        for daemon in daemons:
            children.stop(daemon)
        log = await _requests(session, sandbox_url)

    start = end - args.steady
    span = [r for r in log if start <= r["at"] < end]
    accepted = sum(r["outcome"] == "sent" for r in span)
    limited = sum(r["code"] == 130429 for r in span)
    early = sum(r["code"] == 130429 for r in log if r["at"] < first + FIRST_SECONDS)
    in_span = [statistics.fmean(r) for t, r in rates if start <= t < end]
    cuts = [c for i in range(args.daemons) for c in cuts_in(workdir / f"daemon{i}.log", start, end)]
    steady = accepted / args.steady
    return {
        "kind": kind,
        "steady_rate": round(steady, 2),
        "of_allowed": round(steady / args.allowed, 3),
        "share_130429": round(limited / max(len(span), 1), 4),
        "requests": len(span),
        "first_130429": early,
        "adaptive_mean": round(statistics.fmean(in_span), 2) if in_span else None,
        "adaptive_min": round(min(in_span), 2) if in_span else None,
        "adaptive_max": round(max(in_span), 2) if in_span else None,
        "cuts": len(cuts),
        "cut_to_mean": round(statistics.fmean(cuts), 2) if cuts else None,
    }


async def _ok(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.get(url) as response:
        return response.status == 200


async def _first_at(session: aiohttp.ClientSession, url: str) -> float | None:
    async with session.get(f"{url}/_sandbox/requests", params={"since": "0"}) as response:
        found = (await response.json())["requests"]
    return float(found[0]["at"]) if found else None


async def _requests(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    since = 0
    while True:
        async with session.get(f"{url}/_sandbox/requests", params={"since": str(since)}) as r:
            page = await r.json()
        if not page["requests"]:
            return out
        out.extend(page["requests"])
        since = page["last"]


def show(row: dict[str, Any]) -> str:
    return (
        f"{row['kind']:>12}  steady {row['steady_rate']:6.2f}/s ({row['of_allowed']:.0%} of "
        f"allowed)  130429 {row['share_130429']:6.2%} of {row['requests']}  "
        f"first {FIRST_SECONDS:.0f} s: {row['first_130429']:3d}  adaptive mean "
        f"{row['adaptive_mean']} [{row['adaptive_min']}, {row['adaptive_max']}]  "
        f"cuts {row['cuts']} (to {row['cut_to_mean']} on average)"
    )


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with bench_vhost() as vhost:
        amqp_url = f"{args.amqp.rstrip('/')}/{vhost}"
        for round_no in range(1, args.repeat + 1):
            for kind in args.kinds:
                with tempfile.TemporaryDirectory(prefix="adaptive-bench-") as tmp:
                    workdir = Path(args.keep) / f"{kind}-{round_no}" if args.keep else Path(tmp)
                    workdir.mkdir(parents=True, exist_ok=True)
                    row = await one_run(kind, args, amqp_url, workdir)
                row["round"] = round_no
                rows.append(row)
                print(f"round {round_no}: {show(row)}", flush=True)
    print(
        f"\nallowed {args.allowed:g}/s ({args.latency_ms:g} ms latency), daemon "
        f"{args.daemon_rate:g}/s x{args.daemons}{' (Redis)' if args.redis else ''}, "
        f"steady = the last {args.steady:g} of {args.seconds:g} s; medians of {args.repeat}:"
    )
    for kind in args.kinds:
        mine = [r for r in rows if r["kind"] == kind]
        steady = statistics.median(r["steady_rate"] for r in mine)
        share = statistics.median(r["share_130429"] for r in mine)
        spread = ", ".join(f"{r['steady_rate']:.2f}" for r in mine)
        print(
            f"{kind:>12}  steady {steady:6.2f}/s ({steady / args.allowed:.0%}; rounds: {spread})"
            f"  130429 {share:.2%}"
        )
    return rows


def main() -> int:
    args = parse()
    rows = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated")
    parser.add_argument("--allowed", type=float, default=30.0, help="sends/s the sandbox allows")
    parser.add_argument("--daemon-rate", type=float, default=80.0, help="WA_NUMBER_RATE")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--steady", type=float, default=40.0, help="the last part measured")
    parser.add_argument("--messages", type=int, help="backlog (default: 1.5 x all it may send)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="sandbox answer delay")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="plus uniform 0..jitter")
    parser.add_argument("--daemons", type=int, default=1)
    parser.add_argument("--redis", help="WA_REDIS_URL shared by the daemons")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--keep", help="keep each run's logs under this directory")
    args = parser.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    if unknown := set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if not 0 < args.steady <= args.seconds:
        parser.error("--steady must be within --seconds")
    if args.messages is None:
        args.messages = int(1.5 * args.allowed * args.seconds) + 500
    return args


if __name__ == "__main__":
    sys.exit(main())
