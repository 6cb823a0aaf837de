"""structlog, configured once by the CLI; library loggers go through it too.

Redaction is the second line of defence for access tokens (the first is never putting one
in an exception, repr or header): any ``Bearer <x>`` and any key that names a token is masked.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import select
import sys
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog

_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-~+/=]+", re.IGNORECASE)
_SECRET_KEYS = frozenset(
    {"access_token", "accesstoken", "token", "authorization", "password", "tenant_service_token"}
)
MASK = "***"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask tokens in every field of a log event."""
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = MASK
        elif isinstance(value, str) and "earer" in value:
            event[key] = _BEARER.sub(r"\1" + MASK, value)
    return event


def _orjson_dumps(obj: Any, **_: Any) -> bytes:
    return orjson.dumps(obj, default=str)


class _LineBatch:
    """JSON lines written once per event-loop turn, not once each.

    A write and flush per line is a system call per message on the hot path; lines produced
    in the same loop turn go out together at its end (at once when no loop runs).

    With ``atomic`` (a worker of ``run --workers``, sharing its stdout with the others) each
    write is whole lines of at most ``PIPE_BUF`` bytes: a pipe never interleaves such a write
    with another process's, so no line is cut by a neighbour's (one longer than that alone can
    be).
    """

    def __init__(self, stream: BinaryIO, *, atomic: bool = False) -> None:
        self._stream = stream
        self._pending = bytearray()
        self._scheduled = False
        self._most = select.PIPE_BUF if atomic else 0

    def write(self, line: bytes) -> None:
        self._pending += line
        self._pending += b"\n"
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        if len(pending) <= self._most or not self._most:
            self._stream.write(pending)
            self._stream.flush()
        else:
            for start, end in _pieces(pending, self._most):
                self._stream.write(pending[start:end])
                self._stream.flush()  # one write(2) each
        pending.clear()


def _pieces(lines: bytearray, most: int) -> list[tuple[int, int]]:
    """Spans of whole lines of at most ``most`` bytes (a longer line is a span alone)."""
    spans: list[tuple[int, int]] = []
    start, size = 0, len(lines)
    while start < size:
        end = start + most
        if end < size:
            cut = lines.rfind(b"\n", start, end)
            end = cut + 1 if cut >= 0 else lines.find(b"\n", end) + 1 or size
        spans.append((start, min(end, size)))
        start = min(end, size)
    return spans


class _BatchedLogger:
    """A structlog logger writing rendered JSON lines into a ``_LineBatch``."""

    def __init__(self, lines: _LineBatch) -> None:
        self._lines = lines

    def msg(self, message: bytes) -> None:
        self._lines.write(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def configure_logging(
    level: str = "INFO",
    fmt: str = "json",
    *,
    worker: int | None = None,
    shared_stdout: bool = False,
) -> None:
    """Configure structlog and route stdlib logging (aio-pika, aiohttp) through it.

    ``worker``: the index of a worker of ``run --workers``, a ``worker`` field on every line.
    ``shared_stdout``: other processes write to it too (the supervisor and its workers).
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if worker is not None:
        shared.append(_WorkerField(worker))
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        lines = _LineBatch(sys.stdout.buffer, atomic=shared_stdout or worker is not None)
        atexit.register(lines.flush)
        factory: Any = lambda *_: _BatchedLogger(lines)  # noqa: E731
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Library loggers: warnings and up, rendered like our own lines.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, redact],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer()
                if fmt == "json"
                else structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


class _WorkerField:
    """Adds ``worker`` (its index) to each line of a worker process."""

    def __init__(self, index: int) -> None:
        self._index = index

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event["worker"] = self._index
        return event


def get_logger(name: str) -> Any:
    """A structlog logger bound to a component name."""
    return structlog.get_logger(component=name)
