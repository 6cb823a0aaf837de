"""``X-Hub-Signature-256`` as Meta makes it, and every way a header can be wrong (SPEC §13)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_consumer.webhooks.signature import sign, verify

BODY = b'{"object":"whatsapp_business_account","entry":[]}'
SECRET = b"app-secret-one"
OTHER = b"app-secret-two"

secrets = st.binary(min_size=1, max_size=64)


def test_meta_signature_of_the_raw_body_is_valid() -> None:
    header = "sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == header
    assert verify(BODY, header, [SECRET])


def test_uppercase_hex_is_the_same_digest() -> None:
    header = "sha256=" + sign(BODY, SECRET).removeprefix("sha256=").upper()
    assert verify(BODY, header, [SECRET])


def test_signature_of_another_body_is_invalid() -> None:
    assert not verify(BODY + b" ", sign(BODY, SECRET), [SECRET])


def test_wrong_secret_is_refused() -> None:
    assert not verify(BODY, sign(BODY, b"guessed"), [SECRET])


def test_another_apps_secret_among_several_is_accepted() -> None:
    assert verify(BODY, sign(BODY, OTHER), [SECRET, OTHER])
    assert verify(BODY, sign(BODY, SECRET), [SECRET, OTHER])


def test_no_secret_accepts_nothing() -> None:
    assert not verify(BODY, sign(BODY, SECRET), [])


@pytest.mark.parametrize("header", [None, ""])
def test_missing_header_is_invalid(header: str | None) -> None:
    assert not verify(BODY, header, [SECRET])


@pytest.mark.parametrize(
    "header",
    [
        "sha256=",
        "sha256",
        "sha1=" + hmac.new(SECRET, BODY, hashlib.sha1).hexdigest(),
        "SHA256=" + sign(BODY, SECRET).removeprefix("sha256="),  # Meta's prefix is lowercase
        sign(BODY, SECRET).removeprefix("sha256="),  # no prefix
        sign(BODY, SECRET) + "00",  # too long
        sign(BODY, SECRET)[:-2],  # too short
        sign(BODY, SECRET)[:-1] + "g",  # not hex
        " " + sign(BODY, SECRET),
        sign(BODY, SECRET) + "\n",
        "sha256=" + "é" * 64,  # not ASCII: compare_digest would raise on it as a str
        "sha256=" + "\u0660" * 64,  # Arabic-Indic zeros: digits to Python, not hex
    ],
)
def test_malformed_header_is_invalid_and_never_raises(header: str) -> None:
    assert not verify(BODY, header, [SECRET])


@given(body=st.binary(max_size=4096), secret=secrets)
def test_any_body_signed_with_the_secret_verifies(body: bytes, secret: bytes) -> None:
    assert verify(body, sign(body, secret), [secret])


@given(body=st.binary(max_size=1024), secret=secrets, other=secrets)
def test_a_signature_made_with_another_secret_is_refused(
    body: bytes, secret: bytes, other: bytes
) -> None:
    # HMAC pads a key shorter than the block with zeros: b"k" and b"k\0" are the same key.
    same_key = secret.rstrip(b"\0") == other.rstrip(b"\0")
    assert verify(body, sign(body, other), [secret]) is same_key


@given(body=st.binary(min_size=1, max_size=1024), flip=st.integers(min_value=0))
def test_any_changed_byte_of_the_body_is_refused(body: bytes, flip: int) -> None:
    changed = bytearray(body)
    changed[flip % len(body)] ^= 0x01
    assert not verify(bytes(changed), sign(body, SECRET), [SECRET])


@given(header=st.text(max_size=80))
def test_arbitrary_headers_never_raise(header: str) -> None:
    assert verify(BODY, header, [SECRET]) is (header == sign(BODY, SECRET))
