"""Meta's answers, as the Cloud API words them: the error catalogue and the body builders.

Titles, details and HTTP statuses follow Meta's published error-code table; the HTTP status
is what Meta usually sends, not something a client should decide on (it decides on
``code``). Graph-level errors (tokens, unknown objects) carry no ``error_data``, like Meta's.
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple

import orjson


class MetaCode(NamedTuple):
    """One row of the catalogue."""

    title: str
    details: str
    status: int
    transient: bool = False
    subcode: int | None = None


CATALOGUE: dict[int, MetaCode] = {
    0: MetaCode("AuthException", "We were unable to authenticate the app user.", 401),
    1: MetaCode("API Unknown", "Invalid request or possible server error.", 400, True),
    2: MetaCode("API Service", "Temporary due to downtime or due to being overloaded.", 503, True),
    3: MetaCode("API Method", "Capability or permissions issue.", 500),
    4: MetaCode("Too many calls", "The app has reached its API call rate limit.", 400, True),
    10: MetaCode("Permission Denied", "Permission is either not granted or has been removed.", 403),
    100: MetaCode("Invalid parameter", "Invalid parameter", 400),
    200: MetaCode(
        "Permissions error", "Permission is either not granted or has been removed.", 403
    ),
    368: MetaCode(
        "Temporarily blocked for policies violations",
        "The WhatsApp Business Account associated with the app has been restricted or "
        "disabled for violating a platform policy.",
        403,
    ),
    80007: MetaCode(
        "Rate limit issues", "The WhatsApp Business Account has reached its rate limit.", 400, True
    ),
    130429: MetaCode(
        "Rate limit hit", "Cloud API message throughput has been reached.", 400, True, 2494055
    ),
    130472: MetaCode(
        "User's number is part of an experiment",
        "Message was not sent as part of an experiment.",
        400,
    ),
    130497: MetaCode(
        "Business account is restricted from messaging users in this country",
        "The business is restricted from messaging users in this country.",
        403,
    ),
    131000: MetaCode(
        "Something went wrong", "Message failed to send due to an unknown error.", 500, True
    ),
    131005: MetaCode("Access denied", "Permission is either not granted or has been removed.", 403),
    131008: MetaCode("Required parameter is missing", "The request is missing a parameter.", 400),
    131009: MetaCode(
        "Parameter value is not valid", "One or more parameter values are invalid.", 400
    ),
    131016: MetaCode("Service unavailable", "A service is temporarily unavailable.", 500, True),
    131021: MetaCode(
        "Recipient cannot be sender", "Sender and recipient phone number is the same.", 400
    ),
    131026: MetaCode(
        "Message Undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number is not "
        "a WhatsApp phone number; the recipient has not accepted the new Terms of Service.",
        400,
    ),
    131031: MetaCode(
        "Business Account locked",
        "The WhatsApp Business Account associated with the app has been restricted or "
        "disabled for violating a platform policy.",
        400,
    ),
    131042: MetaCode(
        "Business eligibility payment issue",
        "There was an error related to your payment method.",
        400,
    ),
    131045: MetaCode(
        "Incorrect certificate",
        "Message failed to send due to a phone number registration error.",
        400,
    ),
    131047: MetaCode(
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer "
        "last replied to this number.",
        400,
    ),
    131048: MetaCode(
        "Spam rate limit hit",
        "Message failed to send because there are restrictions on how many messages can be "
        "sent from this phone number.",
        400,
    ),
    131049: MetaCode(
        "Meta chose not to deliver",
        "This message was not delivered to maintain healthy ecosystem engagement.",
        400,
    ),
    131050: MetaCode(
        "User has stopped marketing messages",
        "Unable to deliver the marketing message: the user stopped marketing messages.",
        400,
    ),
    131051: MetaCode("Unsupported message type", "Unsupported message type.", 400),
    131053: MetaCode("Media upload error", "Unable to upload the media used in the message.", 400),
    131056: MetaCode(
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
        400,
        True,
    ),
    131057: MetaCode(
        "Account in maintenance mode", "Business Account is in maintenance mode.", 500, True
    ),
    132000: MetaCode(
        "Number of parameters does not match the expected number of params",
        "The number of variable parameter values does not match the template.",
        400,
    ),
    132001: MetaCode(
        "Template does not exist",
        "The template does not exist in the specified language or has not been approved.",
        404,
    ),
    133004: MetaCode(
        "Server temporarily unavailable", "Server temporarily unavailable.", 503, True
    ),
    133010: MetaCode(
        "Phone number not registered",
        "Phone number not registered on the WhatsApp Business Platform.",
        400,
    ),
}

_UNKNOWN = MetaCode("Unknown error", "An unknown error occurred.", 400)

JSON_HEADERS = {"Content-Type": "application/json"}
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def fbtrace_id() -> str:
    """A fresh trace id shaped like Meta's (23 URL-safe characters)."""
    return secrets.token_urlsafe(17)


def status_of(code: int) -> int:
    """The HTTP status Meta usually sends with ``code``."""
    if code == 190:
        return 401
    return CATALOGUE.get(code, _UNKNOWN).status


def error_for(
    code: int, *, details: str | None = None, subcode: int | None = None
) -> dict[str, Any]:
    """The error object for ``code`` as a failure rule asks for it (190 worded as Meta does)."""
    if code == 190:
        return invalid_token(expired=subcode == 463)
    return cloud_error(code, details=details, subcode=subcode)


def cloud_error(
    code: int, *, details: str | None = None, subcode: int | None = None
) -> dict[str, Any]:
    """The ``{"error": ...}`` object of a WhatsApp-level failure."""
    entry = CATALOGUE.get(code, _UNKNOWN)
    error: dict[str, Any] = {
        "message": f"(#{code}) {entry.title}",
        "type": "OAuthException",
        "code": code,
    }
    subcode = entry.subcode if subcode is None else subcode
    if subcode is not None:
        error["error_subcode"] = subcode
    if entry.transient:
        error["is_transient"] = True
    error["error_data"] = {
        "messaging_product": "whatsapp",
        "details": entry.details if details is None else details,
    }
    error["fbtrace_id"] = fbtrace_id()
    return {"error": error}


def invalid_token(*, expired: bool) -> dict[str, Any]:
    """Code 190: a token Meta cannot parse, or one that was rotated out (subcode 463)."""
    error: dict[str, Any]
    if expired:
        error = {
            "message": "Error validating access token: Session has expired.",
            "type": "OAuthException",
            "code": 190,
            "error_subcode": 463,
        }
    else:
        error = {
            "message": "Invalid OAuth access token - Cannot parse access token",
            "type": "OAuthException",
            "code": 190,
        }
    error["fbtrace_id"] = fbtrace_id()
    return {"error": error}


def unknown_object(object_id: str) -> dict[str, Any]:
    """Code 100 subcode 33: what Meta answers for a number the token may not use."""
    return {
        "error": {
            "message": (
                f"Unsupported post request. Object with ID '{object_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this "
                "operation. Please read the Graph API documentation at "
                "https://developers.facebook.com/docs/graph-api"
            ),
            "type": "GraphMethodException",
            "code": 100,
            "error_subcode": 33,
            "fbtrace_id": fbtrace_id(),
        }
    }


def invalid_parameter(message: str) -> dict[str, Any]:
    """Code 100 with Meta's own wording of what is wrong with the body."""
    return {
        "error": {
            "message": f"(#100) {message}",
            "type": "OAuthException",
            "code": 100,
            "fbtrace_id": fbtrace_id(),
        }
    }


def dumps(value: Any) -> bytes:
    """orjson, with int dict keys allowed (stats are keyed by status and code)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
