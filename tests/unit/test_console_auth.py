"""The console's own security pieces, without a server: password hashes, session cookies,
CSRF tokens, API tokens, the brake on guessing, and what may be shown of a message."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from wa_consumer.console.auth import Accounts, Principal, Sessions, hash_password, verify_password
from wa_consumer.console.forms import fingerprint, positive, whole_number
from wa_consumer.console.problems import Invalid
from wa_consumer.console.render import ago, bars
from wa_consumer.console.shown import pretty_body, scrub
from wa_consumer.errors import SettingsError
from wa_consumer.settings import load_settings


def test_a_password_hash_is_self_describing_salted_and_checks_only_its_password() -> None:
    first, second = hash_password("hunter2hunter2"), hash_password("hunter2hunter2")
    assert first != second  # a salt of its own each
    scheme, n, r, p, _, _ = first.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert verify_password("hunter2hunter2", first)
    assert not verify_password("hunter2hunter3", first)
    assert verify_password("x" * 12, hash_password("x" * 12, n=2**10))  # its own cost
    for broken in ("", "scrypt$1$2", "md5$1$1$1$AAAA$AAAA", "scrypt$x$8$1$AAAA$AAAA"):
        assert not verify_password("anything", broken)


def test_the_settings_refuse_a_malformed_hash_or_a_short_token_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"^WA_CONSOLE_USERS: .*hash-password"):
        load_settings(console_users={"alice": "plaintext"})
    with pytest.raises(SettingsError, match=r"^WA_CONSOLE_API_TOKENS: .*24") as short:
        load_settings(console_api_tokens={"bot": "shortsecret"})
    assert "shortsecret" not in str(short.value)
    with pytest.raises(SettingsError, match=r"^WA_CONSOLE_SECRET: "):
        load_settings(console_secret="too short")
    ok = load_settings(console_users={"alice": hash_password("long enough")})
    assert "scrypt" not in repr(ok)  # secrets do not show


def test_a_session_cookie_is_signed_expires_and_ends_at_logout() -> None:
    sessions = Sessions(b"k" * 32)
    cookie, session = sessions.issue("alice", now=1000.0)
    assert sessions.read(cookie, now=1001.0) == session
    assert sessions.read(cookie, now=1000.0 + 13 * 3600) is None  # expired
    assert Sessions(b"other" * 8).read(cookie, now=1001.0) is None  # another secret
    payload, _, mac = cookie.rpartition(".")
    forged = payload.replace(payload.split(".")[0], "Ym9i") + "." + mac  # "bob"
    assert sessions.read(forged, now=1001.0) is None
    for junk in (None, "", "a.b", "x" * 5000):
        assert sessions.read(junk) is None
    fresh, live = sessions.issue("alice")
    sessions.end(live)
    assert sessions.read(fresh) is None


def test_a_csrf_token_belongs_to_its_session() -> None:
    sessions = Sessions(b"k" * 32)
    _, one = sessions.issue("alice")
    _, two = sessions.issue("alice")
    token = sessions.csrf_token(one)
    assert sessions.csrf_ok(one, token)
    assert not sessions.csrf_ok(two, token)
    assert not sessions.csrf_ok(one, None) and not sessions.csrf_ok(one, "")


async def test_accounts_check_passwords_and_name_the_bearer_token_used() -> None:
    accounts = Accounts(
        {"alice": SecretStr(hash_password("open sesame"))},
        {"runbook": SecretStr("r" * 30), "ci": SecretStr("c" * 30)},
    )
    assert await accounts.login("alice", "open sesame")
    assert not await accounts.login("alice", "open sesame!")
    assert not await accounts.login("mallory", "open sesame")  # unknown: same cost, no
    assert accounts.bearer("Bearer " + "c" * 30) == "ci"
    assert accounts.bearer("bearer " + "r" * 30) == "runbook"
    for header in (None, "", "Bearer", "Basic " + "r" * 30, "Bearer " + "r" * 29):
        assert accounts.bearer(header) is None
    assert Principal("ci").actor == "api:ci"


def test_five_failed_logins_from_one_address_make_it_wait() -> None:
    accounts = Accounts({}, {"t": SecretStr("t" * 30)})
    for _ in range(5):
        assert not accounts.throttled("10.0.0.1", now=100.0)
        accounts.failed("10.0.0.1", now=100.0)
    assert accounts.throttled("10.0.0.1", now=101.0)
    assert not accounts.throttled("10.0.0.2", now=101.0)
    assert not accounts.throttled("10.0.0.1", now=100.0 + 301)  # the window passed


def test_tokens_are_masked_at_any_depth_but_a_bodys_own_keys_are_kept() -> None:
    headers = {
        "Authorization": "Bearer abc.def",
        "x-error-message": "(#190) token EAAGm0PX4ZCpsBAKZAbc123def456ghi789 expired",
        "nested": {"access_token": "x", "list": ["Bearer zzz", b"bytes"]},
    }
    shown = scrub(headers)
    assert shown["Authorization"] == "***"
    assert shown["x-error-message"] == "(#190) token *** expired"
    assert shown["nested"] == {"access_token": "***", "list": ["Bearer ***", "bytes"]}
    text, parsed = pretty_body(b'{"wabaPayload": {"flow_token": "abc", "to": "1"}}')
    assert parsed["wabaPayload"]["flow_token"] == "abc"  # Meta's field, not a credential
    assert '\n  "wabaPayload"' in text
    assert pretty_body(b"\xff not json") == ("\ufffd not json", None)


def test_form_values_are_bounded() -> None:
    assert fingerprint(" ABCdef0123 ") == "abcdef0123"
    assert whole_number("7", "n") == 7
    assert positive("2.5", "rate") == 2.5
    for bad in ("../etc", "zz", "abc"):
        with pytest.raises(Invalid):
            fingerprint(bad)
    for value in ("0", "x", True, None, "1e3"):
        with pytest.raises(Invalid):
            whole_number(value, "n")
    for value in ("0", "-1", "nan", "inf", False):
        with pytest.raises(Invalid):
            positive(value, "rate")


def test_the_24_hour_chart_scales_to_its_largest_hour() -> None:
    hourly = [0] * 22 + [5, 10]
    rects = bars(hourly)
    assert len(rects) == 24
    assert (rects[-1]["h"], rects[-2]["h"], rects[0]["h"]) == (24, 12, 0)
    assert (rects[-1]["ago"], rects[0]["ago"]) == (1, 24)
    assert bars([0] * 24)[0]["h"] == 0
    assert ago(None) == "-"
