"""The one log line per outcome (SPEC §11), and the short names logs and metrics use."""

from __future__ import annotations

import logging

from .context import Context
from .logs import EventLine
from .outcomes import Dead, Delivered, Duplicate, Held, Outcome, Recount, Retry

_line = EventLine("pipeline")


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
    if ctx.phone_number_id is not None:
        fields["phone_number_id"] = ctx.phone_number_id
    if ctx.fbtrace_id is not None:
        fields["fbtrace_id"] = ctx.fbtrace_id  # Meta's trace id: what its support asks for
    if ctx.trace_id is not None:
        fields["trace_id"] = ctx.trace_id  # OpenTelemetry's: the producer's trace, when it sent one
    failure = getattr(outcome, "failure", None)
    if failure is None:
        if isinstance(outcome, Delivered) and outcome.wamid:
            fields["wamid"] = outcome.wamid
        _line.emit(logging.INFO, "message", fields)
        return
    fields["code"] = failure.code
    fields["category"] = failure.category
    fields["error"] = failure.message[:300]
    _line.emit(logging.WARNING if isinstance(outcome, Dead) else logging.INFO, "message", fields)


def short_name(outcome: Outcome) -> str:
    if isinstance(outcome, Delivered):
        return "sent"
    if isinstance(outcome, Duplicate):
        return "duplicate"
    if isinstance(outcome, Retry):
        return "retry" if outcome.counts else "wait"
    if isinstance(outcome, Dead):
        return "dead"
    if isinstance(outcome, Held):
        return "held"
    if isinstance(outcome, Recount):
        return "recount"
    return "handed_back"
