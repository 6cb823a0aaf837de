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
import time
from collections.abc import MutableMapping
from typing import Any, BinaryIO

import orjson
import structlog
from structlog import contextvars as _contextvars

_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._\-~+/=]+", re.IGNORECASE)
_SECRET_KEYS = frozenset(
    {"access_token", "accesstoken", "token", "authorization", "password", "tenant_service_token"}
)
MASK = "***"
# Keys seen not to name a secret: a set lookup instead of lower() per key of every line.
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_MAX = 4096


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Mask tokens in every field of a log event."""
    for key, value in event.items():
        if key not in _PLAIN_KEYS:
            if key.lower() in _SECRET_KEYS:
                event[key] = MASK
                continue
            if len(_PLAIN_KEYS) < _PLAIN_KEYS_MAX:
                _PLAIN_KEYS.add(key)
        if isinstance(value, str) and "earer" in value:
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


class _UtcStamp:
    """``TimeStamper(fmt="iso", utc=True)``'s text, with the date and time formatted once a
    second: 0.4 µs a line instead of 1.2 for ``datetime.now(UTC).isoformat()``."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self._prefix}{int((now - second) * 1_000_000):06d}Z"


_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}


class _JsonChain:
    """The JSON processor chain of ``configure_logging`` as one function, for ``EventLine``.

    structlog's bound logger and six processors took 7 µs a line; the same line built here
    takes 2. It renders only while structlog still runs the chain it was made with (a test's
    ``capture_logs`` or another ``configure`` make ``EventLine`` go through structlog).
    """

    def __init__(
        self, lines: _LineBatch, level: int, worker: int | None, config: dict[str, Any]
    ) -> None:
        self._lines = lines
        self.level = level
        self._worker = worker
        self._config = config
        self._processors = config["processors"]
        self._renderer = self._processors[-1]
        self._stamp = _UtcStamp()

    def current(self) -> bool:
        config = structlog.get_config()
        return (
            config["processors"] is self._processors
            and self._processors[-1] is self._renderer  # capture_logs swaps it in place
            and config["wrapper_class"] is self._config["wrapper_class"]
            and config["logger_factory"] is self._config["logger_factory"]
        )

    def write(self, component: str, level: int, event: str, fields: dict[str, Any]) -> None:
        line = {"component": component, **fields, "event": event}
        # Only once something was bound (structlog keeps each bound key's ContextVar there):
        # merging walks the whole context, 0.5 µs a line for nothing otherwise.
        if _contextvars._CONTEXT_VARS:
            _contextvars.merge_contextvars(None, "", line)
        line["level"] = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
        line["timestamp"] = self._stamp()
        if self._worker is not None:
            line["worker"] = self._worker
        data = orjson.dumps(line, default=str)
        # ``redact`` changes a line only if a key names a secret or a text holds "earer":
        # looked for in the rendered line at once, not field by field.
        if b"earer" in data or not _PLAIN_KEYS.issuperset(line):
            data = orjson.dumps(redact(None, "", line), default=str)
        self._lines.write(data)


_chain: _JsonChain | None = None  # set by configure_logging with the JSON format


class EventLine:
    """A frequent event (the outcome line): the line structlog would write, made directly.

    ``emit`` writes exactly the fields, order and redaction of ``get_logger(component)``'s
    JSON line; with any other configuration (console format, a test capturing logs) it goes
    through structlog as any other line. Not for lines with ``exc_info``.
    """

    def __init__(self, component: str) -> None:
        self._component = component
        self._log = get_logger(component)

    def emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        chain = _chain
        if chain is not None and chain.current():
            if level >= chain.level:
                chain.write(self._component, level, event, fields)
            return
        self._log.log(level, event, **fields)


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
    global _chain
    _chain = None
    if fmt == "json":
        _chain = _JsonChain(lines, getattr(logging, level), worker, structlog.get_config())
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
