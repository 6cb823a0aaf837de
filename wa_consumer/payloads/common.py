"""Pieces every Cloud API message shares: the base model, the envelope fields, media.

Every model allows unknown fields (``extra="allow"``): Meta adds fields often, and a field we
do not know must reach Meta rather than kill the message. The fields we do know are checked
against the limits Meta documents, so a message Meta would surely refuse dies before a call.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

NonEmptyStr = Annotated[str, Field(min_length=1)]
"""A string Meta needs to hold something (ids, names, recipients)."""

Caption = Annotated[str, Field(max_length=1024)]


class CloudModel(BaseModel):
    """Base of every Cloud API object: unknown fields pass through, known ones are checked."""

    model_config = ConfigDict(extra="allow")


class Context(CloudModel):
    """``context``: the message this one replies to."""

    message_id: NonEmptyStr


class WabaMessage(CloudModel):
    """Fields of every ``/messages`` body that sends something to a recipient.

    ``kind`` is the message type as the rest of the daemon names it (logs, metrics, ledger);
    it equals ``type`` but is also known when ``type`` was left out of the body.
    """

    kind: ClassVar[str]

    messaging_product: Literal["whatsapp"]
    recipient_type: Literal["individual", "group"] | None = None
    # Not digits only: Meta takes '+', spaces and dashes, and group ids for groups.
    to: NonEmptyStr
    context: Context | None = None
    biz_opaque_callback_data: Annotated[str, Field(max_length=512)] | None = None


class Media(CloudModel):
    """A media object: exactly one of ``id`` (uploaded) or ``link`` (fetched by Meta)."""

    # The same rule for validators in other languages, in the published JSON Schema.
    model_config = ConfigDict(
        extra="allow", json_schema_extra={"oneOf": [{"required": ["id"]}, {"required": ["link"]}]}
    )

    id: NonEmptyStr | None = None
    # Not validated as a URL: Meta fetches it and says so if it cannot.
    link: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if self.id is not None and self.link is not None:
            raise ValueError("has both 'id' and 'link'; give exactly one")
        if self.id is None and self.link is None:
            raise ValueError("needs 'id' or 'link'")
        return self
