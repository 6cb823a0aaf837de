"""``X-Hub-Signature-256``: how Meta signs a webhook, and how we check it (SPEC §13).

Meta sends ``sha256=`` and the hex HMAC-SHA256 of the raw body, keyed with the app secret.
The check runs on the bytes as received (a body parsed and written again would not match),
against every configured secret (one per Meta app), in constant time. A header that is
missing or not of that exact shape is simply not valid: it never raises, so a hostile header
cannot turn into a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Final

HEADER: Final = "X-Hub-Signature-256"
PREFIX: Final = "sha256="
_HEX_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")


def sign(body: bytes, secret: bytes) -> str:
    """The header value Meta would send for ``body`` signed with ``secret``."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str | None, secrets: Sequence[bytes]) -> bool:
    """True when ``header`` is ``sha256=<hex>`` of ``body`` with any of ``secrets``.

    The hex is decoded first and digests are compared as bytes: ``hmac.compare_digest``
    raises on a non-ASCII ``str``, and a header is whatever the client sent.
    """
    if header is None or not header.startswith(PREFIX):
        return False
    given = header[len(PREFIX) :]
    if not _HEX_DIGEST.fullmatch(given):
        return False
    digest = bytes.fromhex(given)
    return any(
        hmac.compare_digest(digest, hmac.new(secret, body, hashlib.sha256).digest())
        for secret in secrets
    )
