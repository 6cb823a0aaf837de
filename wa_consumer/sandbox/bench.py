"""How many ``/messages`` requests per second the sandbox answers.

``python -m wa_consumer.sandbox.bench`` starts a sandbox in another process (request log
off, no rules, uvloop) and drives it from this one with an aiohttp client: ``--concurrency``
connections posting text messages for ``--seconds``. ``--url`` measures a sandbox that is
already running instead (its token is read from ``/_sandbox/tenants``). The figure is a
floor: on a small machine the client process may saturate before the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

import aiohttp

from wa_consumer.sandbox.client import SandboxClient


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_ready(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/_sandbox/stats") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)


async def drive(url: str, concurrency: int, seconds: float) -> tuple[int, Counter[int], float]:
    """(requests answered, count by HTTP status, elapsed seconds)."""
    async with SandboxClient(url) as admin:
        tenant = next(t for t in await admin.tenants() if not t["suspended"])
    endpoint = f"{url}/v23.0/{tenant['phoneNumberIds'][0]}/messages"
    headers = {"Authorization": f"Bearer {tenant['accessToken']}"}
    body = (
        b'{"messaging_product":"whatsapp","recipient_type":"individual","to":"27821234567",'
        b'"type":"text","text":{"body":"Your order is ready"}}'
    )
    headers["Content-Type"] = "application/json"
    statuses: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    start = time.monotonic()
    stop_at = start + seconds
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < stop_at:
                async with session.post(endpoint, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(statuses.values()), statuses, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print requests per second."""
    parser = argparse.ArgumentParser(prog="python -m wa_consumer.sandbox.bench")
    parser.add_argument("--url", help="a running sandbox (default: start one)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "wa_consumer.sandbox", "--port", str(port)]
        command += ["--no-request-log", "--no-rules"]
        # Fixed argv: this interpreter running our own module.
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
    try:
        import uvloop

        async def run() -> tuple[int, Counter[int], float]:
            await _wait_ready(url, time.monotonic() + 10)
            return await drive(url, args.concurrency, args.seconds)

        total, statuses, elapsed = uvloop.run(run())
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    print(
        f"{total} requests in {elapsed:.1f} s with {args.concurrency} connections: "
        f"{total / elapsed:,.0f} req/s  statuses {dict(statuses)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
