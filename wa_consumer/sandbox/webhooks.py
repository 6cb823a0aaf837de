"""Sending status webhooks for accepted messages, like Meta does, to ``webhooks.url``.

Each accepted message gets a plan: its statuses with the (loop) time each is due. Only a
plan's next status waits anywhere, either in one heap served by one timer (``call_at``, so
10,000 messages cost 10,000 heap entries, not 10,000 tasks) or in the ready queue that a
pool of workers posts from, up to ``batch`` statuses per POST. A plan's next status is
scheduled only when the POST of the previous one is done, so a message's statuses arrive in
plan order (reversed for ``out_of_order``) whatever the pool does. Memory is bounded by
``max_pending`` plans; beyond it new messages get no statuses and count as dropped.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from wa_consumer.logs import get_logger
from wa_consumer.sandbox.config import TenantConfig, WebhookConfig, WebhookFailure
from wa_consumer.sandbox.state import SandboxState
from wa_consumer.sandbox.statuses import (
    Message,
    category_of,
    failure_error,
    sign,
    status_object,
    waba_id,
    webhook_body,
)

POOL = 16  # concurrent POSTs, and connections to the receiver
_LOG_EVERY = 5.0  # seconds between two warnings about failing POSTs
log = get_logger("sandbox")


class Step(NamedTuple):
    """One status of a plan: when it is due (loop time) and when it happened (unix time)."""

    due: float
    status: str
    at: float


class Plan:
    """The statuses one message still has to get; ``index`` is the next one."""

    __slots__ = ("error", "index", "message", "steps")

    def __init__(
        self, message: Message, steps: list[Step], error: dict[str, Any] | None = None
    ) -> None:
        self.message = message
        self.steps = steps
        self.error = error
        self.index = 0

    def status(self) -> dict[str, Any]:
        """The next status as Meta words it."""
        step = self.steps[self.index]
        return status_object(self.message, step.status, step.at, self.error)


class WebhookSender:
    """Plans statuses for accepted messages and posts them, signed, to the configured URL."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._heap: list[tuple[float, int, Plan]] = []
        self._order = itertools.count()
        self._ready: deque[Plan] = deque()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._failures: tuple[WebhookFailure, ...] = ()
        self._compiled: tuple[tuple[re.Pattern[str], WebhookFailure], ...] = ()
        self._random = random.Random(state.config.seed)
        self._logged = 0.0
        self.pending = 0
        self.reset()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the session and start the pool; statuses are planned from now on."""
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=POOL))
        self._workers = [self._loop.create_task(self._work()) for _ in range(POOL)]

    async def close(self) -> None:
        """Stop the pool and the timer, close the session; unsent statuses are forgotten."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()
        self._ready.clear()
        self.pending = 0
        self._loop = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run_with(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: started with the server, closed after it."""
        await self.start()
        yield
        await self.close()

    # -- planning ------------------------------------------------------------------

    def accepted(
        self,
        *,
        wamid: str,
        number: str,
        tenant: TenantConfig,
        recipient: str,
        body: Mapping[str, Any],
    ) -> None:
        """Plan ``sent``, then ``delivered`` (and maybe ``read``) or ``failed``."""
        config = self._state.config.webhooks
        if config.url is None or self._loop is None:
            return
        biz = body.get("biz_opaque_callback_data")
        message = Message(
            wamid=wamid,
            phone_number_id=number,
            waba_id=waba_id(tenant),
            recipient=recipient,
            category=category_of(body, config.template_categories),
            biz_opaque_callback_data=biz if isinstance(biz, str) else None,
            accepted_at=time.time(),
        )
        rule = self._failure_for(config, recipient)
        delivered = config.delivered_after_ms / 1000.0
        offsets = [("sent", 0.0)]
        if rule is not None:
            after = delivered if rule.after_ms is None else rule.after_ms / 1000.0
            offsets.append(("failed", after))
        else:
            offsets.append(("delivered", delivered))
            if self._random.random() < config.read_share:
                offsets.append(("read", delivered + config.read_after_ms / 1000.0))
        now = self._loop.time()
        steps = [Step(now + off, status, message.accepted_at + off) for status, off in offsets]
        if self._random.random() < config.out_of_order:
            last = steps[-1].due
            steps = [step._replace(due=last) for step in reversed(steps)]
        error = failure_error(rule) if rule is not None else None
        self.add(Plan(message, steps, error), config)

    def add(self, plan: Plan, config: WebhookConfig | None = None) -> bool:
        """Schedule ``plan`` (an admin's one-off status too); False when over ``max_pending``."""
        config = config or self._state.config.webhooks
        if self._loop is None or config.url is None or self.pending >= config.max_pending:
            self.counts["dropped"] += len(plan.steps)
            return False
        self.pending += 1
        self._schedule(plan)
        return True

    def _failure_for(self, config: WebhookConfig, recipient: str) -> WebhookFailure | None:
        if config.failed is not self._failures:  # the config was replaced: compile anew
            self._failures = config.failed
            self._compiled = tuple((re.compile(rule.match), rule) for rule in config.failed)
            self._random = random.Random(self._state.config.seed)
        for pattern, rule in self._compiled:
            if pattern.search(recipient) is not None:
                return rule
        return None

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self, plan: Plan) -> None:
        assert self._loop is not None
        due = plan.steps[plan.index].due
        if due <= self._loop.time():
            self._ready.append(plan)
            self._wake.set()
            return
        heapq.heappush(self._heap, (due, next(self._order), plan))
        if self._timer is None or due < self._timer_due:
            self._arm()

    def _arm(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            self._timer_due = self._heap[0][0]
            self._timer = self._loop.call_at(self._timer_due, self._release)

    def _release(self) -> None:
        """The timer: move every due plan to the ready queue, then wait for the next."""
        assert self._loop is not None
        self._timer = None
        horizon = self._loop.time() + 0.001  # call_at may fire a hair early
        while self._heap and self._heap[0][0] <= horizon:
            self._ready.append(heapq.heappop(self._heap)[2])
        if self._ready:
            self._wake.set()
        self._arm()

    def _advance(self, plan: Plan) -> None:
        plan.index += 1
        if plan.index < len(plan.steps) and self._loop is not None:
            self._schedule(plan)
        else:
            self.pending -= 1

    # -- posting -------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while not self._ready:
                self._wake.clear()
                await self._wake.wait()
            config = self._state.config.webhooks
            plans = [self._ready.popleft() for _ in range(min(config.batch, len(self._ready)))]
            try:
                await self._deliver(config, plans)
            except Exception:  # a bug here must not silently stop every later webhook
                log.exception("sandbox_webhook_error")
                self.counts["failed"] += 1
            finally:
                for plan in plans:
                    self._advance(plan)

    async def _deliver(self, config: WebhookConfig, plans: list[Plan]) -> None:
        if config.url is None or config.app_secret is None:  # turned off meanwhile
            self.counts["dropped"] += len(plans)
            return
        body = webhook_body((plan.message, plan.status()) for plan in plans)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "X-Hub-Signature-256": sign(body, config.app_secret.get_secret_value().encode()),
        }
        if not await self._post(config, config.url, body, headers):
            return
        self.counts["statuses"] += len(plans)
        if config.duplicates and self._random.random() < config.duplicates:
            self.counts["duplicates"] += 1
            await self._post(config, config.url, body, headers)

    async def _post(
        self, config: WebhookConfig, url: str, body: bytes, headers: Mapping[str, str]
    ) -> bool:
        """POST with retries; True once answered 2xx. Meta retries failed webhooks too."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=config.timeout_ms / 1000.0)
        backoff = config.retry_backoff_ms / 1000.0
        last = ""
        for attempt in range(config.retries + 1):
            if attempt:
                self.counts["retried"] += 1
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
            try:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    if 200 <= response.status < 300:
                        self.counts["sent"] += 1
                        return True
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = type(exc).__name__
        self.counts["failed"] += 1
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY:  # a receiver that is down would flood the log
            self._logged = now
            log.warning("sandbox_webhook_failed", last=last, failed=self.counts["failed"])
        return False

    # -- bookkeeping ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """POSTs ``sent`` (2xx, duplicates included), ``statuses`` in them, ``retried``,
        ``failed`` (given up), ``dropped`` statuses, ``duplicates``, ``pending`` messages."""
        config = self._state.config.webhooks
        return {"enabled": config.url is not None, **self.counts, "pending": self.pending}

    def reset(self) -> None:
        """Zero the counters (the plans under way go on)."""
        self.counts = dict.fromkeys(
            ("sent", "statuses", "retried", "failed", "dropped", "duplicates"), 0
        )
