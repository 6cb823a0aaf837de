"""structlog, configured once by the CLI; library loggers go through it too.

Redaction is the second line of defence for access tokens (the first is never putting one
in an exception, repr or header): any ``Bearer <x>`` and any key that names a token is masked.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
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
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._pending = bytearray()
        self._scheduled = False

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
        if self._pending:
            self._stream.write(self._pending)
            self._stream.flush()
            self._pending.clear()


class _BatchedLogger:
    """A structlog logger writing rendered JSON lines into a ``_LineBatch``."""

    def __init__(self, lines: _LineBatch) -> None:
        self._lines = lines

    def msg(self, message: bytes) -> None:
        self._lines.write(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure structlog and route stdlib logging (aio-pika, aiohttp) through it."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        lines = _LineBatch(sys.stdout.buffer)
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


def get_logger(name: str) -> Any:
    """A structlog logger bound to a component name."""
    return structlog.get_logger(component=name)
