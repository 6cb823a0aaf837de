"""A message's life: validate -> limit -> claim -> send -> classify -> settle.

``Pipeline.handle`` is the consumer's callback. ``_decide`` reads like SPEC §4: each stage is
one call and returns an ``Outcome``; the ledger records it, and only ``settle`` touches the
broker.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .classify import Category, classify, retry_delay, rule_for, wait_queue_for
from .credentials import CredentialCache, Credentials, resolve_number
from .delivery import Delivery
from .errors import CredentialError, GraphError, InvalidMessage, LedgerUnavailable
from .graph import GraphClient
from .logs import get_logger
from .message import Outbound, parse
from .metrics import NullObserver, Observer
from .outcomes import Dead, Delivered, Duplicate, Failure, HandBack, Outcome, Recount, Retry
from .report import Context, attempt_of, log_outcome, record_of, short_name
from .seams import Attempt, Claim, Ledger, Limiter, NullLedger, NullLimiter
from .settle import H_DELIVERIES, H_FIRST_FAILED, H_RETRY_COUNT, Settler, header_int

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
        settler: Settler,
        ledger: Ledger | None = None,
        limiter: Limiter | None = None,
        observer: Observer | None = None,
        on_ledger_down: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy
        self.credentials = credentials
        self.graph = graph
        self.settler = settler
        self.ledger: Ledger = ledger or NullLedger()
        self.limiter: Limiter = limiter or NullLimiter()
        self.observer: Observer = observer or NullObserver()
        self._on_ledger_down = on_ledger_down or (lambda: None)
        self.stopping = False  # shutdown or pause: what has not reached the send goes back
        self.in_flight: set[asyncio.Task[None]] = set()
        self.deciding: set[asyncio.Task[None]] = set()  # not yet recording or settling
        self.counts: Counter[str] = Counter()  # outcomes so far: sent, duplicate, retry, ...

    async def handle(self, delivery: Delivery) -> None:
        """Consumer callback: decide, record, settle; survives anything one message does."""
        self.settler.delivered(delivery)  # first, before any await: acks are coalesced in order
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        self.deciding.add(task)
        started = time.perf_counter()
        ctx = Context(header_int(delivery.headers, H_RETRY_COUNT) + 1)
        try:
            try:
                outcome = await self._decide(delivery, ctx)
            except asyncio.CancelledError:
                outcome = HandBack()
            except Exception as exc:  # one message must never stop the consumer
                log.exception("unexpected_error", attempt=ctx.attempt)
                failure = Failure(Category.TRANSIENT, "internal_error", _describe(exc))
                outcome = self._retry_or_dead(ctx, failure)
            # From here on the task is never cancelled (shutdown cancels only `deciding`):
            # recording and settling run to their end, each bounded by its own timeout.
            self.deciding.discard(task)
            if ctx.claimed is not None:
                await self.ledger.finish(ctx.claimed, record_of(outcome, ctx), ctx.attempts)
            settled = await self.settler.settle(delivery, outcome, tenant_id=ctx.tenant_id)
            short = short_name(outcome)
            self.counts[short] += 1
            self.observer.outcome(outcome, short, ctx.type, ctx.tenant_id)
            log_outcome(ctx, outcome, short, settled, (time.perf_counter() - started) * 1000)
        finally:
            self.deciding.discard(task)
            self.in_flight.discard(task)

    async def _decide(self, delivery: Delivery, ctx: Context) -> Outcome:
        # Crash-loop bound without a ledger: a redelivery means a delivery ended with no
        # outcome; its count travels in a header of a requeued copy.
        if delivery.redelivered and not self.ledger.counts_deliveries:
            deliveries = _deliveries(delivery) + 1
            if deliveries >= self.policy.max_deliveries:
                return Dead(Failure("crash_loop", "crash_loop", _crash_text(deliveries)))
            if not self.stopping:
                return Recount(deliveries)
        if self.stopping:
            return HandBack()

        # validate
        try:
            message = parse(delivery.body, self.policy.max_message_bytes)
        except InvalidMessage as exc:
            # Ids from the body when it had them, else from the envelope the producer set.
            ctx.tenant_id = exc.tenant_id or _tenant_from_key(delivery.routing_key)
            ctx.internal_id = exc.internal_id or delivery.message_id
            return Dead(Failure("invalid", "invalid", str(exc)))
        ctx.bind(message)
        if expired := self._expired(message, delivery):
            return Dead(Failure("expired", "expired", expired))

        # credentials
        try:
            creds = await self.credentials.get(message.tenant_id)
            number = resolve_number(creds, message.tenant_id, message.phone_number_id)
        except CredentialError as exc:
            return self._credential_failure(ctx, exc)

        # limit
        if not await self.limiter.acquire(number, message.to):
            failure = Failure("throttled", "throttled", f"number {number} throttled")
            return self._wait(failure, self.policy.throttle_delay)

        # claim (after the limit: a throttled message costs the ledger nothing)
        try:
            claim = await self.ledger.claim(message)
        except LedgerUnavailable:
            self._on_ledger_down()
            return HandBack()
        if claim is Claim.ALREADY_SENT:
            return Duplicate()
        if claim is Claim.BUSY:
            return self._wait(Failure("busy", "busy", "another consumer holds this message"))
        ctx.claimed = message
        if claim is Claim.CRASH_LOOP:
            text = _crash_text(self.policy.max_deliveries)
            return Dead(Failure("crash_loop", "crash_loop", text))

        if self.stopping:
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
            try:
                result = await self.graph.send(number, creds.access_token, message.payload)
            except GraphError as err:
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
                    self.credentials.invalidate(message.tenant_id)
                    try:
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
            ctx.latency_ms = (time.perf_counter() - started) * 1000
            self.observer.latency(ctx.latency_ms / 1000)
            ctx.attempts.append(
                Attempt(ctx.attempt, at, ctx.latency_ms, "sent", http_status=result.status)
            )
            self.limiter.sent(number, message.to)
            return Delivered(result.wamid)

    def _credential_failure(self, ctx: Context, exc: CredentialError) -> Outcome:
        failure = Failure(exc.category, exc.category, str(exc))
        return self._retry_or_dead(ctx, failure) if exc.retryable else Dead(failure)

    def _retry_or_dead(self, ctx: Context, failure: Failure, min_delay: float = 0.0) -> Outcome:
        retries = ctx.attempt - 1
        if retries >= self.policy.max_retries:
            text = f"{failure.category} after {retries} retries: {failure.message}"
            return Dead(Failure("retries_exhausted", failure.code, text, failure.subcode))
        delay = retry_delay(retries + 1, self.policy.retry_delays, min_delay)
        step = wait_queue_for(delay, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure)

    def _wait(self, failure: Failure, delay: float | None = None) -> Outcome:
        """Come back later without counting a retry (throttled, or held by another consumer)."""
        step = self.policy.busy_delay if delay is None else delay
        if step not in self.policy.retry_queues:  # 0, or no queue of its own: a ladder step
            step = wait_queue_for(step, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure, counts=False)

    def _expired(self, message: Outbound, delivery: Delivery) -> str | None:
        now = datetime.now(UTC)
        if message.expires_at is not None and message.expires_at <= now:
            return f"expiresAt {message.expires_at.isoformat()} has passed"
        born = delivery.timestamp or _parse_time((delivery.headers or {}).get(H_FIRST_FAILED))
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
    return (parts[2] or None) if len(parts) == 3 else None


def _deliveries(delivery: Delivery) -> int:
    headers = delivery.headers
    # Quorum queues count deliveries themselves.
    return max(header_int(headers, H_DELIVERIES), header_int(headers, "x-delivery-count"))


def _crash_text(deliveries: int) -> str:
    return f"delivered {deliveries} times with no recorded outcome (crash or hang while processing)"


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode(errors="ignore")
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
