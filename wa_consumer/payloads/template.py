"""Template messages: a pre-approved template by name and language, with its parameters.

Component and parameter types are many and grow often (carousel, limited-time offer, coupon
code, ...), so an unknown one passes; a known one must carry the object its type names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import model_validator

from .common import CloudModel, Media, NonEmptyStr, WabaMessage


class Language(CloudModel):
    code: NonEmptyStr
    policy: str | None = None


class Currency(CloudModel):
    fallback_value: str
    code: NonEmptyStr
    amount_1000: int


class DateTime(CloudModel):
    fallback_value: str


class TemplateParameter(CloudModel):
    """One value for a template placeholder, a media header or a button."""

    type: NonEmptyStr
    # Meta's own examples send booleans here (quick replies of a sample template).
    text: str | bool | int | float | None = None
    currency: Currency | None = None
    date_time: DateTime | None = None
    image: Media | None = None
    video: Media | None = None
    document: Media | None = None
    payload: str | None = None
    action: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_its_object(self) -> Self:
        if self.type in _PARAMETER_FIELDS and getattr(self, self.type) is None:
            raise ValueError(f"a parameter of type '{self.type}' needs '{self.type}'")
        return self


_PARAMETER_FIELDS = frozenset(
    {"text", "currency", "date_time", "image", "video", "document", "payload", "action"}
)


class TemplateComponent(CloudModel):
    type: NonEmptyStr
    sub_type: NonEmptyStr | None = None
    # Meta's examples give the button index as a number and as a string.
    index: int | str | None = None
    parameters: list[TemplateParameter] | None = None

    @model_validator(mode="after")
    def _button_is_placed(self) -> Self:
        if self.type.lower() == "button" and (self.sub_type is None or self.index is None):
            raise ValueError("a button component needs 'sub_type' and 'index'")
        return self


class Template(CloudModel):
    name: NonEmptyStr
    language: Language
    components: list[TemplateComponent] | None = None


class TemplateMessage(WabaMessage):
    kind: ClassVar[str] = "template"
    type: Literal["template"] = "template"
    template: Template
