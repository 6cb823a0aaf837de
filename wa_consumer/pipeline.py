"""A message's life: validate -> claim -> limit -> send -> classify -> settle.

``Pipeline.handle`` is the consumer's callback. ``_decide`` reads like SPEC §4: each stage is
one call and returns an ``Outcome``; only ``settle`` touches the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from .classify import Category, classify, retry_delay, rule_for, wait_queue_for
from .credentials import CredentialCache, Credentials, resolve_number
from .errors import CredentialError, GraphError, InvalidMessage
from .graph import GraphClient
from .logs import get_logger
from .message import Outbound, parse
from .outcomes import Dead, Delivered, Duplicate, Failure, HandBack, Outcome, Recount, Retry
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
    busy_delay: float = 0.0  # wait step for a message another consumer holds (0: first step)


class Pipeline:
    """Decides each delivery's outcome and hands it to the ``Settler``."""

    def __init__(
        self,
        *,
        policy: Policy,
        credentials: CredentialCache,
        graph: GraphClient,
        settler: Settler,
        ledger: Ledger | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.policy = policy
        self.credentials = credentials
        self.graph = graph
        self.settler = settler
        self.ledger: Ledger = ledger or NullLedger()
        self.limiter: Limiter = limiter or NullLimiter()
        self.stopping = False  # set at shutdown: what has not reached the send is handed back
        self.in_flight: set[asyncio.Task[None]] = set()
        self.sending = 0

    async def handle(self, delivery: AbstractIncomingMessage) -> None:
        """Consumer callback: decide, then settle; survives anything one message does."""
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        started = time.perf_counter()
        attempt = header_int(delivery.headers, H_RETRY_COUNT) + 1
        ctx = _Context(attempt)
        try:
            try:
                outcome = await self._decide(delivery, ctx)
            except asyncio.CancelledError:
                outcome = HandBack()
            except Exception as exc:  # one message must never stop the consumer
                log.exception("unexpected_error", attempt=attempt)
                outcome = self._retry_or_dead(
                    ctx, Failure(Category.TRANSIENT, "internal_error", _describe(exc))
                )
            settled = await asyncio.shield(
                self.settler.settle(delivery, outcome, tenant_id=ctx.tenant_id)
            )
            _log_outcome(ctx, outcome, settled, (time.perf_counter() - started) * 1000)
        finally:
            self.in_flight.discard(task)

    async def _decide(self, delivery: AbstractIncomingMessage, ctx: _Context) -> Outcome:
        # Crash-loop bound: a redelivery means an earlier delivery ended with no outcome.
        if delivery.redelivered:
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
            ctx.tenant_id, ctx.internal_id = exc.tenant_id, exc.internal_id
            return Dead(Failure("invalid", "invalid", str(exc)))
        ctx.bind(message)
        if expired := self._expired(message, delivery):
            return Dead(Failure("expired", "expired", expired))

        # claim
        claim = await self.ledger.claim(message)
        if claim is Claim.ALREADY_SENT:
            return Duplicate()
        if claim is Claim.BUSY:
            return self._wait(Failure("busy", "busy", "another consumer holds this message"))

        # credentials
        try:
            creds = await self.credentials.get(message.tenant_id)
            number = resolve_number(creds, message.tenant_id, message.phone_number_id)
        except CredentialError as exc:
            failure = Failure(exc.category, exc.category, str(exc))
            return self._retry_or_dead(ctx, failure) if exc.retryable else Dead(failure)
        ctx.number = number

        # limit
        if not await self.limiter.acquire(number, message.to):
            return self._wait(Failure("throttled", "throttled", f"number {number} throttled"))
        if self.stopping:
            return HandBack()

        # send, classify
        return await self._send(message, creds, number, ctx)

    async def _send(
        self, message: Outbound, creds: Credentials, number: str, ctx: _Context
    ) -> Outcome:
        refreshed = False
        while True:
            started = time.perf_counter()
            self.sending += 1
            try:
                result = await self.graph.send(number, creds.access_token, message.payload)
            except GraphError as err:
                latency = (time.perf_counter() - started) * 1000
                category = classify(err)
                ctx.code, ctx.category = err.code_text, category
                rule = rule_for(
                    category,
                    err.code,
                    rate_limit_min_delay=self.policy.rate_limit_min_delay,
                    pair_min_delay=self.policy.pair_limit_min_delay,
                )
                failure = Failure(category, err.code_text, err.message, err.subcode)
                if rule.refresh_credentials and not refreshed:
                    await self._record(message, ctx, latency, "refresh", err, category)
                    refreshed = True
                    self.credentials.invalidate(message.tenant_id)
                    try:
                        creds = await self.credentials.get(message.tenant_id)
                    except CredentialError as exc:
                        failure = Failure(exc.category, exc.category, str(exc))
                        return self._retry_or_dead(ctx, failure) if exc.retryable else Dead(failure)
                    continue
                if category is Category.RATE_LIMITED:
                    self.limiter.feedback(number, message.to, err.code_text)
                outcome = (
                    self._retry_or_dead(ctx, failure, rule.min_delay)
                    if rule.retry
                    else Dead(failure)
                )
                await self._record(
                    message, ctx, latency, _short(outcome), err, category, maybe=err.maybe_sent
                )
                return outcome
            finally:
                self.sending -= 1
            latency = (time.perf_counter() - started) * 1000
            ctx.latency_ms = latency
            await self.ledger.record_attempt(
                message,
                Attempt(
                    ctx.attempt, latency, "sent", http_status=result.status, wamid=result.wamid
                ),
            )
            return Delivered(result.wamid)

    async def _record(
        self,
        message: Outbound,
        ctx: _Context,
        latency: float,
        outcome: str,
        err: GraphError,
        category: str,
        *,
        maybe: bool = False,
    ) -> None:
        ctx.latency_ms = latency
        await self.ledger.record_attempt(
            message,
            Attempt(
                ctx.attempt,
                latency,
                outcome,
                http_status=err.status,
                code=err.code_text,
                subcode=err.subcode,
                category=category,
                message=err.message,
                ambiguous=maybe,
            ),
        )

    def _retry_or_dead(self, ctx: _Context, failure: Failure, min_delay: float = 0.0) -> Outcome:
        retries = ctx.attempt - 1
        if retries >= self.policy.max_retries:
            return Dead(
                Failure(
                    "retries_exhausted",
                    failure.code,
                    f"{failure.category} after {retries} retries: {failure.message}",
                    failure.subcode,
                )
            )
        delay = retry_delay(retries + 1, self.policy.retry_delays, min_delay)
        step = wait_queue_for(delay, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure)

    def _wait(self, failure: Failure) -> Outcome:
        """Come back later without counting a retry (throttled, or held by another consumer)."""
        step = wait_queue_for(self.policy.busy_delay, self.policy.retry_delays)
        return Retry(self.policy.retry_queues[step], step, failure, counts=False)

    def _expired(self, message: Outbound, delivery: AbstractIncomingMessage) -> str | None:
        now = datetime.now(UTC)
        if message.expires_at is not None and message.expires_at <= now:
            return f"expiresAt {message.expires_at.isoformat()} has passed"
        born = delivery.timestamp or _parse_time((delivery.headers or {}).get(H_FIRST_FAILED))
        if born is not None:
            if born.tzinfo is None:
                born = born.replace(tzinfo=UTC)
            age = (now - born).total_seconds()
            if age > self.policy.max_age_seconds:
                return (
                    f"{age:.0f} s old, over the maximum age of {self.policy.max_age_seconds:.0f} s"
                )
        return None


class _Context:
    """What one delivery's outcome line reports."""

    __slots__ = (
        "attempt",
        "category",
        "code",
        "internal_id",
        "latency_ms",
        "number",
        "tenant_id",
        "type",
    )

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.tenant_id: str | None = None
        self.internal_id: str | None = None
        self.type: str | None = None
        self.number: str | None = None
        self.code: str | None = None
        self.category: str | None = None
        self.latency_ms: float | None = None

    def bind(self, message: Outbound) -> None:
        self.tenant_id = message.tenant_id
        self.internal_id = message.internal_id
        self.type = message.type


def _log_outcome(ctx: _Context, outcome: Outcome, settled: str, total_ms: float) -> None:
    failure = getattr(outcome, "failure", None)
    fields = {
        "tenant_id": ctx.tenant_id,
        "internal_id": ctx.internal_id,
        "type": ctx.type,
        "attempt": ctx.attempt,
        "outcome": _short(outcome),
        "settled": settled,
        "latency_ms": round(ctx.latency_ms, 1) if ctx.latency_ms is not None else None,
        "total_ms": round(total_ms, 1),
    }
    if failure is not None:
        fields["code"] = failure.code
        fields["category"] = failure.category
        fields["error"] = failure.message[:300]
        log.warning("message", **fields) if _short(outcome) == "dead" else log.info(
            "message", **fields
        )
    else:
        log.info("message", **fields)


def _short(outcome: Outcome) -> str:
    if isinstance(outcome, Delivered):
        return "sent"
    if isinstance(outcome, Duplicate):
        return "duplicate"
    if isinstance(outcome, Retry):
        return "retry" if outcome.counts else "wait"
    if isinstance(outcome, Dead):
        return "dead"
    if isinstance(outcome, Recount):
        return "recount"
    return "handed_back"


def _deliveries(delivery: AbstractIncomingMessage) -> int:
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
