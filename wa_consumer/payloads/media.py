"""Media messages: image, video, audio, document, sticker, each by ``id`` or ``link``."""

from __future__ import annotations

from typing import ClassVar, Literal

from .common import Caption, Media, WabaMessage


class Image(Media):
    caption: Caption | None = None


class Video(Media):
    caption: Caption | None = None


class Audio(Media):
    # True sends the audio as a voice note (Meta wants OGG/OPUS for that).
    voice: bool | None = None


class Document(Media):
    caption: Caption | None = None
    filename: str | None = None


class Sticker(Media):
    pass


class ImageMessage(WabaMessage):
    kind: ClassVar[str] = "image"
    type: Literal["image"] = "image"
    image: Image


class VideoMessage(WabaMessage):
    kind: ClassVar[str] = "video"
    type: Literal["video"] = "video"
    video: Video


class AudioMessage(WabaMessage):
    kind: ClassVar[str] = "audio"
    type: Literal["audio"] = "audio"
    audio: Audio


class DocumentMessage(WabaMessage):
    kind: ClassVar[str] = "document"
    type: Literal["document"] = "document"
    document: Document


class StickerMessage(WabaMessage):
    kind: ClassVar[str] = "sticker"
    type: Literal["sticker"] = "sticker"
    sticker: Sticker
