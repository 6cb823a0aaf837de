"""What the console may show of a message, its headers and its ledger rows.

Access tokens never reach the queue or the ledger (the daemon puts none in a body, a header,
an error text or a row); this is the second line of defence, as ``logs.redact`` is for log
lines: any key that names a secret, any ``Bearer <x>``, and anything shaped like a Meta
access token (``EAA...``) is shown as ``***``, at any depth. Values are made JSON-safe
(bytes, times, AMQP tables) on the way.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import orjson

MASK: Final = "***"
_SECRET_KEY: Final = re.compile(r"(?i)token|secret|password|authorization|api[-_]?key|cookie")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]+")
_META_TOKEN: Final = re.compile(r"\bEAA[A-Za-z0-9]{20,}")
_MAX_DEPTH: Final = 32


def scrub_text(text: str) -> str:
    """``text`` with bearer tokens and Meta access tokens masked."""
    if "earer" in text or "EAA" in text:
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
        text = _META_TOKEN.sub(MASK, text)
    return text


def scrub(value: Any, *, keys: bool = True, depth: int = 0) -> Any:
    """``value`` as JSON can hold it, secrets masked (see the module docstring).

    ``keys=False`` masks by shape only: a message body's keys are Meta's (``flow_token`` is a
    flow's id, not a credential) and an edit of the body must get them back as they were.
    """
    if depth > _MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {
            str(k): MASK
            if keys and _SECRET_KEY.search(str(k))
            else scrub(v, keys=keys, depth=depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v, keys=keys, depth=depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return scrub_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub_text(str(value))


def pretty_body(body: bytes) -> tuple[str, Any]:
    """The body as indented JSON (and its parsed, scrubbed value), or as text if not JSON."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return scrub_text(body.decode("utf-8", "replace")), None
    clean = scrub(parsed, keys=False)
    return orjson.dumps(clean, option=orjson.OPT_INDENT_2).decode(), clean
