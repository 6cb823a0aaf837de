"""Building blocks shared by interactive messages: header, body, footer, sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol, Self

from pydantic import Field, model_validator

from .common import CloudModel, Media, NonEmptyStr

_TYPED_HEADERS = frozenset({"text", "image", "video", "document"})


class Header(CloudModel):
    # Not an enum: Meta's multi-product example carries a placeholder here.
    type: NonEmptyStr
    text: Annotated[str, Field(max_length=60)] | None = None
    sub_text: Annotated[str, Field(max_length=60)] | None = None
    image: Media | None = None
    video: Media | None = None
    document: Media | None = None

    @model_validator(mode="after")
    def _has_its_object(self) -> Self:
        if self.type in _TYPED_HEADERS and getattr(self, self.type) is None:
            raise ValueError(f"a header of type '{self.type}' needs '{self.type}'")
        return self


class Body(CloudModel):
    text: Annotated[str, Field(min_length=1, max_length=1024)]


class ListBody(CloudModel):
    text: Annotated[str, Field(min_length=1, max_length=4096)]


class Footer(CloudModel):
    text: Annotated[str, Field(max_length=60)]


class InteractiveBase(CloudModel):
    """What every interactive type may carry besides its body and action."""

    header: Header | None = None
    footer: Footer | None = None


class _Titled(Protocol):
    title: str | None


def require_section_titles(sections: Sequence[_Titled]) -> None:
    """Meta wants a title on every section as soon as there are two."""
    if len(sections) > 1 and any(section.title is None for section in sections):
        raise ValueError("every section needs a 'title' when there is more than one")
