"""The message producers publish (SPEC §3), and ``parse``: bytes in, an ``Outbound`` out.

``parse`` decodes once, validates the dict once against ``OutboundMessage`` and re-serialises
the ``wabaPayload`` dict as it came (same keys, order and values): that is what is POSTed to
Meta, never a dump of the model, which would add defaults. Everything that can never be sent
raises ``InvalidMessage`` with where and what, and the ids when they could be read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidMessage
from .payloads import MESSAGE_TYPES, STATUS, WabaPayload, message_type

__all__ = [
    "MAX_MESSAGE_BYTES", "Metadata", "Outbound", "OutboundMessage", "parse", "with_callback",
]  # fmt: skip

MAX_MESSAGE_BYTES = 256 * 1024
"""Default largest body accepted; a larger one is refused before it is decoded."""

# What a producer controls is bounded here, where it enters: a value the ledger or the broker
# would refuse (a NUL, an id past the index's row limit, a header past the frame limit) is
# this message's own ``invalid``, never a failed batch or a closed connection for the others.
MAX_ID_CHARS = 256
"""Longest ``tenantId`` or ``internalId`` (they key the ledger and go into headers)."""
MAX_RECIPIENT_CHARS = 64
MAX_METADATA_BYTES = 16 * 1024
"""Largest JSON of the extra metadata keys (kept in the ledger and the logs)."""
MAX_METADATA_DEPTH = 16
CALLBACK_KEY = "biz_opaque_callback_data"
"""Meta echoes it in the message's status webhooks (512 characters at most)."""

_MAX_REASON = 300
_MAX_WHERE = 200
_UTF8_BOM = b"\xef\xbb\xbf"
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
_KNOWN_TYPES = ", ".join(MESSAGE_TYPES)
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


class Metadata(BaseModel):
    """Who sends and which message this is; other keys are carried to the logs and the ledger."""

    model_config = ConfigDict(extra="allow")

    # The descriptions are published in config/outbound-message.schema.json (SPEC §3).
    tenantId: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_ID_CHARS,
            description="The tenant sending: picks the WhatsApp credentials. "
            "Also the last part of the routing key, outbound.processed.<tenantId>.",
        ),
    ]
    internalId: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_ID_CHARS,
            description="The producer's id of this logical message and the idempotency key: "
            "one internalId is sent once. Publish it as the AMQP message_id too.",
        ),
    ]
    phoneNumberId: Annotated[
        Annotated[str, Field(pattern=r"^[0-9]{1,32}$")] | None,
        Field(
            description="The WhatsApp Business phone number id to send from (digits); "
            "absent: the tenant's own. It must be one the tenant's credentials allow.",
        ),
    ] = None
    expiresAt: Annotated[
        datetime | None,
        Field(
            description="Never send after this time (ISO-8601; UTC when no zone is given): "
            "the message is then dead with category expired.",
        ),
    ] = None

    @field_validator("tenantId", "internalId")
    @classmethod
    def _printable(cls, value: str) -> str:
        if _has_control(value):
            raise ValueError("must not hold control characters (NUL, newline, ...)")
        return value

    @field_validator("expiresAt")
    @classmethod
    def _assume_utc(cls, value: datetime | None) -> datetime | None:
        """A time without a zone is read as UTC, so comparisons never mix naive and aware."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class OutboundMessage(BaseModel):
    """One message on ``outbound-processed``: the envelope and the Cloud API body."""

    metadata: Metadata
    wabaPayload: WabaPayload


@dataclass(frozen=True, slots=True)
class Outbound:
    """A parsed message, ready for the pipeline."""

    tenant_id: str
    internal_id: str
    phone_number_id: str | None
    expires_at: datetime | None
    type: str
    """The ``wabaPayload`` type (``text``, ...), ``status`` for read receipts."""
    to: str | None
    payload: bytes
    """The ``wabaPayload`` as received, as JSON: the body POSTed to Meta."""
    extra: Mapping[str, Any]
    """Metadata keys other than the four above."""
    callback: str | None = None
    """The producer's own ``biz_opaque_callback_data``, when it is not the internalId."""


def parse(body: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Outbound:
    """Read one message body; raise ``InvalidMessage`` if it can never be sent as is."""
    if len(body) > max_bytes:
        raise InvalidMessage(f"the message is {len(body)} bytes, over the limit of {max_bytes}")
    if body[:3] == _UTF8_BOM:  # some producers write one; JSON parsers refuse it
        body = body[3:]
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(_undecodable(body, exc)) from exc
    if not isinstance(obj, dict):
        raise InvalidMessage(f"the body should be a JSON object, not {_kind(obj)}")
    try:
        message = OutboundMessage.model_validate(obj)
    except ValidationError as exc:
        reason, where = _describe(exc, obj)
        tenant_id, internal_id = _ids(obj)
        raise InvalidMessage(reason, where, tenant_id=tenant_id, internal_id=internal_id) from exc
    metadata = message.metadata
    waba: dict[str, Any] = obj["wabaPayload"]
    to = waba.get("to")
    extra = metadata.model_extra or _NO_EXTRA
    problem = _unbounded(to, extra)
    if problem is not None:
        raise InvalidMessage(
            problem[1], problem[0], tenant_id=metadata.tenantId, internal_id=metadata.internalId
        )
    kind = message.wabaPayload.kind
    callback: str | None = waba.get(CALLBACK_KEY)  # the model checked it is a str
    waba = with_callback(waba, metadata.internalId)
    return Outbound(
        tenant_id=metadata.tenantId,
        internal_id=metadata.internalId,
        phone_number_id=metadata.phoneNumberId,
        expires_at=metadata.expiresAt,
        type=kind,
        to=to if isinstance(to, str) else None,
        payload=_payload(waba, metadata.tenantId, metadata.internalId),
        extra=extra,
        callback=callback if callback != metadata.internalId else None,
    )


def with_callback(waba: dict[str, Any], internal_id: str) -> dict[str, Any]:
    """``waba`` as it is sent: with ``biz_opaque_callback_data`` = the internalId where the
    producer set none. Meta echoes it in every status webhook of the message, so a status ties
    to its message even when the send's answer (its wamid) was lost (SPEC §13). Not for read
    receipts and typing indicators, which have no statuses."""
    if waba.get(CALLBACK_KEY) is not None or message_type(waba) == STATUS:
        return waba
    return {**waba, CALLBACK_KEY: internal_id}


def _payload(waba: dict[str, Any], tenant_id: str, internal_id: str) -> bytes:
    try:
        return orjson.dumps(waba)
    except orjson.JSONEncodeError as exc:  # nested past orjson's 255 levels
        reason = f"cannot be sent as JSON ({exc})"
        where = "wabaPayload"
        raise InvalidMessage(reason, where, tenant_id=tenant_id, internal_id=internal_id) from exc


def _unbounded(to: object, extra: Mapping[str, Any]) -> tuple[str, str] | None:
    """(where, reason) of a value the ledger could not keep, or None."""
    if isinstance(to, str) and (len(to) > MAX_RECIPIENT_CHARS or _has_control(to)):
        return "wabaPayload.to", (
            f"should be at most {MAX_RECIPIENT_CHARS} characters with no control characters"
        )
    if not extra:
        return None
    # Depth first: orjson refuses to write past 255 levels, and PostgreSQL's jsonb nests less.
    stack: list[tuple[str, Any, int]] = [("metadata", extra, 0)]
    while stack:
        where, value, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return _cut(where, _MAX_WHERE), f"nests deeper than {MAX_METADATA_DEPTH} levels"
        if isinstance(value, str):
            if "\x00" in value:
                return _cut(where, _MAX_WHERE), "holds a NUL character (\\u0000)"
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if "\x00" in key:
                    return _cut(where, _MAX_WHERE), "has a key with a NUL character (\\u0000)"
                stack.append((f"{where}.{key}", item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))
    size = len(orjson.dumps(dict(extra)))
    if size > MAX_METADATA_BYTES:
        return "metadata", (
            f"extra keys take {size} bytes as JSON, over the limit of {MAX_METADATA_BYTES}"
        )
    return None


def _has_control(text: str) -> bool:
    return not text.isprintable()


# -- error reports (off the hot path) --------------------------------------------------------


def _undecodable(body: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"the body is not UTF-8 (invalid byte at offset {bad.start})"
    return _cut(f"the body is not JSON: {exc}", _MAX_REASON)


def _kind(value: Any) -> str:
    """How a JSON value is named in a reason."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _ids(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """The tenant and internal ids, if readable, for the dead letter's headers and logs."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None, None
    return _id(metadata.get("tenantId")), _id(metadata.get("internalId"))


def _id(value: object) -> str | None:
    """An id fit for headers and the ledger, else None (a bad id is only named in the reason)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and not _has_control(value):
        return value
    return None


def _describe(exc: ValidationError, obj: dict[str, Any]) -> tuple[str, str]:
    """The first error as (reason, where), in words a producer can act on."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    where, node = _where(first["loc"], obj, missing=kind == "missing")
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        expected = (
            _KNOWN_TYPES if where == "wabaPayload" else first.get("ctx", {}).get("expected_tags")
        )
        reason = f"unknown type {_cut(repr(tag), 60)}; expected one of: {expected}"
        where += ".type"
    elif kind == "union_tag_not_found":
        if not isinstance(node, dict):
            reason = f"should be a JSON object, not {_kind(node)}"
        else:
            where += ".type"
            if node.get("type") is not None:
                reason = "should be a string"
            elif where == "wabaPayload.type":
                reason = "is missing, and no message object (text, template, ...) is present"
            else:
                reason = "Field required"
    elif kind in _NOT_AN_OBJECT:
        reason = f"should be a JSON object, not {_kind(node)}"
    elif kind == "list_type":
        reason = f"should be a JSON array, not {_kind(node)}"
    else:
        reason = first["msg"].removeprefix("Value error, ")
    if len(errors) > 1:
        more = f" (and {len(errors) - 1} more)"
        reason = _cut(reason, _MAX_REASON - len(more)) + more
    return _cut(reason, _MAX_REASON), _cut(where, _MAX_WHERE)


def _where(loc: Sequence[int | str], obj: Any, *, missing: bool) -> tuple[str, Any]:
    """A JSON path for pydantic's ``loc``, and the value found there.

    ``loc`` also names the member a union picked: the tag after ``wabaPayload`` and after
    ``interactive`` (dropped here), and a member such as ``str`` after a plain union (not in
    the document, so the walk stops there).
    """
    steps = list(loc)
    if len(steps) > 3 and steps[0] == "wabaPayload" and steps[2] == "interactive":
        del steps[3]
    if len(steps) > 1 and steps[0] == "wabaPayload":
        del steps[1]
    path = ""
    node = obj
    last = len(steps) - 1
    for i, key in enumerate(steps):
        if isinstance(key, int) and isinstance(node, list) and 0 <= key < len(node):
            path += f"[{key}]"
            node = node[key]
        elif isinstance(key, str) and isinstance(node, dict) and key in node:
            path += f".{key}" if path else key
            node = node[key]
        elif isinstance(key, str) and missing and i == last:
            path += f".{key}" if path else key
            node = None
        else:
            break
    return path, node


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
