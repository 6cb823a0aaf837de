"""Meta's side of the ``webhooks`` scenario, in a process of its own (not on the bench's loop).

    python -P scripts/benchlib/loadgen.py URL BODIES --concurrency 200

``BODIES`` holds one JSON body a line; the app secret comes in ``WA_BENCH_SECRET``. Before the
timed part it reads and signs every body (``X-Hub-Signature-256``, as Meta signs them) and
opens its keep-alive connections, then prints ``ready`` and waits for a line on stdin. Then it
POSTs every body once, ``--concurrency`` requests in flight, and prints one JSON line: the
answers by HTTP status (0: none: refused, cut or timed out), the seconds from the first request
to the last answer, and when 10% and 90% of the answers had come.

Run as a file (``-P``: the bench's modules do not shadow anything), it imports only the
package's ``sign``, the function the tests' webhook client uses too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import uvloop

from wa_consumer.webhooks.signature import HEADER, sign

TIMEOUT = 30.0  # seconds for one request


Signed = list[tuple[bytes, dict[str, str]]]


def signed_bodies(path: Path, secret: bytes) -> Signed:
    return [
        (body, {"Content-Type": "application/json", HEADER: sign(body, secret)})
        for body in path.read_bytes().splitlines()
    ]


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes | None, headers: dict[str, str]
) -> int:
    """The answer's HTTP status, or 0 for none; ``body`` None: a GET."""
    method = "GET" if body is None else "POST"
    try:
        async with session.request(method, url, data=body, headers=headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def main(url: str, signed: Signed, concurrency: int) -> None:
    n = len(signed)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # The connections open before the clock starts: all at once, then kept alive.
        health = url.rsplit("/", 1)[0] + "/healthz"
        opened = await asyncio.gather(
            *(post(session, health, None, {}) for _ in range(concurrency))
        )
        if set(opened) != {200}:
            raise SystemExit(f"loadgen: {health} answered {sorted(set(opened))}")
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(f"loadgen: expected 'go', got {line!r}")

        answers: Counter[int] = Counter()
        marks: dict[int, float] = {}
        mark_at = {n // 10, (9 * n) // 10, n}
        pending = iter(signed)

        async def worker() -> None:
            for body, headers in pending:  # one iterator for all: each body once
                answers[await post(session, url, body, headers)] += 1
                done = answers.total()
                if done in mark_at:
                    marks[done] = time.perf_counter()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = {
        "requests": n,
        "answers": {str(status): count for status, count in sorted(answers.items())},
        "seconds": marks[n] - started,
        "t10": marks.get(n // 10, started) - started,
        "t90": marks.get((9 * n) // 10, marks[n]) - started,
    }
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="loadgen.py")
    parser.add_argument("url")
    parser.add_argument("bodies", type=Path)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    signed = signed_bodies(args.bodies, os.environ["WA_BENCH_SECRET"].encode())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.url, signed, args.concurrency))
