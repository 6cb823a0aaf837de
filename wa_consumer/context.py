"""What one delivery learns on its way, and what its outcome becomes for the ledger."""

from __future__ import annotations

from datetime import datetime

from .errors import GraphError
from .message import Outbound
from .outcomes import Dead, Delivered, Outcome, Retry
from .seams import FBTRACE_CHARS, Attempt, Record


class Context:
    """What one delivery learns on its way: for the outcome line and the ledger."""

    __slots__ = (
        "attempt",
        "attempts",
        "claimed",
        "fbtrace_id",
        "internal_id",
        "latency_ms",
        "on_the_wire",
        "phone_number_id",
        "tenant_id",
        "trace_id",
        "type",
    )

    def __init__(self, attempt: int = 1) -> None:
        self.attempt = attempt
        self.tenant_id: str | None = None
        self.internal_id: str | None = None
        self.type: str | None = None
        self.latency_ms: float | None = None
        self.claimed: Outbound | None = None  # set once the ledger gave us the message
        self.on_the_wire = False  # a request is out: Meta may accept it whatever happens here
        self.attempts: list[Attempt] = []
        self.phone_number_id: str | None = None  # the number the send goes from, once resolved
        self.fbtrace_id: str | None = None  # Meta's trace id of the last error answer, if any
        self.trace_id: str | None = None  # the delivery span's trace (tracing on), for the log

    def bind(self, message: Outbound) -> None:
        self.tenant_id = message.tenant_id
        self.internal_id = message.internal_id
        self.type = message.type


def attempt_of(ctx: Context, at: datetime, outcome: str, err: GraphError, category: str) -> Attempt:
    """The failed attempt's row; its ``fbtrace_id`` (bounded) is kept for the outcome line too."""
    trace = err.fbtrace_id[:FBTRACE_CHARS] if err.fbtrace_id else None
    ctx.fbtrace_id = trace
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
        fbtrace_id=trace,
    )


def record_of(outcome: Outcome, ctx: Context, copied: bool = True) -> Record:
    """The ledger's view of an outcome; ``copied``: its copy was confirmed where it went.

    A dead message whose DLQ copy was not confirmed is ``dying``: the broker dead-letters it
    from its queue, or, if even that was cut off, redelivers it to be dead-lettered again.
    """
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
        status = "dead" if copied else "dying"
        return Record(status, retries, code=f.code, category=f.category, message=f.message)
    return Record("pending", retries)  # handed back: free for the next consumer at once
