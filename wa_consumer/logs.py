"""structlog, configured once by the CLI; library loggers go through it too.

Redaction is the second line of defence for access tokens (the first is never putting one
in an exception, repr or header): any ``Bearer <x>`` and any key that names a token is masked.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

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
        factory: Any = structlog.BytesLoggerFactory(sys.stdout.buffer)
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
