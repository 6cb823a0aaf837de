"""Text, location, contacts and reaction messages, and the status calls with no ``type``."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from .common import CloudModel, NonEmptyStr, WabaMessage


class Text(CloudModel):
    body: Annotated[str, Field(min_length=1, max_length=4096)]
    preview_url: bool | None = None


class TextMessage(WabaMessage):
    kind: ClassVar[str] = "text"
    type: Literal["text"] = "text"
    text: Text


class Location(CloudModel):
    # Numbers, or numeric strings (Meta's schema types them as strings).
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    name: str | None = None
    address: str | None = None


class LocationMessage(WabaMessage):
    kind: ClassVar[str] = "location"
    type: Literal["location"] = "location"
    location: Location


class ContactName(CloudModel):
    formatted_name: NonEmptyStr
    first_name: str | None = None
    last_name: str | None = None
    middle_name: str | None = None
    prefix: str | None = None
    suffix: str | None = None


class ContactAddress(CloudModel):
    street: str | None = None
    city: str | None = None
    state: str | None = None
    zip: str | None = None
    country: str | None = None
    country_code: str | None = None
    type: str | None = None


class ContactEmail(CloudModel):
    email: str | None = None
    type: str | None = None


class ContactOrg(CloudModel):
    company: str | None = None
    department: str | None = None
    title: str | None = None


class ContactPhone(CloudModel):
    phone: str | None = None
    wa_id: str | None = None
    type: str | None = None


class ContactUrl(CloudModel):
    url: str | None = None
    type: str | None = None


class Contact(CloudModel):
    name: ContactName
    addresses: list[ContactAddress] | None = None
    birthday: str | None = None
    emails: list[ContactEmail] | None = None
    org: ContactOrg | None = None
    phones: list[ContactPhone] | None = None
    urls: list[ContactUrl] | None = None


class ContactsMessage(WabaMessage):
    kind: ClassVar[str] = "contacts"
    type: Literal["contacts"] = "contacts"
    contacts: Annotated[list[Contact], Field(min_length=1, max_length=257)]


class Reaction(CloudModel):
    message_id: NonEmptyStr
    # An empty string removes an earlier reaction.
    emoji: str


class ReactionMessage(WabaMessage):
    kind: ClassVar[str] = "reaction"
    type: Literal["reaction"] = "reaction"
    reaction: Reaction


class TypingIndicator(CloudModel):
    type: Literal["text"]


class StatusMessage(CloudModel):
    """A read receipt, optionally with a typing indicator: no ``type``, no ``to``."""

    kind: ClassVar[str] = "status"

    messaging_product: Literal["whatsapp"]
    status: Literal["read"]
    message_id: NonEmptyStr
    typing_indicator: TypingIndicator | None = None
