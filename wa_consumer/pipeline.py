"""A message's life: validate -> hold -> limit -> claim -> send -> classify -> settle.

``Pipeline.receive`` takes each delivery in order and runs ``handle`` in a task of the
pipeline's own (not the channel's: a channel that closes must not cancel a send on the
wire). ``_decide`` reads like SPEC §4: each stage is one call and returns an ``Outcome``;
the ledger records it, and only the settler touches the broker.

Two rules hold every path together:

- A data problem of one message ends that message (dead, ``invalid``, with what and where);
  only an infrastructure fault (the ledger unreachable) pauses consuming.
- Once a request may have reached Meta, the message is never handed back as unsent: from
  the claim on, its task is not cancelled by a pause or a shutdown; it finishes, is recorded
  (ambiguous where it must be) and is settled.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from . import headers
from .categories import Category
from .classify import classify, retry_delay, rule_for, wait_queue_for
from .context import Context, attempt_of, record_of
from .credentials import CredentialCache, Credentials, resolve_number
from .deaths import death_of
from .delivery import Delivery
from .errors import CredentialError, GraphError, InvalidMessage, LedgerUnavailable
from .graph import GraphClient, SendResult
from .logs import get_logger
from .message import Outbound, parse
from .metrics import NullObserver, Observer
from .outcomes import (
    Dead,
    Delivered,
    Duplicate,
    Failure,
    HandBack,
    Held,
    Outcome,
    Recount,
    Retry,
)
from .report import log_outcome, short_name
from .seams import (
    Attempt,
    Claim,
    Gate,
    Ledger,
    Limiter,
    NullGate,
    NullLedger,
    NullLimiter,
    Settling,
)
from .tracing import NullTracer, Tracer

log = get_logger("pipeline")


@dataclass(frozen=True, slots=True)
class Policy:
    """The retry and safety rules the pipeline applies (from settings)."""

    retry_delays: Sequence[float]
    retry_queues: dict[float, str]
    max_retries: int
    rate_limit_min_delay: float
    pair_limit_min_delay: float
    max_age_seconds: float
    max_message_bytes: int
    max_deliveries: int
    busy_delay: float = 0.0  # wait step for a message held elsewhere (0: the first step)
    throttle_delay: float = 0.0  # wait step for a throttled message (0: the first step)


class Pipeline:
    """Decides each delivery's outcome, has the ledger record it, and settles it."""

    def __init__(
        self,
        *,
        policy: Policy,
        credentials: CredentialCache,
        graph: GraphClient,
        settler: Settling,
        ledger: Ledger | None = None,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
        on_ledger_down: Callable[[], None] | None = None,
        tracer: Tracer | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.policy = policy
        self.credentials = credentials
        self.graph = graph
        self.settler = settler
        self.ledger: Ledger = ledger or NullLedger()
        self.limiter: Limiter = limiter or NullLimiter()
        self.observer: Observer = observer or NullObserver()
        self.tracer: Tracer = tracer or NullTracer()
        self.gate: Gate = gate or NullGate()
        self._on_ledger_down = on_ledger_down or (lambda: None)
        self._stopping = False  # paused or stopping: what has not reached the claim goes back
        self._loop: asyncio.AbstractEventLoop | None = None  # see ``_running_loop``
        self.in_flight: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # before the claim: may be cancelled
        self.counts: Counter[str] = Counter()  # outcomes so far: sent, duplicate, retry, ...

    # -- lifecycle the daemon drives -----------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._stopping

    def pause(self) -> None:
        """What has not been claimed yet goes back to the queue; claimed messages finish."""
        self._stopping = True

    def resume(self) -> None:
        self._stopping = False

    async def drain(self, grace: float, hard_stop: asyncio.Event | None = None) -> int:
        """Stop: wait up to ``grace`` for the messages in flight, then hand back those that
        have not been claimed; the claimed ones (their sends may be on the wire) finish,
        each bounded by its own timeouts. Returns how many were handed back early."""
        self.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        hard = asyncio.ensure_future((hard_stop or asyncio.Event()).wait())
        try:
            while self.in_flight and not hard.done() and (left := deadline - loop.time()) > 0:
                await asyncio.wait(
                    [*self.in_flight, hard], timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            hard.cancel()
        cut = set(self._waiting)
        for task in cut:
            task.cancel()  # each hands its message back; nothing of it reached Meta
        if self.in_flight:
            _, late = await asyncio.wait(set(self.in_flight), timeout=60)
            if late:
                log.error("shutdown_tasks_unfinished", count=len(late))
        await self.settler.flush()
        return len(cut)

    # -- one delivery ---------------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, asked of asyncio once: on CPython 3.11 each ask is a getpid()
        system call (0.3 µs here), and a message's task asked three times."""
        loop = self._loop
        if loop is None or not loop.is_running():  # one loop runs per thread at a time
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def receive(self, delivery: Delivery) -> asyncio.Task[None]:
        """Take one delivery (called in delivery order, before anything awaits)."""
        self.settler.delivered(delivery)  # acks are coalesced in delivery order
        task = self._running_loop().create_task(self.handle(delivery))
        self.in_flight.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self._waiting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("handler_failed", error=_describe(exc))

    async def handle(self, delivery: Delivery) -> None:
        """Decide, record, settle; survives anything one message does."""
        started = time.perf_counter()
        ctx = Context()
        with self.tracer.delivery(delivery.headers) as span:
            ctx.trace_id = span.trace_id
            short = await self._handle(delivery, ctx, started)
            span.set("wa.tenant_id", ctx.tenant_id)
            span.set("wa.internal_id", ctx.internal_id)
            span.set("wa.type", ctx.type)
            span.set("wa.attempt", ctx.attempt)
            span.set("wa.outcome", short)

    async def _handle(self, delivery: Delivery, ctx: Context, started: float) -> str:
        task = asyncio.current_task(self._running_loop())
        # Only a task that has started may be cut by ``drain``: one cut before its first step
        # would never reach its try, and never be settled. Unstarted ones hand back by
        # themselves (the pipeline is paused by then).
        self._waiting.add(task)  # type: ignore[arg-type]
        try:
            outcome = await self._decide(delivery, ctx, task)
        except asyncio.CancelledError:
            if task is not None:
                task.uncancel()  # the cancel is answered here; recording and settling go on
            outcome = self._cut_off(ctx, "the send was cut off before its answer", "cancelled")
        except Exception as exc:  # one message must never stop the consumer
            log.exception("unexpected_error", attempt=ctx.attempt)
            if ctx.on_the_wire:
                why = f"the send failed unexpectedly: {_describe(exc)}"
                outcome = self._cut_off(ctx, why, "internal_error")
            else:
                failure = Failure(Category.TRANSIENT, "internal_error", _describe(exc))
                outcome = self._retry_or_dead(ctx, failure)
        self._waiting.discard(task)
        record = partial(self._record, ctx, outcome, delivery)
        settled = await self.settler.settle(
            delivery, outcome, tenant_id=ctx.tenant_id, record=record
        )
        short = short_name(outcome)
        self.counts[short] += 1
        self.observer.outcome(outcome, short, ctx.type, ctx.tenant_id)
        self.gate.settled(ctx.tenant_id, ctx.phone_number_id, outcome)
        log_outcome(ctx, outcome, short, settled, (time.perf_counter() - started) * 1000)
        return short

    async def _record(
        self,
        ctx: Context,
        outcome: Outcome,
        delivery: Delivery,
        copied: bool,
        copy_headers: Mapping[str, Any] | None = None,
    ) -> None:
        """The ledger's write, between the copy's confirm and the ack (see ``settle``): the
        claimed message's result, and every death whose copy reaches the DLQ, claimed or not."""
        claimed = ctx.claimed
        if claimed is None and not isinstance(outcome, Dead):
            return
        try:
            with self.tracer.child("wa.ledger.finish"):
                death = None
                if isinstance(outcome, Dead):
                    limit = self.policy.max_message_bytes
                    death = death_of(ctx, outcome, delivery, copied, copy_headers, limit)
                if claimed is None:
                    if death is not None:
                        await self.ledger.dead(death)
                    return
                finish = self.ledger.finish(claimed, record_of(outcome, ctx, copied), ctx.attempts)
                if death is None:
                    await finish
                else:  # both bounded by the ledger's wait, side by side
                    await asyncio.gather(finish, self.ledger.dead(death))
        except Exception:  # a Ledger must not raise here; if one does, settle all the same
            log.exception("ledger_finish_raised", internal_id=ctx.internal_id)

    async def _decide(
        self, delivery: Delivery, ctx: Context, task: asyncio.Task[Any] | None
    ) -> Outcome:
        try:
            counts = headers.read(delivery.headers)
        except headers.BadHeader as exc:
            ctx.tenant_id = _tenant_from_key(delivery.routing_key)
            return Dead(Failure(Category.INVALID, Category.INVALID, str(exc)))
        ctx.attempt = counts.retries + 1

        # Crash-loop bound without a ledger: a redelivery means a delivery ended with no
        # outcome; its count travels in a header of a requeued copy.
        if delivery.redelivered and not self.ledger.counts_deliveries:
            deliveries = counts.deliveries + 1
            if deliveries >= self.policy.max_deliveries:
                return Dead(Failure(Category.CRASH_LOOP, Category.CRASH_LOOP, _crash(deliveries)))
            if not self._stopping:
                return Recount(deliveries)
        if self._stopping:
            return HandBack()

        # validate
        try:
            message = parse(delivery.body, self.policy.max_message_bytes)
        except InvalidMessage as exc:
            # Ids from the body when it had usable ones, else from the envelope.
            ctx.tenant_id = exc.tenant_id or _tenant_from_key(delivery.routing_key)
            ctx.internal_id = exc.internal_id or headers.text(delivery.message_id or "", 256)
            return Dead(Failure(Category.INVALID, Category.INVALID, str(exc)))
        ctx.bind(message)
        if expired := self._expired(message, delivery, counts.first_failed_at):
            return Dead(Failure(Category.EXPIRED, Category.EXPIRED, expired))

        # hold: a paused tenant's messages wait in its held queue, before any call
        release = headers.held_release(delivery.headers)
        if (held := self.gate.held(message.tenant_id, None, release)) is not None:
            return Held(held)

        # credentials
        try:
            with self.tracer.child("wa.credentials"):
                creds = await self.credentials.get(message.tenant_id)
                number = resolve_number(creds, message.tenant_id, message.phone_number_id)
        except CredentialError as exc:
            return self._credential_failure(ctx, exc)
        ctx.phone_number_id = number
        if (held := self.gate.held(message.tenant_id, number, release)) is not None:
            return Held(held)

        # limit
        if not await self.limiter.acquire(number, message.to):
            failure = Failure(Category.THROTTLED, Category.THROTTLED, f"number {number} throttled")
            return self._wait(failure, self.policy.throttle_delay)

        # claim (after the limit: a throttled message costs the ledger nothing). From here on
        # the task is not cancelled: a claim is released or finished on every path.
        self._waiting.discard(task)
        if self._stopping:
            return HandBack()
        try:
            with self.tracer.child("wa.ledger.claim") as span:
                claim = await self.ledger.claim(message, counts.replays)
                span.set("wa.claim", claim.value)
        except LedgerUnavailable:
            self._on_ledger_down()
            return HandBack()
        if claim is Claim.ALREADY_SENT or claim is Claim.ALREADY_DEAD:
            return Duplicate()
        if claim is Claim.BUSY:
            busy = Failure(Category.BUSY, Category.BUSY, "another consumer holds this message")
            return self._wait(busy)
        if claim is Claim.REFUSED:
            text = "the ledger cannot store this message (a value the database refuses)"
            return Dead(Failure(Category.INVALID, Category.INVALID, text))
        ctx.claimed = message
        if claim is Claim.DYING:
            # Dead before a broker cut, its DLQ copy unconfirmed: dead-letter it again as it
            # was, without a second call to Meta.
            why = "dead before a broker cut; dead-lettered again"
            failure = self.ledger.recorded_failure(message) or Failure(Category.INVALID, "-", why)
            return Dead(failure)
        if claim is Claim.CRASH_LOOP:
            crash = _crash(self.policy.max_deliveries)
            return Dead(Failure(Category.CRASH_LOOP, Category.CRASH_LOOP, crash))
        if self._stopping:
            return HandBack()

        # send, classify
        return await self._send(message, creds, number, ctx)

    async def _send(
        self, message: Outbound, creds: Credentials, number: str, ctx: Context
    ) -> Outcome:
        refreshed = False
        while True:
            at = datetime.now(UTC)
            started = time.perf_counter()
            ctx.on_the_wire = True
            try:
                result = await self._call(number, creds.access_token, message.payload)
            except GraphError as err:
                ctx.on_the_wire = False
                ctx.latency_ms = (time.perf_counter() - started) * 1000
                self.observer.latency(ctx.latency_ms / 1000)
                if err.maybe_sent:
                    self.observer.ambiguous()
                category = classify(err)
                rule = rule_for(
                    category,
                    err.code,
                    rate_limit_min_delay=self.policy.rate_limit_min_delay,
                    pair_min_delay=self.policy.pair_limit_min_delay,
                )
                failure = Failure(category, err.code_text, err.message, err.subcode)
                if rule.refresh_credentials and not refreshed:
                    # 401 / 190: the token changed; fetch it again and resend once, at once.
                    ctx.attempts.append(attempt_of(ctx, at, "refresh", err, category))
                    refreshed = True
                    self.credentials.invalidate(message.tenant_id, creds)
                    try:
                        with self.tracer.child("wa.credentials"):
                            creds = await self.credentials.get(message.tenant_id)
                    except CredentialError as exc:
                        return self._credential_failure(ctx, exc)
                    continue
                if category is Category.RATE_LIMITED:
                    self.limiter.feedback(number, message.to, err.code_text)
                if rule.retry:
                    outcome = self._retry_or_dead(ctx, failure, rule.min_delay)
                else:
                    outcome = Dead(failure)
                ctx.attempts.append(attempt_of(ctx, at, short_name(outcome), err, category))
                return outcome
            ctx.on_the_wire = False
            ctx.latency_ms = (time.perf_counter() - started) * 1000
            self.observer.latency(ctx.latency_ms / 1000)
            ctx.attempts.append(
                Attempt(ctx.attempt, at, ctx.latency_ms, "sent", http_status=result.status)
            )
            self.limiter.sent(number, message.to)
            return Delivered(result.wamid)

    async def _call(self, number: str, token: str, payload: bytes) -> SendResult:
        """One Cloud API request, as the ``wa.graph.send`` span."""
        with self.tracer.child("wa.graph.send") as span:
            span.set("wa.phone_number_id", number)
            try:
                result = await self.graph.send(number, token, payload)
            except GraphError as err:
                span.set("http.response.status_code", err.status)
                span.set("wa.meta.code", err.code_text)
                raise
            span.set("http.response.status_code", result.status)
            return result

    def _cut_off(self, ctx: Context, why: str, code: str) -> Outcome:
        """The send did not end normally. Before the wire: back to the queue, nothing happened.
        On the wire (a cancel from outside the pipeline, or a bug): as a timeout, an
        ambiguous attempt and a retry, never a hand-back as if it had not been sent."""
        if not ctx.on_the_wire:
            return HandBack()
        self.observer.ambiguous()
        err = GraphError(f"{why}; Meta may have accepted it", maybe_sent=True, short_code=code)
        failure = Failure(Category.TRANSIENT, err.code_text, err.message)
        outcome = self._retry_or_dead(ctx, failure)
        at = datetime.now(UTC)
        ctx.attempts.append(attempt_of(ctx, at, short_name(outcome), err, Category.TRANSIENT))
        return outcome

    def _credential_failure(self, ctx: Context, exc: CredentialError) -> Outcome:
        failure = Failure(exc.category, exc.category, str(exc))
        return self._retry_or_dead(ctx, failure) if exc.retryable else Dead(failure)

    def _retry_or_dead(self, ctx: Context, failure: Failure, min_delay: float = 0.0) -> Outcome:
        retries = ctx.attempt - 1
        if retries >= self.policy.max_retries:
            text = f"{failure.category} after {retries} retries: {failure.message}"
            exhausted = Category.RETRIES_EXHAUSTED
            return Dead(Failure(exhausted, failure.code, text, failure.subcode))
        delay = retry_delay(retries + 1, self.policy.retry_delays, min_delay)
        step = wait_queue_for(delay, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure)

    def _wait(self, failure: Failure, delay: float | None = None) -> Outcome:
        """Come back later without counting a retry (throttled, or held by another consumer)."""
        step = self.policy.busy_delay if delay is None else delay
        if step not in self.policy.retry_queues:  # 0, or no queue of its own: a ladder step
            step = wait_queue_for(step, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure, counts=False)

    def _expired(
        self, message: Outbound, delivery: Delivery, first_failed: datetime | None
    ) -> str | None:
        now = datetime.now(UTC)
        if message.expires_at is not None and message.expires_at <= now:
            return f"expiresAt {message.expires_at.isoformat()} has passed"
        born = delivery.timestamp or first_failed
        if born is not None:
            if born.tzinfo is None:
                born = born.replace(tzinfo=UTC)
            age = (now - born).total_seconds()
            if age > self.policy.max_age_seconds:
                limit = self.policy.max_age_seconds
                return f"{age:.0f} s old, over the maximum age of {limit:.0f} s"
        return None


def _tenant_from_key(routing_key: str | None) -> str | None:
    """``outbound.processed.<tenantId>`` -> the tenant, for a body that could not be read."""
    parts = (routing_key or "").split(".", 2)
    return headers.text(parts[2], 256) if len(parts) == 3 and parts[2] else None


def _crash(deliveries: int) -> str:
    return f"delivered {deliveries} times with no recorded outcome (crash or hang while processing)"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
