"""Message documents for the common types, built the way the daemon validates them.

``text_message``, ``template_message`` and ``media_message`` return the whole envelope
(``metadata`` + ``wabaPayload``) as a dict, for ``Publisher.publish`` or ``publish_many``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from .errors import InvalidMessage

__all__ = ["MediaKind", "media_message", "template_message", "text_message"]

MediaKind = Literal["image", "video", "audio", "document", "sticker"]
_MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)
_CAPTIONED = frozenset({"image", "video", "document"})


def text_message(
    tenant_id: str,
    to: str,
    body: str,
    *,
    internal_id: str | None = None,
    phone_number_id: str | None = None,
    expires_at: datetime | str | None = None,
    preview_url: bool = False,
    reply_to: str | None = None,
    callback_data: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A text message document (for ``publish`` or ``publish_many``); not yet validated."""
    return _envelope(
        tenant_id,
        to,
        "text",
        {"body": body, "preview_url": preview_url},
        internal_id=internal_id,
        phone_number_id=phone_number_id,
        expires_at=expires_at,
        reply_to=reply_to,
        callback_data=callback_data,
        metadata=metadata,
    )


def template_message(
    tenant_id: str,
    to: str,
    name: str,
    language: str,
    components: Sequence[Mapping[str, Any]] | None = None,
    *,
    internal_id: str | None = None,
    phone_number_id: str | None = None,
    expires_at: datetime | str | None = None,
    reply_to: str | None = None,
    callback_data: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A template message document; ``components`` as the Cloud API takes them."""
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components is not None:
        template["components"] = [dict(c) for c in components]
    return _envelope(
        tenant_id,
        to,
        "template",
        template,
        internal_id=internal_id,
        phone_number_id=phone_number_id,
        expires_at=expires_at,
        reply_to=reply_to,
        callback_data=callback_data,
        metadata=metadata,
    )


def media_message(
    tenant_id: str,
    to: str,
    kind: MediaKind,
    *,
    media_id: str | None = None,
    link: str | None = None,
    caption: str | None = None,
    filename: str | None = None,
    internal_id: str | None = None,
    phone_number_id: str | None = None,
    expires_at: datetime | str | None = None,
    reply_to: str | None = None,
    callback_data: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A media message document. Raises ``InvalidMessage`` for what Meta would refuse
    and the models let pass (a caption on audio or a sticker, a filename not on a document).
    """
    where = f"wabaPayload.{kind}"
    if kind not in _MEDIA_KINDS:
        raise InvalidMessage(f"unknown media kind {kind!r}; expected one of: {_MEDIA_KINDS}")
    if caption is not None and kind not in _CAPTIONED:
        raise InvalidMessage(f"a caption is not allowed on {kind}", f"{where}.caption")
    if filename is not None and kind != "document":
        raise InvalidMessage("only a document has a filename", f"{where}.filename")
    media: dict[str, Any] = {}
    if media_id is not None:
        media["id"] = media_id
    if link is not None:
        media["link"] = link
    if caption is not None:
        media["caption"] = caption
    if filename is not None:
        media["filename"] = filename
    return _envelope(
        tenant_id,
        to,
        kind,
        media,
        internal_id=internal_id,
        phone_number_id=phone_number_id,
        expires_at=expires_at,
        reply_to=reply_to,
        callback_data=callback_data,
        metadata=metadata,
    )


def _envelope(
    tenant_id: str,
    to: str,
    kind: str,
    content: dict[str, Any],
    *,
    internal_id: str | None,
    phone_number_id: str | None,
    expires_at: datetime | str | None,
    reply_to: str | None,
    callback_data: str | None,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        **(metadata or {}),
        "tenantId": tenant_id,
        "internalId": internal_id or str(uuid.uuid4()),
    }
    if phone_number_id is not None:
        meta["phoneNumberId"] = phone_number_id
    if expires_at is not None:
        meta["expiresAt"] = _iso(expires_at)
    payload: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
    }
    if reply_to is not None:
        payload["context"] = {"message_id": reply_to}
    if callback_data is not None:
        payload["biz_opaque_callback_data"] = callback_data
    return {"metadata": meta, "wabaPayload": payload}


def _iso(value: datetime | str) -> str:
    """ISO-8601 in UTC; a time without a zone is taken as UTC, as the daemon reads it."""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
