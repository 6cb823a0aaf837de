#!/usr/bin/env python3
"""The Cloud API transports side by side: requests/s and client CPU per request.

A local aiohttp server in a process of its own answers every POST with Meta's success JSON at
once (``--tls``: over HTTPS, its certificate signed by a CA made for the run and trusted
through the transports' ``ca_file``, as ``WA_GRAPH_CA_FILE``). This process sends ``--n``
POSTs with a bearer token from ``--concurrency`` tasks on uvloop through each transport
(``wa_consumer.transport``, built as the daemon builds it, its pool sized to the
concurrency), after a warm-up; the transports alternate within each round and their order
turns from round to round. CPU is this process's (``time.process_time``: every thread, the
tokio thread of pyreqwest included); the server's is not counted.

    .venv/bin/python scripts/transport_bench.py                 # 20,000 x 3 rounds, plain HTTP
    .venv/bin/python scripts/transport_bench.py --tls --json out.json

Reports each round, the medians, and pyreqwest / aiohttp ratios (of the medians, and the
range of the same ratio within each round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOKEN = "EAAG" + "x" * 200  # Meta's tokens are about 200 characters
PAYLOAD = json.dumps(
    {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "27821234567",
        "type": "text",
        "text": {"body": "Your order 4711 is ready for pick-up", "preview_url": False},
    }
).encode()
ANSWER = json.dumps(
    {
        "messaging_product": "whatsapp",
        "contacts": [{"input": "27821234567", "wa_id": "27821234567"}],
        "messages": [{"id": "wamid.HBgLMjc4MjEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}],
    }
).encode()
KINDS = ("aiohttp", "pyreqwest")


# -- the server (its own process) ------------------------------------------------------------


def serve(port: int, cert: str | None, key: str | None) -> None:
    import ssl

    import uvloop
    from aiohttp import web

    peers: set[Any] = set()

    async def messages(request: web.Request) -> web.Response:
        await request.read()
        transport = request.transport
        peers.add(transport.get_extra_info("peername") if transport else None)
        return web.Response(body=ANSWER, content_type="application/json")

    async def stats(request: web.Request) -> web.Response:
        body = {"connections": len(peers)}
        if request.query.get("reset"):
            peers.clear()
        return web.json_response(body)

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{version}/{number}/messages", messages)
        app.router.add_get("/_stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = None
        if cert and key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, backlog=1024)
        await site.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(main())


def local_ca(where: Path) -> tuple[Path, Path, Path]:
    """(CA PEM, server certificate, server key), made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("--tls needs the openssl command")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=where, check=True, capture_output=True, timeout=60)

    run(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key"),
        *("-out", "ca.pem", "-subj", "/CN=bench CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    run(
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr"),
        *("-subj", "/CN=localhost"),
    )
    (where / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    run(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext"),
    )
    return where / "ca.pem", where / "server.pem", where / "server.key"


# -- the client (this process) ---------------------------------------------------------------


async def stats(url: str, reset: bool = False) -> int:
    """Connections the server has seen since the last reset (over plain HTTP or not)."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/_stats", params={"reset": "1"} if reset else {}, ssl=False) as r,
    ):
        connections: int = (await r.json())["connections"]
    return connections


async def measure(kind: str, url: str, args: argparse.Namespace, ca: Path | None) -> dict[str, Any]:
    from wa_consumer.transport.aiohttp import AiohttpTransport
    from wa_consumer.transport.pyreqwest import PyreqwestTransport

    cls = AiohttpTransport if kind == "aiohttp" else PyreqwestTransport
    transport = cls(limit=args.concurrency, timeout=20.0, ca_file=ca)
    await transport.start()
    target = f"{url}/v23.0/106540352242922/messages"
    failed = 0

    async def burst(n: int) -> None:
        nonlocal failed
        left = n

        async def worker() -> None:
            nonlocal left, failed
            while left > 0:
                left -= 1
                status, _ = await transport.post(target, PAYLOAD, TOKEN)
                failed += status != 200

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    try:
        await burst(args.warmup)
        await stats(args.stats_url, reset=True)
        wall, cpu = time.perf_counter(), time.process_time()
        await burst(args.n)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        connections = await stats(args.stats_url)
    finally:
        await transport.close()
    if failed:
        raise SystemExit(f"{kind}: {failed} answers were not 200")
    return {
        "transport": kind,
        "requests": args.n,
        "seconds": wall,
        "req_s": args.n / wall,
        "cpu_us_per_request": cpu / args.n * 1e6,
        "cpu_cores": cpu / wall,
        "connections": connections,
    }


def ratio_line(
    name: str, medians: dict[str, dict[str, float]], rounds: list[dict[str, Any]]
) -> str:
    base, other = medians["aiohttp"][name], medians["pyreqwest"][name]
    per_round = [r["pyreqwest"][name] / r["aiohttp"][name] for r in rounds]
    return (
        f"  {name}: pyreqwest/aiohttp {other / base:.2f} (median over median; "
        f"within rounds {min(per_round):.2f}-{max(per_round):.2f})"
    )


async def client(args: argparse.Namespace, url: str, ca: Path | None) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        order = KINDS if number % 2 == 0 else KINDS[::-1]
        this: dict[str, Any] = {}
        for kind in order:
            this[kind] = result = await measure(kind, url, args, ca)
            print(
                f"  round {number + 1} {kind:<10} {result['req_s']:>8,.0f} req/s"
                f"  {result['cpu_us_per_request']:>6.1f} µs CPU/request"
                f"  {result['cpu_cores']:.2f} cores  {result['connections']} connections",
                flush=True,
            )
        rounds.append(this)
    medians = {
        kind: {
            key: statistics.median(r[kind][key] for r in rounds)
            for key in ("req_s", "cpu_us_per_request", "connections")
        }
        for kind in KINDS
    }
    print(f"\nmedians of {args.rounds} rounds, {args.n:,} requests, {args.concurrency} tasks:")
    for kind in KINDS:
        m = medians[kind]
        print(
            f"  {kind:<10} {m['req_s']:>8,.0f} req/s  {m['cpu_us_per_request']:>6.1f} µs"
            f" CPU/request  {m['connections']:.0f} connections"
        )
    print(ratio_line("req_s", medians, rounds))
    print(ratio_line("cpu_us_per_request", medians, rounds))
    return {"rounds": rounds, "medians": medians}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=200, help="tasks sending at once")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    parser.add_argument("--warmup", type=int, default=1_000, help="requests before each")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a CA made for the run")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server's port
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.cert, args.key)
        return 0

    import socket

    import uvloop

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="transport-bench-") as tmp:
        ca = cert = key = None
        command = [sys.executable, __file__, "--serve", str(port)]
        if args.tls:
            ca, cert, key = local_ca(Path(tmp))
            command += ["--cert", str(cert), "--key", str(key)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise SystemExit("the server did not start")
            scheme = "https" if args.tls else "http"
            url = f"{scheme}://127.0.0.1:{port}"
            args.stats_url = url
            print(
                f"transport bench: {args.n:,} POSTs x {args.rounds} rounds, {args.concurrency}"
                f" tasks, uvloop, {'HTTPS (local CA)' if args.tls else 'plain HTTP'}; server pid"
                f" {server.pid}; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            report = uvloop.run(client(args, url, ca))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
    report["settings"] = {
        "n": args.n,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "tls": args.tls,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
