"""The message contract (SPEC §3): what parse() accepts, what it refuses, and how it says so."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wa_consumer.errors import InvalidMessage
from wa_consumer.message import (
    MAX_MESSAGE_BYTES,
    Metadata,
    Outbound,
    OutboundMessage,
    parse,
    with_callback,
)
from wa_consumer.payloads import TextMessage
from wa_consumer.payloads.basic import Text

METADATA = {"tenantId": "acme", "internalId": "9f1c2e7a"}
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")


def envelope(payload: Any, metadata: Any = METADATA) -> bytes:
    return orjson.dumps({"metadata": metadata, "wabaPayload": payload})


def waba(type_: str, obj: Any, **fields: Any) -> dict[str, Any]:
    """A Cloud API body of ``type_`` carrying ``obj`` under the key the type names."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "27821234567",
        "type": type_,
        type_: obj,
        **fields,
    }


def interactive(type_: str, action: Any, **parts: Any) -> dict[str, Any]:
    parts.setdefault("body", {"text": "Pick one"})
    return waba("interactive", {"type": type_, "action": action, **parts})


def refused(body: bytes, **kwargs: Any) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse(body, **kwargs)
    return info.value


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "title": f"Row {i}"} for i in range(n)]


def products(n: int) -> list[dict[str, str]]:
    return [{"product_retailer_id": f"sku-{i}"} for i in range(n)]


FLOW = {
    "flow_message_version": "3",
    "flow_token": "tok",
    "flow_id": "1234",
    "flow_cta": "Book!",
    "flow_action": "navigate",
    "flow_action_payload": {"screen": "START", "data": {"k": "v"}},
}
ORDER_DETAILS = {
    "reference_id": "ref-1",
    "type": "digital-goods",
    "currency": "INR",
    "total_amount": {"value": 1100, "offset": 100},
    "payment_configuration": "cfg",
    "order": {"status": "pending", "items": [], "subtotal": {"value": 1000, "offset": 100}},
}
TEMPLATE = {
    "name": "order_update",
    "language": {"code": "en_US", "policy": "deterministic"},
    "components": [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/a.jpg"}}]},
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Ann"},
                {
                    "type": "currency",
                    "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1000},
                },
                {"type": "date_time", "date_time": {"fallback_value": "May 1"}},
            ],
        },
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "0",
            "parameters": [{"type": "payload", "payload": "YES"}],
        },
        {
            "type": "button",
            "sub_type": "url",
            "index": 1,
            "parameters": [{"type": "text", "text": "a"}],
        },
    ],
}

VALID: dict[str, tuple[dict[str, Any], str]] = {
    "text": (waba("text", {"body": "Your order is ready", "preview_url": False}), "text"),
    "text of 4096 characters": (waba("text", {"body": "x" * 4096}), "text"),
    "text to a group": (
        {**waba("text", {"body": "hi"}), "recipient_type": "group", "to": "120363@g.us"},
        "text",
    ),
    "text reply with callback data": (
        waba(
            "text",
            {"body": "hi"},
            context={"message_id": "wamid.X"},
            biz_opaque_callback_data="c" * 512,
        ),
        "text",
    ),
    "text to a formatted number": (
        {**waba("text", {"body": "hi"}), "to": "+1 (650) 555-1234"},
        "text",
    ),
    "text without type (Meta's default)": (
        {"messaging_product": "whatsapp", "to": "1", "text": {"body": "hi"}},
        "text",
    ),
    "template, name and language only": (
        waba("template", {"name": "hello_world", "language": {"code": "en_US"}}),
        "template",
    ),
    "template with parameters": (waba("template", TEMPLATE), "template"),
    "template with a component type we do not know": (
        waba(
            "template",
            {
                "name": "t",
                "language": {"code": "en"},
                "components": [{"type": "carousel", "cards": [{"card_index": 0}]}],
            },
        ),
        "template",
    ),
    "image by id": (waba("image", {"id": "1234"}), "image"),
    "image by link with a caption of 1024": (
        waba("image", {"link": "https://x/a.jpg", "caption": "c" * 1024}),
        "image",
    ),
    "video": (waba("video", {"link": "https://x/a.mp4", "caption": "hi"}), "video"),
    "audio as a voice note": (waba("audio", {"id": "1", "voice": True}), "audio"),
    "document": (waba("document", {"id": "1", "filename": "a.pdf", "caption": "c"}), "document"),
    "sticker": (waba("sticker", {"link": "https://x/a.webp"}), "sticker"),
    "location": (
        waba("location", {"latitude": -90, "longitude": 180.0, "name": "HQ", "address": "1 Way"}),
        "location",
    ),
    "location as numeric strings": (
        waba("location", {"latitude": "37.48", "longitude": "-122.14"}),
        "location",
    ),
    "contacts": (
        waba(
            "contacts",
            [
                {
                    "name": {"formatted_name": "John Smith", "first_name": "John"},
                    "phones": [
                        {"phone": "+1 650 555 1234", "type": "WORK", "wa_id": "16505551234"}
                    ],
                    "emails": [{"email": "a@b.c"}],
                    "urls": [{"url": "https://a"}],
                    "addresses": [{"city": "Menlo Park"}],
                    "org": {"company": "Meta"},
                    "birthday": "2012-08-18",
                }
            ],
        ),
        "contacts",
    ),
    "contacts, 257 of them": (
        waba("contacts", [{"name": {"formatted_name": f"C{i}"}} for i in range(257)]),
        "contacts",
    ),
    "reply buttons, three": (
        interactive(
            "button",
            {
                "buttons": [
                    {"type": "reply", "reply": {"id": f"b{i}", "title": "t" * 20}} for i in range(3)
                ]
            },
            header={"type": "image", "image": {"id": "1"}},
            footer={"text": "f" * 60},
        ),
        "interactive",
    ),
    "list, 10 rows in two sections": (
        interactive(
            "list",
            {
                "button": "b" * 20,
                "sections": [{"title": "A", "rows": rows(4)}, {"title": "B", "rows": rows(6)}],
            },
            body={"text": "x" * 4096},
            header={"type": "text", "text": "Menu"},
        ),
        "interactive",
    ),
    "list, one untitled section": (
        interactive("list", {"button": "Menu", "sections": [{"rows": rows(1)}]}),
        "interactive",
    ),
    "cta_url": (
        interactive(
            "cta_url",
            {"name": "cta_url", "parameters": {"display_text": "See dates", "url": "https://x"}},
        ),
        "interactive",
    ),
    "flow": (interactive("flow", {"name": "flow", "parameters": FLOW}), "interactive"),
    "product": (
        waba(
            "interactive",
            {"type": "product", "action": {"catalog_id": "1", "product_retailer_id": "sku"}},
        ),
        "interactive",
    ),
    "product_list, 30 products": (
        interactive(
            "product_list",
            {
                "catalog_id": "1",
                "sections": [
                    {"title": "A", "product_items": products(10)},
                    {"title": "B", "product_items": products(20)},
                ],
            },
            header={"type": "text", "text": "Our picks"},
        ),
        "interactive",
    ),
    "catalog_message": (
        interactive(
            "catalog_message",
            {"name": "catalog_message", "parameters": {"thumbnail_product_retailer_id": "sku"}},
        ),
        "interactive",
    ),
    "order_details": (
        interactive("order_details", {"name": "review_and_pay", "parameters": ORDER_DETAILS}),
        "interactive",
    ),
    "order_status": (
        interactive(
            "order_status",
            {
                "name": "review_order",
                "parameters": {"reference_id": "ref-1", "order": {"status": "shipped"}},
            },
        ),
        "interactive",
    ),
    "call_permission_request": (
        interactive("call_permission_request", {"name": "call_permission_request"}),
        "interactive",
    ),
    "location_request_message": (
        interactive("location_request_message", {"name": "send_location"}),
        "interactive",
    ),
    "reaction": (waba("reaction", {"message_id": "wamid.X", "emoji": "\U0001f600"}), "reaction"),
    "reaction removed (empty emoji)": (
        waba("reaction", {"message_id": "wamid.X", "emoji": ""}),
        "reaction",
    ),
    "read receipt": (
        {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"},
        "status",
    ),
    "read receipt with typing indicator": (
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.X",
            "typing_indicator": {"type": "text"},
        },
        "status",
    ),
    "unknown fields at every level": (
        {
            **waba("image", {"id": "1", "future_flag": True}),
            "future_top": {"a": [1, 2]},
            "context": {"message_id": "wamid.X", "future": 1},
        },
        "image",
    ),
}


@pytest.mark.parametrize(("payload", "type_"), list(VALID.values()), ids=list(VALID))
def test_valid_payload_is_accepted_and_sent_unchanged(payload: dict[str, Any], type_: str) -> None:
    out = parse(envelope(payload))
    assert out.type == type_
    assert out.payload == orjson.dumps(with_callback(payload, METADATA["internalId"]))
    assert out.to == payload.get("to")


def test_every_type_has_a_valid_case() -> None:
    types = {type_ for _, type_ in VALID.values()}
    assert types == {
        "text",
        "template",
        *MEDIA_TYPES,
        "location",
        "contacts",
        "interactive",
        "reaction",
        "status",
    }


# Each case: payload, where, and words the reason must hold.
INVALID: dict[str, tuple[dict[str, Any], str, str]] = {
    "text over 4096 characters": (
        waba("text", {"body": "x" * 4097}),
        "wabaPayload.text.body",
        "at most 4096 characters",
    ),
    "empty text": (waba("text", {"body": ""}), "wabaPayload.text.body", "at least 1 character"),
    "text without body": (waba("text", {"preview_url": True}), "wabaPayload.text.body", "required"),
    "text type without text object": (
        {"messaging_product": "whatsapp", "to": "1", "type": "text"},
        "wabaPayload.text",
        "required",
    ),
    "preview_url not a boolean": (
        waba("text", {"body": "hi", "preview_url": "sometimes"}),
        "wabaPayload.text.preview_url",
        "boolean",
    ),
    "messaging_product not whatsapp": (
        {**waba("text", {"body": "hi"}), "messaging_product": "sms"},
        "wabaPayload.messaging_product",
        "'whatsapp'",
    ),
    "missing to": (
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "hi"}},
        "wabaPayload.to",
        "required",
    ),
    "empty to": ({**waba("text", {"body": "hi"}), "to": ""}, "wabaPayload.to", "at least 1"),
    "to as a number": (
        {**waba("text", {"body": "hi"}), "to": 27821234567},
        "wabaPayload.to",
        "string",
    ),
    "unknown recipient_type": (
        {**waba("text", {"body": "hi"}), "recipient_type": "everyone"},
        "wabaPayload.recipient_type",
        "'individual' or 'group'",
    ),
    "callback data over 512": (
        waba("text", {"body": "hi"}, biz_opaque_callback_data="c" * 513),
        "wabaPayload.biz_opaque_callback_data",
        "at most 512",
    ),
    "context without message_id": (
        waba("text", {"body": "hi"}, context={}),
        "wabaPayload.context.message_id",
        "required",
    ),
    "unknown type": (
        {**waba("text", {"body": "hi"}), "type": "fax"},
        "wabaPayload.type",
        "unknown type 'fax'; expected one of: text, template",
    ),
    "type not a string": (
        {**waba("text", {"body": "hi"}), "type": 7},
        "wabaPayload.type",
        "should be a string",
    ),
    "no type and no message object": (
        {"messaging_product": "whatsapp", "to": "1"},
        "wabaPayload.type",
        "missing",
    ),
    "template without name": (
        waba("template", {"language": {"code": "en"}}),
        "wabaPayload.template.name",
        "required",
    ),
    "template without language code": (
        waba("template", {"name": "t", "language": {"policy": "deterministic"}}),
        "wabaPayload.template.language.code",
        "required",
    ),
    "template currency without amount": (
        waba(
            "template",
            {
                "name": "t",
                "language": {"code": "en"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {
                                "type": "currency",
                                "currency": {"fallback_value": "$1", "code": "USD"},
                            }
                        ],
                    }
                ],
            },
        ),
        "wabaPayload.template.components[0].parameters[0].currency.amount_1000",
        "required",
    ),
    "template image parameter without image": (
        waba(
            "template",
            {
                "name": "t",
                "language": {"code": "en"},
                "components": [{"type": "header", "parameters": [{"type": "image"}]}],
            },
        ),
        "wabaPayload.template.components[0].parameters[0]",
        "a parameter of type 'image' needs 'image'",
    ),
    "template button without index": (
        waba(
            "template",
            {
                "name": "t",
                "language": {"code": "en"},
                "components": [{"type": "button", "sub_type": "quick_reply", "parameters": []}],
            },
        ),
        "wabaPayload.template.components[0]",
        "needs 'sub_type' and 'index'",
    ),
    **{
        f"{kind} with both id and link": (
            waba(kind, {"id": "1", "link": "https://x/a"}),
            f"wabaPayload.{kind}",
            "has both 'id' and 'link'",
        )
        for kind in MEDIA_TYPES
    },
    **{
        f"{kind} with neither id nor link": (
            waba(kind, {"caption": "c"}),
            f"wabaPayload.{kind}",
            "needs 'id' or 'link'",
        )
        for kind in MEDIA_TYPES
    },
    **{
        f"{kind} caption over 1024": (
            waba(kind, {"id": "1", "caption": "c" * 1025}),
            f"wabaPayload.{kind}.caption",
            "at most 1024",
        )
        for kind in ("image", "video", "document")
    },
    "media type without its object": (
        {"messaging_product": "whatsapp", "to": "1", "type": "image", "video": {"id": "1"}},
        "wabaPayload.image",
        "required",
    ),
    "latitude out of range": (
        waba("location", {"latitude": 90.5, "longitude": 0}),
        "wabaPayload.location.latitude",
        "less than or equal to 90",
    ),
    "longitude out of range": (
        waba("location", {"latitude": 0, "longitude": -180.1}),
        "wabaPayload.location.longitude",
        "greater than or equal to -180",
    ),
    "location without longitude": (
        waba("location", {"latitude": 0}),
        "wabaPayload.location.longitude",
        "required",
    ),
    "no contacts": (waba("contacts", []), "wabaPayload.contacts", "at least 1 item"),
    "258 contacts": (
        waba("contacts", [{"name": {"formatted_name": "C"}}] * 258),
        "wabaPayload.contacts",
        "at most 257 items",
    ),
    "contact without formatted_name": (
        waba("contacts", [{"name": {"first_name": "John"}}]),
        "wabaPayload.contacts[0].name.formatted_name",
        "required",
    ),
    "four reply buttons": (
        interactive(
            "button",
            {
                "buttons": [
                    {"type": "reply", "reply": {"id": f"b{i}", "title": "t"}} for i in range(4)
                ]
            },
        ),
        "wabaPayload.interactive.action.buttons",
        "at most 3 items",
    ),
    "button title over 20": (
        interactive(
            "button", {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t" * 21}}]}
        ),
        "wabaPayload.interactive.action.buttons[0].reply.title",
        "at most 20 characters",
    ),
    "button without body": (
        waba(
            "interactive",
            {
                "type": "button",
                "action": {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t"}}]},
            },
        ),
        "wabaPayload.interactive.body",
        "required",
    ),
    "interactive body over 1024": (
        interactive(
            "button",
            {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t"}}]},
            body={"text": "x" * 1025},
        ),
        "wabaPayload.interactive.body.text",
        "at most 1024",
    ),
    "footer over 60": (
        interactive(
            "button",
            {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t"}}]},
            footer={"text": "f" * 61},
        ),
        "wabaPayload.interactive.footer.text",
        "at most 60",
    ),
    "image header without image": (
        interactive(
            "button",
            {"buttons": [{"type": "reply", "reply": {"id": "b", "title": "t"}}]},
            header={"type": "image"},
        ),
        "wabaPayload.interactive.header",
        "a header of type 'image' needs 'image'",
    ),
    "list body over 4096": (
        interactive(
            "list", {"button": "Menu", "sections": [{"rows": rows(1)}]}, body={"text": "x" * 4097}
        ),
        "wabaPayload.interactive.body.text",
        "at most 4096",
    ),
    "list with 11 rows in all": (
        interactive(
            "list",
            {
                "button": "Menu",
                "sections": [{"title": "A", "rows": rows(5)}, {"title": "B", "rows": rows(6)}],
            },
        ),
        "wabaPayload.interactive.action",
        "at most 10 rows",
    ),
    "list with 11 sections": (
        interactive("list", {"button": "Menu", "sections": [{"title": "A", "rows": rows(1)}] * 11}),
        "wabaPayload.interactive.action.sections",
        "at most 10 items",
    ),
    "list row title over 24": (
        interactive(
            "list",
            {"button": "Menu", "sections": [{"rows": [{"id": "r", "title": "t" * 25}]}]},
        ),
        "wabaPayload.interactive.action.sections[0].rows[0].title",
        "at most 24",
    ),
    "list row description over 72": (
        interactive(
            "list",
            {
                "button": "Menu",
                "sections": [{"rows": [{"id": "r", "title": "t", "description": "d" * 73}]}],
            },
        ),
        "wabaPayload.interactive.action.sections[0].rows[0].description",
        "at most 72",
    ),
    "list button over 20": (
        interactive("list", {"button": "b" * 21, "sections": [{"rows": rows(1)}]}),
        "wabaPayload.interactive.action.button",
        "at most 20",
    ),
    "list sections without titles": (
        interactive("list", {"button": "Menu", "sections": [{"rows": rows(1)}, {"rows": rows(1)}]}),
        "wabaPayload.interactive.action",
        "every section needs a 'title'",
    ),
    "cta_url without url": (
        interactive("cta_url", {"name": "cta_url", "parameters": {"display_text": "Go"}}),
        "wabaPayload.interactive.action.parameters.url",
        "required",
    ),
    "flow with both id and name": (
        interactive("flow", {"name": "flow", "parameters": {**FLOW, "flow_name": "signup"}}),
        "wabaPayload.interactive.action.parameters",
        "exactly one of 'flow_id' or 'flow_name'",
    ),
    "product without retailer id": (
        interactive("product", {"catalog_id": "1"}),
        "wabaPayload.interactive.action.product_retailer_id",
        "required",
    ),
    "product_list without header": (
        interactive(
            "product_list", {"catalog_id": "1", "sections": [{"product_items": products(1)}]}
        ),
        "wabaPayload.interactive.header",
        "required",
    ),
    "product_list with 31 products": (
        interactive(
            "product_list",
            {
                "catalog_id": "1",
                "sections": [
                    {"title": "A", "product_items": products(30)},
                    {"title": "B", "product_items": products(1)},
                ],
            },
            header={"type": "text", "text": "Picks"},
        ),
        "wabaPayload.interactive.action",
        "at most 30 products",
    ),
    "catalog_message with another action name": (
        interactive("catalog_message", {"name": "catalog"}),
        "wabaPayload.interactive.action.name",
        "'catalog_message'",
    ),
    "order_details without reference id": (
        interactive(
            "order_details",
            {
                "name": "review_and_pay",
                "parameters": {k: v for k, v in ORDER_DETAILS.items() if k != "reference_id"},
            },
        ),
        "wabaPayload.interactive.action.parameters.reference_id",
        "required",
    ),
    "order_status without status": (
        interactive(
            "order_status",
            {"name": "review_order", "parameters": {"reference_id": "r", "order": {}}},
        ),
        "wabaPayload.interactive.action.parameters.order.status",
        "required",
    ),
    "unknown interactive type": (
        interactive("hologram", {}),
        "wabaPayload.interactive.type",
        "unknown type 'hologram'; expected one of: 'button'",
    ),
    "interactive without type": (
        waba("interactive", {"body": {"text": "x"}, "action": {}}),
        "wabaPayload.interactive.type",
        "required",
    ),
    "interactive not an object": (
        waba("interactive", ["button"]),
        "wabaPayload.interactive",
        "should be a JSON object, not an array",
    ),
    "reaction without message_id": (
        waba("reaction", {"emoji": "x"}),
        "wabaPayload.reaction.message_id",
        "required",
    ),
    "reaction without emoji": (
        waba("reaction", {"message_id": "wamid.X"}),
        "wabaPayload.reaction.emoji",
        "required",
    ),
    "status other than read": (
        {"messaging_product": "whatsapp", "status": "delivered", "message_id": "wamid.X"},
        "wabaPayload.status",
        "'read'",
    ),
    "read receipt without message_id": (
        {"messaging_product": "whatsapp", "status": "read"},
        "wabaPayload.message_id",
        "required",
    ),
    "typing indicator of another type": (
        {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.X",
            "typing_indicator": {"type": "audio"},
        },
        "wabaPayload.typing_indicator.type",
        "'text'",
    ),
}


@pytest.mark.parametrize(("payload", "where", "words"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_payload_is_refused_with_where_and_why(
    payload: dict[str, Any], where: str, words: str
) -> None:
    error = refused(envelope(payload))
    assert error.where == where
    assert words in error.reason
    assert (error.tenant_id, error.internal_id) == ("acme", "9f1c2e7a")
    assert str(error) == f"{where}: {error.reason}"


def test_every_type_has_an_invalid_case() -> None:
    wheres = {where for _, where, _ in INVALID.values()}
    for kind in (
        "text",
        "template",
        *MEDIA_TYPES,
        "location",
        "contacts",
        "interactive",
        "reaction",
    ):
        assert any(where.startswith(f"wabaPayload.{kind}") for where in wheres), kind
    assert "wabaPayload.message_id" in wheres  # status


# -- the envelope and the poison kinds --------------------------------------------------------

SPEC_EXAMPLE = (
    b'{"metadata":{"tenantId":"acme","internalId":"9f1c2e7a-1","phoneNumberId":"106540352242922",'
    b'"expiresAt":"2026-11-24T12:00:00Z"},'
    b'"wabaPayload":{"messaging_product":"whatsapp","recipient_type":"individual",'
    b'"to":"27821234567","type":"text","text":{"body":"Your order is ready","preview_url":false}}}'
)


def test_spec_example_gives_every_field() -> None:
    out = parse(SPEC_EXAMPLE)
    assert out == Outbound(
        tenant_id="acme",
        internal_id="9f1c2e7a-1",
        phone_number_id="106540352242922",
        expires_at=datetime(2026, 11, 24, 12, tzinfo=UTC),
        type="text",
        to="27821234567",
        payload=SPEC_EXAMPLE[SPEC_EXAMPLE.index(b'{"messaging') : -2]
        + b',"biz_opaque_callback_data":"9f1c2e7a-1"}',
        extra={},
    )


def test_a_producers_own_callback_data_is_sent_as_it_is_and_kept_for_the_ledger() -> None:
    payload = {**waba("text", {"body": "hi"}), "biz_opaque_callback_data": "order-77"}
    out = parse(envelope(payload))
    assert orjson.loads(out.payload)["biz_opaque_callback_data"] == "order-77"
    assert out.callback == "order-77"


def test_callback_data_equal_to_the_internal_id_needs_no_mapping() -> None:
    payload = {**waba("text", {"body": "hi"}), "biz_opaque_callback_data": "9f1c2e7a"}
    assert parse(envelope(payload)).callback is None


def test_read_receipts_get_no_callback_data() -> None:
    receipt = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"}
    out = parse(envelope(receipt))
    assert b"biz_opaque_callback_data" not in out.payload


def test_payload_keeps_key_order_unknown_fields_and_adds_no_defaults() -> None:
    raw = (
        b'{"type":"location","to":"+1 650","location":{"name":"HQ","longitude":-122.425332,'
        b'"latitude":37.758056,"future":[1,{"a":null}]},"messaging_product":"whatsapp","x":1.5}'
    )
    out = parse(b'{"wabaPayload":' + raw + b',"metadata":{"internalId":"i","tenantId":"t"}}')
    assert out.payload == raw[:-1] + b',"biz_opaque_callback_data":"i"}'
    assert b"recipient_type" not in out.payload


def test_payload_sent_unchanged_when_type_is_left_out() -> None:
    payload = {"messaging_product": "whatsapp", "to": "1", "text": {"body": "hi"}}
    out = parse(envelope(payload))
    sent = orjson.dumps(with_callback(payload, METADATA["internalId"]))
    assert (out.type, out.payload) == ("text", sent)


def test_read_receipt_has_type_status_and_no_recipient() -> None:
    out = parse(
        envelope({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X"})
    )
    assert (out.type, out.to) == ("status", None)


def test_other_metadata_keys_are_carried_through() -> None:
    metadata = {**METADATA, "campaign": "spring", "trace": {"id": 7}}
    out = parse(envelope(waba("text", {"body": "hi"}), metadata))
    assert dict(out.extra) == {"campaign": "spring", "trace": {"id": 7}}
    assert (out.phone_number_id, out.expires_at) == (None, None)


def test_naive_expiry_is_read_as_utc() -> None:
    out = parse(
        envelope(waba("text", {"body": "hi"}), {**METADATA, "expiresAt": "2026-01-02T03:04:05"})
    )
    assert out.expires_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_expiry_with_offset_stays_aware() -> None:
    out = parse(
        envelope(
            waba("text", {"body": "hi"}), {**METADATA, "expiresAt": "2026-01-02T05:04:05+02:00"}
        )
    )
    assert out.expires_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert out.expires_at is not None
    assert out.expires_at.utcoffset() == timedelta(hours=2)


def test_outbound_is_frozen() -> None:
    out = parse(SPEC_EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.type = "image"  # type: ignore[misc]


def test_utf8_bom_is_tolerated() -> None:
    assert parse(b"\xef\xbb\xbf" + SPEC_EXAMPLE).internal_id == "9f1c2e7a-1"


def test_too_large_is_refused_before_decoding() -> None:
    error = refused(b"\xff" * 101, max_bytes=100)
    assert "101 bytes" in error.reason
    assert "100" in error.reason
    assert (error.where, error.tenant_id) == ("", None)


def test_default_size_limit_is_256_kib() -> None:
    assert MAX_MESSAGE_BYTES == 256 * 1024
    padding = "x" * MAX_MESSAGE_BYTES
    error = refused(envelope(waba("text", {"body": "hi"}), {**METADATA, "pad": padding}))
    assert "over the limit" in error.reason


def test_not_utf8_is_refused() -> None:
    error = refused(b'{"metadata": "\xff\xfe"}')
    assert "not UTF-8" in error.reason
    assert error.where == ""


def test_not_json_is_refused() -> None:
    error = refused(b'{"metadata": {')
    assert error.reason.startswith("the body is not JSON")


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "an array"), (b'"hi"', "a string"), (b"42", "a number"), (b"null", "null")],
)
def test_json_other_than_an_object_is_refused(body: bytes, kind: str) -> None:
    assert refused(body).reason == f"the body should be a JSON object, not {kind}"


def test_missing_metadata_is_refused() -> None:
    error = refused(orjson.dumps({"wabaPayload": waba("text", {"body": "hi"})}))
    assert (error.where, error.reason) == ("metadata", "Field required")


def test_metadata_not_an_object_is_refused() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), ["acme"]))
    assert (error.where, error.reason) == ("metadata", "should be a JSON object, not an array")


def test_missing_tenant_id_is_refused_with_the_internal_id() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), {"internalId": "m-1"}))
    assert (error.where, error.reason) == ("metadata.tenantId", "Field required")
    assert (error.tenant_id, error.internal_id) == (None, "m-1")


def test_missing_internal_id_is_refused_with_the_tenant_id() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), {"tenantId": "acme"}))
    assert (error.where, error.reason) == ("metadata.internalId", "Field required")
    assert (error.tenant_id, error.internal_id) == ("acme", None)


def test_empty_tenant_id_is_refused() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), {**METADATA, "tenantId": ""}))
    assert error.where == "metadata.tenantId"
    assert error.tenant_id is None


def test_missing_waba_payload_is_refused_with_both_ids() -> None:
    error = refused(orjson.dumps({"metadata": METADATA}))
    assert (error.where, error.reason) == ("wabaPayload", "Field required")
    assert (error.tenant_id, error.internal_id) == ("acme", "9f1c2e7a")


def test_waba_payload_not_an_object_is_refused() -> None:
    error = refused(envelope("send hello"))
    assert (error.where, error.reason) == ("wabaPayload", "should be a JSON object, not a string")


def test_phone_number_id_must_be_digits() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), {**METADATA, "phoneNumberId": "+1650"}))
    assert error.where == "metadata.phoneNumberId"


def test_unreadable_expiry_is_refused() -> None:
    error = refused(envelope(waba("text", {"body": "hi"}), {**METADATA, "expiresAt": "tomorrow"}))
    assert error.where == "metadata.expiresAt"


def test_many_errors_give_the_first_and_a_count() -> None:
    payload = waba(
        "interactive",
        {
            "type": "list",
            "body": {"text": ""},
            "action": {"button": "", "sections": [{"rows": [{"id": "", "title": ""}]}]},
        },
    )
    error = refused(envelope(payload))
    assert error.where == "wabaPayload.interactive.body.text"
    assert error.reason == "String should have at least 1 character (and 3 more)"


def test_reason_is_bounded() -> None:
    error = refused(envelope({**waba("text", {"body": "hi"}), "type": "x" * 10_000}))
    assert len(error.reason) <= 300
    assert error.where == "wabaPayload.type"


# -- the models as a publisher uses them ------------------------------------------------------


def test_models_validate_built_instances() -> None:
    message = OutboundMessage(
        metadata=Metadata(tenantId="acme", internalId="m-1"),
        wabaPayload=TextMessage(messaging_product="whatsapp", to="1", text=Text(body="hi")),
    )
    again = OutboundMessage.model_validate(message.model_dump())
    assert again.wabaPayload.kind == "text"


def test_json_schema_can_be_generated() -> None:
    schema = OutboundMessage.model_json_schema()
    assert set(schema["required"]) == {"metadata", "wabaPayload"}
    assert len(schema["properties"]["wabaPayload"]["oneOf"]) == 12


# -- nothing but InvalidMessage escapes -------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["type", "text", "body", "id", "link", "to", "status", "interactive", "action"]
            )
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _parse_or_refuse(body: bytes) -> None:
    try:
        parse(body)
    except InvalidMessage as error:
        reason = error.reason
    else:
        return
    assert 0 < len(reason) <= 300


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_invalid_message(body: bytes) -> None:
    _parse_or_refuse(body)


@given(json_values)
def test_arbitrary_json_raises_only_invalid_message(value: Any) -> None:
    _parse_or_refuse(orjson.dumps(value))


@given(json_values, json_values)
def test_arbitrary_envelope_contents_raise_only_invalid_message(
    metadata: Any, payload: Any
) -> None:
    _parse_or_refuse(envelope(payload, metadata))
    _parse_or_refuse(envelope(payload))


def _paths(value: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


@settings(max_examples=300)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_valid_payload_with_one_value_replaced_raises_only_invalid_message(
    name: str, data: st.DataObject
) -> None:
    payload = orjson.loads(orjson.dumps(VALID[name][0]))
    path = data.draw(st.sampled_from(_paths(payload)[1:]))
    node = payload
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = data.draw(json_values)
    _parse_or_refuse(envelope(payload))
