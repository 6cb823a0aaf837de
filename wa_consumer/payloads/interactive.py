"""Interactive messages, one model per ``interactive.type`` (a discriminated union).

Limits are Meta's: 3 reply buttons of 20 characters, lists of 10 rows in at most 10
sections, footer 60, body 1024 (list 4096). The commerce types live in ``commerce``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from .blocks import Body, InteractiveBase, ListBody, require_section_titles
from .commerce import (
    CatalogInteractive,
    OrderDetailsInteractive,
    OrderStatusInteractive,
    ProductInteractive,
    ProductListInteractive,
)
from .common import CloudModel, NonEmptyStr, WabaMessage

# -- reply buttons ---------------------------------------------------------------------------


class Reply(CloudModel):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    title: Annotated[str, Field(min_length=1, max_length=20)]


class ReplyButton(CloudModel):
    type: Literal["reply"]
    reply: Reply


class ButtonAction(CloudModel):
    buttons: Annotated[list[ReplyButton], Field(min_length=1, max_length=3)]


class ButtonInteractive(InteractiveBase):
    type: Literal["button"]
    body: Body
    action: ButtonAction


# -- list ------------------------------------------------------------------------------------


class Row(CloudModel):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    title: Annotated[str, Field(min_length=1, max_length=24)]
    description: Annotated[str, Field(max_length=72)] | None = None


class Section(CloudModel):
    title: Annotated[str, Field(max_length=24)] | None = None
    rows: Annotated[list[Row], Field(min_length=1, max_length=10)]


class ListAction(CloudModel):
    button: Annotated[str, Field(min_length=1, max_length=20)]
    sections: Annotated[list[Section], Field(min_length=1, max_length=10)]

    @model_validator(mode="after")
    def _within_limits(self) -> Self:
        require_section_titles(self.sections)
        if sum(len(section.rows) for section in self.sections) > 10:
            raise ValueError("a list holds at most 10 rows across all its sections")
        return self


class ListInteractive(InteractiveBase):
    type: Literal["list"]
    body: ListBody
    action: ListAction


# -- call to action, flow --------------------------------------------------------------------


class CtaUrlParameters(CloudModel):
    display_text: Annotated[str, Field(min_length=1, max_length=20)]
    url: NonEmptyStr


class CtaUrlAction(CloudModel):
    name: Literal["cta_url"]
    parameters: CtaUrlParameters


class CtaUrlInteractive(InteractiveBase):
    type: Literal["cta_url"]
    body: Body
    action: CtaUrlAction


class FlowParameters(CloudModel):
    flow_message_version: NonEmptyStr | int
    flow_cta: NonEmptyStr
    flow_id: NonEmptyStr | None = None
    flow_name: NonEmptyStr | None = None
    flow_token: str | None = None
    flow_action: str | None = None
    flow_action_payload: dict[str, Any] | None = None
    mode: str | None = None

    @model_validator(mode="after")
    def _names_one_flow(self) -> Self:
        if (self.flow_id is None) == (self.flow_name is None):
            raise ValueError("give exactly one of 'flow_id' or 'flow_name'")
        return self


class FlowAction(CloudModel):
    name: Literal["flow"]
    parameters: FlowParameters


class FlowInteractive(InteractiveBase):
    type: Literal["flow"]
    body: Body
    action: FlowAction


# -- the rest: an action with a fixed name and free parameters --------------------------------


class CallPermissionAction(CloudModel):
    name: Literal["call_permission_request"]


class CallPermissionInteractive(InteractiveBase):
    type: Literal["call_permission_request"]
    body: Body
    action: CallPermissionAction


class LocationRequestAction(CloudModel):
    name: Literal["send_location"]


class LocationRequestInteractive(InteractiveBase):
    type: Literal["location_request_message"]
    body: Body
    action: LocationRequestAction


class VoiceCallAction(CloudModel):
    name: Literal["voice_call"]
    parameters: dict[str, Any] | None = None


class VoiceCallInteractive(InteractiveBase):
    type: Literal["voice_call"]
    body: Body
    action: VoiceCallAction


class AddressAction(CloudModel):
    name: Literal["address_message"]
    parameters: dict[str, Any] | None = None


class AddressInteractive(InteractiveBase):
    type: Literal["address_message"]
    body: Body
    action: AddressAction


class CarouselAction(CloudModel):
    cards: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=10)]


class CarouselInteractive(InteractiveBase):
    type: Literal["carousel"]
    body: Body
    action: CarouselAction


Interactive = Annotated[
    ButtonInteractive
    | ListInteractive
    | CtaUrlInteractive
    | FlowInteractive
    | ProductInteractive
    | ProductListInteractive
    | CatalogInteractive
    | OrderDetailsInteractive
    | OrderStatusInteractive
    | CallPermissionInteractive
    | LocationRequestInteractive
    | VoiceCallInteractive
    | AddressInteractive
    | CarouselInteractive,
    Field(discriminator="type"),
]
"""The ``interactive`` object, chosen by its ``type``."""


class InteractiveMessage(WabaMessage):
    kind: ClassVar[str] = "interactive"
    type: Literal["interactive"] = "interactive"
    interactive: Interactive
