"""The demo's run: sandbox and daemon in this process, the samples published, every message
followed to its end, then the daemon stopped and the dead-letter queue read.

A message has reached its end when the sandbox has accepted it (its request log) or when it
is in the dead-letter queue; the progress bar counts both, so the wait ends by condition,
bounded by a timeout. With a ledger of its own, the run then waits (bounded too) for the
delivery statuses of what the sandbox accepted (``statuses``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractConnection
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..consumer import Daemon
from ..errors import WaConsumerError
from ..message import CALLBACK_KEY
from ..publisher import Publisher
from ..sandbox import RunningSandbox, SandboxConfig, start_sandbox
from ..settings import Settings
from ..topology import connect
from . import queues
from .queues import DeadLetter
from .samples import Sample
from .scratch import ScratchLedger
from .statuses import WAIT_SECONDS, StatusFindings, StatusLoop

START_TIMEOUT = 20.0
POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class Findings:
    """What the run left behind, for the report."""

    settings: Settings
    sandbox_url: str
    requests: list[dict[str, Any]]
    dead: list[DeadLetter]
    left: dict[str, int]
    """Messages still in the main queue and the wait queues after the daemon stopped."""
    daemon_exit: int | None
    timed_out: bool
    statuses: StatusFindings | None = None
    """Delivery statuses in the scratch ledger; None when the demo ran without one."""


def _key(payload: Any) -> bytes:
    # The daemon adds the callback data a status webhook ties back with; samples have none.
    if isinstance(payload, dict) and CALLBACK_KEY in payload:
        payload = {k: v for k, v in payload.items() if k != CALLBACK_KEY}
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


class Tally:
    """Each sample's requests in the sandbox's log, found by their body (sent unchanged)."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self._index = {_key(s.payload): i for i, s in enumerate(samples) if s.payload is not None}
        self.attempts = [0] * len(samples)
        self.sends = [0] * len(samples)
        self.unknown = 0
        self._seen = 0

    def update(self, requests: Sequence[dict[str, Any]]) -> None:
        for request in requests:
            self._seen = max(self._seen, request["seq"])
            i = self._index.get(_key(request["body"]))
            if i is None:
                self.unknown += 1
                continue
            self.attempts[i] += 1
            if request["outcome"] == "sent":
                self.sends[i] += 1

    def follow(self, sandbox: RunningSandbox) -> None:
        """Read the requests logged since the last call."""
        self.update(sandbox.state.requests(self._seen))

    @property
    def sent(self) -> int:
        return sum(1 for n in self.sends if n)


async def tour(
    settings: Settings,
    samples: Sequence[Sample],
    console: Console,
    wait_seconds: float,
    *,
    scratch: ScratchLedger | None = None,
    keep: bool = False,
) -> Findings:
    """Run the whole demo; raises ``WaConsumerError`` when the broker or daemon cannot start.

    With a ``scratch`` ledger, the sandbox's status webhooks go through the receiver to it.
    """
    async with contextlib.AsyncExitStack() as stack:
        hooks: StatusLoop | None = None
        config: SandboxConfig | None = None
        if scratch is not None:  # closed last: the sandbox stops posting before it stops
            hooks = await stack.enter_async_context(StatusLoop(settings, scratch, keep=keep))
            settings, config = hooks.settings, hooks.sandbox_config()
        sandbox = await stack.enter_async_context(await start_sandbox(port=0, config=config))
        settings = settings.model_copy(
            update={
                "graph_api_url": sandbox.url,
                "tenant_service_url": sandbox.url,
                "tenant_service_token": None,
                "static_credentials": {},
            }
        )
        console.print(f"  sandbox     {sandbox.url} (Cloud API and tenant service stand-in)")
        if hooks is not None:
            console.print(
                f"  webhooks    {hooks.url} (receiver: the sandbox posts a signed status "
                "webhook for each message it accepted)",
                highlight=False,
            )
        daemon = Daemon(settings)
        task = await _start(daemon)
        exit_code: int | None = None
        statuses_timed_out = False
        try:
            console.print(
                f"  daemon      consuming {settings.queue}; retries after "
                f"{', '.join(f'{d:g} s' for d in settings.retry_delays)}, "
                f"at most {settings.max_retries}"
                + ("; statuses into the ledger" if hooks is not None else "")
            )
            connection = await connect(settings.amqp_url)
            try:
                await _publish(connection, settings, samples)
                raw = sum(s.raw for s in samples)
                console.print(
                    f"published {len(samples)} messages ({len(samples) - raw} through the "
                    f"Publisher, {raw} raw, as a faulty producer would)\n"
                )
                tally = Tally(samples)
                timed_out = not await _follow(
                    connection, settings, sandbox, tally, console, wait_seconds
                )
                if hooks is not None:
                    statuses_timed_out = not await hooks.wait(sandbox, console, WAIT_SECONDS)
                exit_code = await _stop(daemon, task)
                dead = await queues.drain(connection, settings.dead_letter_queue)
                left = await queues.left(connection, settings)
            finally:
                await connection.close()
        finally:
            if not task.done():
                await _stop(daemon, task)
        # Read once the daemon has stopped: the statuses in its hands are written by then.
        statuses = None
        if hooks is not None:
            statuses = await hooks.collect(sandbox, timed_out=statuses_timed_out)
        return Findings(
            settings,
            sandbox.url,
            sandbox.state.requests(),
            dead,
            left,
            exit_code,
            timed_out,
            statuses,
        )


async def _start(daemon: Daemon) -> asyncio.Task[int]:
    """The daemon's task once it consumes; what stopped its start-up is raised."""
    task = asyncio.create_task(daemon.run())
    waiter = asyncio.create_task(daemon.consuming.wait())
    done, _ = await asyncio.wait(
        {task, waiter}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    if waiter in done:
        return task
    waiter.cancel()
    if task.done():
        task.result()
    await _stop(daemon, task)
    raise WaConsumerError(f"the daemon did not start consuming within {START_TIMEOUT:g} s")


async def _stop(daemon: Daemon, task: asyncio.Task[int]) -> int | None:
    """Graceful stop within the grace period (plus margin); its exit code, None if it hung."""
    daemon.request_stop()
    try:
        return await asyncio.wait_for(task, daemon.settings.shutdown_grace_seconds + 10)
    except TimeoutError:
        return None


async def _publish(
    connection: AbstractConnection, settings: Settings, samples: Sequence[Sample]
) -> None:
    publisher = Publisher(
        connection, exchange=settings.exchange, routing_key_prefix=settings.routing_key_prefix
    )
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(settings.exchange)
        for sample in samples:
            if not sample.raw:
                await publisher.publish(sample.body)
                continue
            # The Publisher would refuse these: published as bytes, routed like the others.
            confirmation = await exchange.publish(
                aio_pika.Message(
                    sample.body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=sample.internal_id,
                    timestamp=datetime.now(UTC),
                ),
                routing_key=f"{settings.routing_key_prefix}.{sample.tenant}",
                mandatory=True,
                timeout=10,
            )
            if not isinstance(confirmation, aiormq.spec.Basic.Ack):
                raise WaConsumerError(f"the broker refused raw message {sample.label!r}")
    finally:
        await publisher.close()
        await channel.close()


async def _follow(
    connection: AbstractConnection,
    settings: Settings,
    sandbox: RunningSandbox,
    tally: Tally,
    console: Console,
    wait_seconds: float,
) -> bool:
    """Show progress until every sample is sent or dead; False on timeout."""
    total = len(tally.sends)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sent {task.fields[sent]}, dead {task.fields[dead]}"),
        TimeElapsedColumn(),
    )
    async with connection.channel() as channel:
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("messages settled", total=total, sent=0, dead=0)
            while True:
                tally.follow(sandbox)
                dead = await queues.count(channel, settings.dead_letter_queue)
                settled = tally.sent + dead
                progress.update(bar, completed=min(settled, total), sent=tally.sent, dead=dead)
                if settled >= total:
                    return True
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(POLL_SECONDS)
