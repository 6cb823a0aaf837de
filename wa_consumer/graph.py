"""The Cloud API client: one POST per message through a transport, Meta's answers made ours.

The HTTP exchange is a seam (``transport``: aiohttp or pyreqwest, ``WA_GRAPH_TRANSPORT``);
this module builds the URL and reads what Meta answered. Every failure leaves as a
``GraphApiError`` (Meta, or a proxy in front of it, answered) or a ``GraphTransportError``
(no usable answer, raised by the transport), with ``maybe_sent`` telling whether the request
may have reached Meta. The access token is only ever put in the request's header: error
texts are built from ids, statuses and Meta's message, and are scrubbed of the token in case
a proxy echoes it back.
"""

from __future__ import annotations

import re
import time
from typing import Any, Final, NamedTuple

import orjson

from .errors import GraphApiError
from .transport import Transport
from .transport.redact import MAX_ERROR_BYTES, bounded, clean

__all__ = ["MAX_ERROR_BYTES", "GraphClient", "SendResult"]

#: How much of a non-JSON body is quoted in the error message.
BODY_EXCERPT_CHARS: Final = 200
#: Bound on the per-number URL cache; a daemon sends from a few numbers per tenant.
_URL_CACHE_SIZE: Final = 4096
_NOT_JSON: Final = object()
#: What the ledger's integer columns hold; a code outside it is kept in the text only.
_INT32: Final = range(-(2**31), 2**31)
#: A whole number as Meta may write it in a string (bounded: int() refuses huge digit strings).
_WHOLE: Final = re.compile(r"\s*-?[0-9]{1,64}\s*")


class SendResult(NamedTuple):
    """Meta accepted the message: its ``wamid`` (empty for read receipts and typing)."""

    wamid: str
    status: int
    latency_ms: float
    message_status: str | None


class GraphClient:
    """Sends Cloud API request bodies, as given, from a tenant's phone number."""

    def __init__(self, transport: Transport, base_url: str, version: str) -> None:
        self._transport = transport
        self._prefix = f"{base_url.rstrip('/')}/{version.strip('/')}/"
        self._urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"GraphClient({self._prefix!r}, {self._transport.name})"

    def url_for(self, phone_number_id: str) -> str:
        """``{base}/{version}/{phone_number_id}/messages``, built once per number."""
        url = self._urls.get(phone_number_id)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[phone_number_id] = f"{self._prefix}{phone_number_id}/messages"
        return url

    async def send(self, phone_number_id: str, access_token: str, payload: bytes) -> SendResult:
        """POST ``payload`` (JSON bytes) and return the wamid, or raise a ``GraphError``."""
        started = time.perf_counter()
        status, body = await self._transport.post(
            self.url_for(phone_number_id), payload, access_token
        )
        if 200 <= status < 300:
            result = _accepted(body, status, (time.perf_counter() - started) * 1000)
            if result is not None:
                return result
        raise _api_error(status, body, access_token)


def _accepted(body: bytes, status: int, latency_ms: float) -> SendResult | None:
    """The result of a 2xx answer that carries ``messages[0].id``, else None."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    messages = data.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], dict):
        first = messages[0]
        wamid = first.get("id")
        if isinstance(wamid, str) and wamid:
            message_status = first.get("message_status")
            return SendResult(
                wamid,
                status,
                latency_ms,
                message_status if isinstance(message_status, str) else None,
            )
    if data.get("success") is True and "error" not in data:
        # Read receipts and typing indicators: accepted, but there is no message id.
        return SendResult("", status, latency_ms, None)
    return None


def _api_error(status: int, body: bytes, token: str) -> GraphApiError:
    """Meta's error object made ours; a body that is not one is described, not trusted."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _NOT_JSON
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        transient = error.get("is_transient")
        fbtrace_id = _str(error.get("fbtrace_id"))
        return GraphApiError(
            bounded(_meta_message(error, status), token),
            status=status,
            code=_int(error.get("code")),
            subcode=_int(error.get("error_subcode")),
            fbtrace_id=bounded(fbtrace_id, token) if fbtrace_id else None,
            is_transient=transient if isinstance(transient, bool) else None,
        )
    # A 2xx without a wamid: Meta may have taken the message, so a resend is ambiguous.
    accepted = 200 <= status < 300
    if not body.strip():
        message = f"HTTP {status} with an empty body"
    elif data is _NOT_JSON:
        message = f"HTTP {status} with a non-JSON body: {_excerpt(body, token)}"
    elif accepted:
        message = f"HTTP {status} without messages[0].id: {_excerpt(body, token)}"
    else:
        message = f"HTTP {status} with an unexpected JSON body: {_excerpt(body, token)}"
    return GraphApiError(
        bounded(message, token),
        status=status,
        maybe_sent=accepted,
        short_code="no_wamid" if accepted else None,
    )


def _meta_message(error: dict[str, Any], status: int) -> str:
    message = _str(error.get("message")) or f"HTTP {status} error without a message"
    data = error.get("error_data")
    details = _str(data.get("details")) if isinstance(data, dict) else None
    if details and details not in message:
        message = f"{message}: {details}"
    for key in ("code", "error_subcode"):
        # Out of the ledger's integer range: not kept as a number, but the reader still sees it.
        number = _whole(error.get(key))
        if number is not None and number not in _INT32:
            message = f"{message} [{key} {number}]"
    return message


def _excerpt(body: bytes, token: str) -> str:
    """The start of ``body`` on one line, the token scrubbed from all of it before the cut.

    Cut first, a token across the cut would leave its prefix, which no later scrub finds.
    """
    text = clean(body.decode("utf-8", "replace"), token)
    return " ".join(text.split())[:BODY_EXCERPT_CHARS]


def _whole(value: object) -> int | None:
    """``value`` as a whole number if it is one (an int, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _WHOLE.fullmatch(value):
        return int(value)
    return None


def _int(value: object) -> int | None:
    """A code for the ledger's integer columns: a whole number in the signed 32-bit range."""
    number = _whole(value)
    return number if number is not None and number in _INT32 else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
