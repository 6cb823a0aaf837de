"""Models of the Cloud API ``/messages`` request body (``wabaPayload``).

``WabaPayload`` is a union chosen by ``type``. Meta lets ``type`` out (it then means
``text``) and its own examples send interactive messages without one, so when ``type`` is
absent the type is read from the message object present; a body with ``status`` and no
``type`` is a read receipt (optionally with a typing indicator).

Modules: ``common`` (base model, envelope fields, media object), ``basic`` (text, location,
contacts, reaction, status), ``media``, ``template``, ``interactive`` with ``blocks`` (header,
body, footer) and ``commerce`` (product, catalog and order messages).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag

from .basic import (
    ContactsMessage,
    LocationMessage,
    ReactionMessage,
    StatusMessage,
    TextMessage,
)
from .common import CloudModel, Media, WabaMessage
from .interactive import InteractiveMessage
from .media import AudioMessage, DocumentMessage, ImageMessage, StickerMessage, VideoMessage
from .template import TemplateMessage

MESSAGE_TYPES: tuple[str, ...] = (
    "text",
    "template",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
)
"""The values ``type`` may take; when it is absent, the first of these present as a key wins
(``text`` first: it is Meta's default)."""

STATUS = "status"
"""The type the daemon gives read receipts and typing indicators, which carry no ``type``."""


def message_type(payload: Any) -> str | None:
    """The union tag of a ``wabaPayload``: its ``type``, else inferred; None if neither."""
    if isinstance(payload, dict):
        declared = payload.get("type")
        if declared is not None:
            return declared if isinstance(declared, str) else None
        for name in MESSAGE_TYPES:
            if name in payload:
                return name
        return STATUS if "status" in payload else None
    if isinstance(payload, CloudModel):  # already built, e.g. by a publisher
        kind = getattr(payload, "kind", None)
        return kind if isinstance(kind, str) else None
    return None


WabaPayload = Annotated[
    Annotated[TextMessage, Tag("text")]
    | Annotated[TemplateMessage, Tag("template")]
    | Annotated[ImageMessage, Tag("image")]
    | Annotated[VideoMessage, Tag("video")]
    | Annotated[AudioMessage, Tag("audio")]
    | Annotated[DocumentMessage, Tag("document")]
    | Annotated[StickerMessage, Tag("sticker")]
    | Annotated[LocationMessage, Tag("location")]
    | Annotated[ContactsMessage, Tag("contacts")]
    | Annotated[InteractiveMessage, Tag("interactive")]
    | Annotated[ReactionMessage, Tag("reaction")]
    | Annotated[StatusMessage, Tag(STATUS)],
    Discriminator(message_type),
]
"""One Cloud API ``/messages`` request body."""

__all__ = [
    "MESSAGE_TYPES",
    "STATUS",
    "AudioMessage",
    "CloudModel",
    "ContactsMessage",
    "DocumentMessage",
    "ImageMessage",
    "InteractiveMessage",
    "LocationMessage",
    "Media",
    "ReactionMessage",
    "StatusMessage",
    "StickerMessage",
    "TemplateMessage",
    "TextMessage",
    "VideoMessage",
    "WabaMessage",
    "WabaPayload",
    "message_type",
]
