"""Meta's side of ``wa-consumer webhook`` for tests: signed POSTs, one at a time or a burst.

::

    statuses = await burst(f"http://127.0.0.1:{port}/webhook", bodies, b"app-secret")
    assert statuses == [200] * len(bodies)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from wa_consumer.webhooks.signature import HEADER, sign

#: What a request that got no HTTP answer (refused, cut, timed out) counts as.
NO_ANSWER = 0


async def post_signed(
    session: aiohttp.ClientSession, url: str, body: bytes, secret: bytes | None
) -> int:
    """POST ``body`` signed with ``secret`` (None: unsigned); the status, or ``NO_ANSWER``."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[HEADER] = sign(body, secret)
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return NO_ANSWER


async def burst(
    url: str,
    bodies: Sequence[bytes],
    secret: bytes,
    *,
    concurrency: int = 200,
    timeout: float = 30.0,
) -> list[int]:
    """POST every body at once, ``concurrency`` connections wide; statuses in order."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        return list(
            await asyncio.gather(*(post_signed(session, url, body, secret) for body in bodies))
        )
