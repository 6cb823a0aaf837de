"""Error text made safe to keep: control characters out, the access token scrubbed, bounded.

Shared by the transports (what went wrong on the wire) and ``graph`` (what Meta answered):
both texts end up in headers, logs and the ledger.
"""

from __future__ import annotations

import re
from typing import Final

#: Bound on error text kept from an answer (it ends up in headers and the ledger).
MAX_ERROR_BYTES: Final = 1024
#: C0 control characters but tab and newline: PostgreSQL refuses NUL in text, the rest garble.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f]")


def bounded(text: str, token: str) -> str:
    """``text`` clean (see ``clean``) and cut to ``MAX_ERROR_BYTES`` of UTF-8."""
    text = clean(text, token)
    raw = text.encode("utf-8")
    if len(raw) <= MAX_ERROR_BYTES:
        return text
    return raw[: MAX_ERROR_BYTES - 3].decode("utf-8", "ignore") + "..."


def clean(text: str, token: str) -> str:
    """``text`` without C0 control characters (tab and newline stay), then without the token.

    In that order: a token with a NUL put in it would otherwise come whole out of the strip.
    """
    text = _CONTROL.sub("", text)
    if token and token in text:
        text = text.replace(token, "[redacted]")
    return text
