"""What one delivery learned on its way, and what its outcome becomes: the ledger's
``Record`` and the one log line per outcome."""

from __future__ import annotations

from datetime import datetime

from .errors import GraphError
from .logs import get_logger
from .message import Outbound
from .outcomes import Dead, Delivered, Duplicate, Outcome, Recount, Retry
from .seams import Attempt, Record

log = get_logger("pipeline")


class Context:
    """What one delivery learns on its way: for the outcome line and the ledger."""

    __slots__ = (
        "attempt",
        "attempts",
        "claimed",
        "internal_id",
        "latency_ms",
        "tenant_id",
        "type",
    )

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        self.tenant_id: str | None = None
        self.internal_id: str | None = None
        self.type: str | None = None
        self.latency_ms: float | None = None
        self.claimed: Outbound | None = None  # set once the ledger gave us the message
        self.attempts: list[Attempt] = []

    def bind(self, message: Outbound) -> None:
        self.tenant_id = message.tenant_id
        self.internal_id = message.internal_id
        self.type = message.type


def attempt_of(ctx: Context, at: datetime, outcome: str, err: GraphError, category: str) -> Attempt:
    return Attempt(
        ctx.attempt,
        at,
        ctx.latency_ms or 0.0,
        outcome,
        http_status=err.status,
        code=err.code_text,
        subcode=err.subcode,
        category=category,
        message=err.message,
        ambiguous=err.maybe_sent,
    )


def record_of(outcome: Outcome, ctx: Context) -> Record:
    """The ledger's view of an outcome."""
    retries = ctx.attempt - 1
    if isinstance(outcome, Delivered):
        return Record("sent", retries, wamid=outcome.wamid)
    if isinstance(outcome, Retry):
        f = outcome.failure
        status = "retry_scheduled" if outcome.counts else "waiting"
        return Record(
            status,
            retries + outcome.counts,
            code=f.code,
            category=f.category,
            message=f.message,
            next_in=outcome.delay,
        )
    if isinstance(outcome, Dead):
        f = outcome.failure
        return Record("dead", retries, code=f.code, category=f.category, message=f.message)
    return Record("pending", retries)  # handed back: free for the next consumer at once


def log_outcome(ctx: Context, outcome: Outcome, short: str, settled: str, total_ms: float) -> None:
    fields: dict[str, object] = {
        "tenant_id": ctx.tenant_id,
        "internal_id": ctx.internal_id,
        "type": ctx.type,
        "attempt": ctx.attempt,
        "outcome": short,
        "settled": settled,
        "latency_ms": round(ctx.latency_ms, 1) if ctx.latency_ms is not None else None,
        "total_ms": round(total_ms, 1),
    }
    failure = getattr(outcome, "failure", None)
    if failure is None:
        log.info("message", **fields)
        return
    fields["code"] = failure.code
    fields["category"] = failure.category
    fields["error"] = failure.message[:300]
    if isinstance(outcome, Dead):
        log.warning("message", **fields)
    else:
        log.info("message", **fields)


def short_name(outcome: Outcome) -> str:
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
