"""No secret in a repr, a str or the one-line error of a bad setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wa_consumer.errors import SettingsError
from wa_consumer.settings import Settings, load_settings, safe_url

PASSWORD = "pw-S3cr3t-9f2c"  # test values, looked for in what is shown
TOKEN = "EAAG-static-token-do-not-leak"
SERVICE_TOKEN = "svc-token-do-not-leak"
WEBHOOK = "https://hooks.example/services/T0/B0/hook-path-do-not-leak"
SECRETS = (PASSWORD, TOKEN, SERVICE_TOKEN, "hook-path-do-not-leak")


@pytest.fixture(autouse=True)
def _no_wa_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what a test sets: no WA_ variable of the shell, no .env of the working directory."""
    for name in list(os.environ):
        if name.startswith("WA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} shown in {text!r}"


def assert_nothing_chained(err: BaseException) -> None:
    """The error line and anything an exception tracker could walk to hide every secret."""
    seen: BaseException | None = err
    while seen is not None:
        for text in (str(seen), repr(seen), repr(seen.args)):
            assert_hidden(text)
        seen = seen.__cause__ or seen.__context__


def settings_full_of_secrets() -> Settings:
    return Settings(
        amqp_url=f"amqps://wa:{PASSWORD}@rabbit.internal:5671/wa",
        database_url=f"postgresql://wa:{PASSWORD}@db.internal:5432/wa",
        redis_url=f"redis://:{PASSWORD}@redis.internal:6379/0",
        graph_api_url=f"https://proxy:{PASSWORD}@graph.internal",
        tenant_service_url=f"https://svc:{PASSWORD}@tenants.internal",
        tenant_service_token=SERVICE_TOKEN,
        static_credentials={"acme": {"accessToken": TOKEN, "phoneNumberId": "106540352242922"}},
        alert_webhook_url=WEBHOOK,
    )


def test_repr_and_str_show_no_secret_but_what_helps() -> None:
    settings = settings_full_of_secrets()
    for shown in (repr(settings), str(settings), f"{settings!r}", f"{settings}"):
        assert_hidden(shown)
        assert "amqps://wa:***@rabbit.internal:5671/wa" in shown
        assert "postgresql://wa:***@db.internal:5432/wa" in shown
        assert "redis://:***@redis.internal:6379/0" in shown
        assert "https://svc:***@tenants.internal" in shown
        assert "{'acme': {'accessToken': '***', 'phoneNumberId': '106540352242922'}}" in shown


def test_the_fields_keep_their_values_and_types() -> None:
    settings = settings_full_of_secrets()
    assert settings.amqp_url == f"amqps://wa:{PASSWORD}@rabbit.internal:5671/wa"
    assert settings.static_credentials["acme"]["accessToken"] == TOKEN
    assert settings.tenant_service_token is not None
    assert settings.tenant_service_token.get_secret_value() == SERVICE_TOKEN


def test_the_default_broker_url_shows_its_user_not_its_password() -> None:
    assert "amqp://guest:***@127.0.0.1:5672/" in repr(Settings())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"amqp://u:{PASSWORD}@h:5672/vh", "amqp://u:***@h:5672/vh"),
        (f"redis://:{PASSWORD}@h/0", "redis://:***@h/0"),
        (f"postgresql://u@h/db?sslmode=require&password={PASSWORD}", None),
        (f"postgresql://u:{PASSWORD}@h1:5432,h2:5433/db", "postgresql://***@h1:5432,h2:5433/db"),
        (f"amqp://u:{PASSWORD}/x@h/", "amqp://***@h/"),  # an unencoded / in the password
        (f"amqp://u:{PASSWORD}#x@h/", "amqp://***@h/"),
        (f"amqp://u:a@{PASSWORD}@h/", "amqp://u:***@h/"),
        ("https://graph.facebook.com", "https://graph.facebook.com"),
        ("postgresql://wa@db/wa", "postgresql://wa@db/wa"),
    ],
)
def test_safe_url(url: str, shown: str | None) -> None:
    assert PASSWORD not in safe_url(url)
    if shown is not None:
        assert safe_url(url) == shown


@pytest.mark.parametrize(
    ("env", "value", "named"),
    [
        ("WA_AMQP_URL", f"http://guest:{PASSWORD}@rabbit/", "WA_AMQP_URL"),
        ("WA_REDIS_URL", f"http://:{PASSWORD}@redis:6379", "WA_REDIS_URL"),
        ("WA_GRAPH_API_URL", f"ftp://u:{PASSWORD}@graph", "WA_GRAPH_API_URL"),
        ("WA_TENANT_SERVICE_URL", f"ftp://u:{PASSWORD}@tenants", "WA_TENANT_SERVICE_URL"),
        ("WA_ALERT_WEBHOOK_URL", "ftp://hooks.example/hook-path-do-not-leak", "WA_ALERT_WEBHOOK"),
        ("WA_PREFETCH", f"amqp://u:{PASSWORD}@h/", "WA_PREFETCH"),  # a URL in the wrong place
        ("WA_QUEUE_TYPE", f"x?password={PASSWORD}", "WA_QUEUE_TYPE"),
        # The JSON settings: malformed JSON, a wrong shape, a bad entry.
        ("WA_STATIC_CREDENTIALS", f'{{"acme": {{"accessToken": "{TOKEN}"', "WA_STATIC_CRED"),
        ("WA_STATIC_CREDENTIALS", f'{{"acme": "{TOKEN}"}}', "WA_STATIC_CREDENTIALS"),
        ("WA_STATIC_CREDENTIALS", f'{{"acme": ["{TOKEN}"]}}', "WA_STATIC_CREDENTIALS"),
        (
            "WA_STATIC_CREDENTIALS",
            f'{{"acme": {{"accessToken": "{TOKEN}", "phoneNumberId": 5}}}}',
            "WA_STATIC_CREDENTIALS",
        ),
        ("WA_RETRY_DELAYS", f'["amqp://u:{PASSWORD}@h/"', "WA_RETRY_DELAYS"),
        ("WA_RETRY_DELAYS", f'["amqp://u:{PASSWORD}@h/"]', "WA_RETRY_DELAYS"),
    ],
)
def test_a_bad_setting_is_named_in_one_line_without_its_secret(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, named: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=named) as caught:
        load_settings()
    line = str(caught.value)
    assert "\n" not in line
    assert_nothing_chained(caught.value)


def test_a_bad_url_is_shown_with_its_password_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_AMQP_URL", f"http://guest:{PASSWORD}@rabbit/")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == (
        "WA_AMQP_URL: Value error, expected an amqp:// or amqps:// URL"
        " (got 'http://guest:***@rabbit/')"
    )


def test_malformed_json_names_the_place_not_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WA_STATIC_CREDENTIALS", f'{{"acme": {{"accessToken": "{TOKEN}"')
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith("WA_STATIC_CREDENTIALS: expected JSON (Expecting")


@pytest.mark.parametrize(
    "overrides",
    [
        {"tenant_service_token": 12_345_678_901},
        {"static_credentials": {"acme": {"accessToken": TOKEN, "phoneNumberId": ""}}},
        {"static_credentials": {"acme": TOKEN}},
        {"amqp_url": f"http://u:{PASSWORD}@h/"},
        {"database_url": 5, "amqp_url": f"amqp://u:{PASSWORD}@h/"},
    ],
)
def test_bad_overrides_show_no_secret_either(overrides: dict[str, object]) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(**overrides)
    assert_nothing_chained(caught.value)
    assert "12345678901" not in str(caught.value)


def test_webhook_secrets_never_show_and_every_app_secret_counts() -> None:
    settings = Settings(
        webhook_app_secret="app-secret-1",
        webhook_app_secrets=["app-secret-2"],
        webhook_verify_token="verify-token-3",
    )
    shown = f"{settings!r} {settings}"
    for secret in ("app-secret-1", "app-secret-2", "verify-token-3"):
        assert secret not in shown
    assert settings.webhook_secrets == (b"app-secret-1", b"app-secret-2")


@pytest.mark.parametrize(
    ("name", "value"),
    [("WA_WEBHOOK_APP_SECRETS", '["s3cr3t-app", ""]'), ("WA_WEBHOOK_APP_SECRETS", "s3cr3t-app")],
)
def test_a_bad_webhook_secret_is_named_not_shown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value).startswith(name)
    assert "s3cr3t-app" not in str(caught.value)
