"""One frozen ``Settings``, read once at the edge (the CLI) and passed down.

Every field is an environment variable with the ``WA_`` prefix, also read from ``.env``.
``load_settings`` turns pydantic's report into one line naming the setting.

No secret shows in a repr, a str or that line: tokens and the webhook URL not at all, URLs
with their password as ``***`` (``safe_url``), static credentials with ``accessToken: ***``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from .errors import SettingsError

MASK: Final = "***"
#: Settings that are secrets as a whole: a bad one is named, its value never shown.
_SECRET_SETTINGS: Final = frozenset(
    {
        "WA_TENANT_SERVICE_TOKEN",
        "WA_STATIC_CREDENTIALS",
        "WA_ALERT_WEBHOOK_URL",
        "WA_WEBHOOK_VERIFY_TOKEN",
        "WA_WEBHOOK_APP_SECRET",
        "WA_WEBHOOK_APP_SECRETS",
        "WA_CONSOLE_USERS",
        "WA_CONSOLE_API_TOKENS",
        "WA_CONSOLE_SECRET",
    }
)
#: A key of a static credential entry whose value is a secret (``accessToken``).
_SECRET_KEY: Final = re.compile(r"pass|secret|token|key", re.IGNORECASE)
#: A query parameter naming a secret (asyncpg and redis take ``?password=``): its value.
_SECRET_QUERY: Final = re.compile(
    r"(?i)([?&;][^=&#;\s]*(?:pass|secret|token|key)[^=&#;\s]*=)[^&#;\s]*"
)
#: A console password hash, as ``wa-consumer console hash-password`` prints it.
_PASSWORD_HASH: Final = re.compile(
    r"scrypt\$\d{1,8}\$\d{1,3}\$\d{1,3}\$[A-Za-z0-9+/=]{8,}\$[A-Za-z0-9+/=]{16,}"
)
#: ``scheme://user:password@`` anywhere in a line of text: the password.
_USERINFO: Final = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@]+(?=@)")


def safe_url(url: str) -> str:
    """``url`` with its password, and any query value naming a secret, shown as ``***``.

    yarl's parse where it can; a URL it refuses (several hosts, an unencoded ``/`` or ``#``
    in the password) or whose ``@`` it did not take as the end of the user info has everything
    from ``://`` to its last ``@`` masked instead, the user name with it.
    """
    try:
        parsed: URL | None = URL(url)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.password is not None:
        shown = str(parsed.with_password(MASK))
    elif "@" not in url.partition("://")[2] or (parsed is not None and parsed.user is not None):
        shown = url  # no password in it
    else:
        shown = re.sub(r"(?s)://.*@", f"://{MASK}@", url, count=1)
    return _SECRET_QUERY.sub(rf"\g<1>{MASK}", shown)


def _masked_entry(entry: object) -> object:
    """A static credential entry with its secrets (``accessToken``) shown as ``***``."""
    if not isinstance(entry, Mapping):
        return MASK
    return {k: MASK if _SECRET_KEY.search(str(k)) else v for k, v in entry.items()}


class Settings(BaseSettings):
    """The daemon's configuration (SPEC §7)."""

    model_config = SettingsConfigDict(
        env_prefix="WA_", env_file=".env", env_file_encoding="utf-8", frozen=True, extra="ignore"
    )

    # Broker
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = "whatsapp-exchange"
    dead_letter_exchange: str = "whatsapp-dlx"
    queue: str = "outbound-processed"
    dead_letter_queue: str = "outbound-failed"
    retry_queue_prefix: str = "outbound-retry-"
    routing_key_prefix: str = "outbound.processed"
    dead_routing_key: str = "outbound.failed"
    queue_type: Literal["classic", "quorum"] = "classic"
    prefetch: int = Field(default=200, ge=1, le=65535)
    # passive: never declare, only check (a user without configure permission)
    declare_topology: Literal["declare", "passive"] = "declare"

    # Ledger (off when no database URL is set)
    database_url: str | None = None
    database_pool_size: int = Field(default=4, ge=1, le=100)
    database_statement_timeout_ms: int = Field(default=5000, ge=100)
    claim_lease_seconds: float = Field(default=60.0, gt=0)
    # Each daemon's heartbeat in the ledger; a claim of one unseen for 3 beats is taken over.
    ledger_heartbeat_seconds: float = Field(default=2.0, ge=0.5, le=60)

    # Cloud API
    graph_api_url: str = "https://graph.facebook.com"
    graph_api_version: str = Field(default="v23.0", pattern=r"^v\d+\.\d+$")
    http_timeout_seconds: float = Field(default=20.0, gt=0)

    # Cloud API transport (issue 17): the HTTP client of the sends (wa_consumer/transport),
    # and a PEM file of CA certificates trusted for WA_GRAPH_API_URL beside the system's
    graph_transport: Literal["aiohttp", "pyreqwest"] = "pyreqwest"  # README: design notes
    graph_ca_file: str | None = None

    @field_validator("graph_ca_file")
    @classmethod
    def _ca_file(cls, value: str | None) -> str | None:
        if not value:
            return None  # WA_GRAPH_CA_FILE= (empty): the system's CAs only
        try:
            with open(value, "rb") as pem:
                head = pem.read(1 << 20)
        except OSError as exc:
            raise ValueError(f"cannot read it ({exc.strerror or type(exc).__name__})") from None
        if b"-----BEGIN CERTIFICATE-----" not in head:
            raise ValueError("holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        return value

    # HTTP/2 when the API offers it by ALPN over TLS (pyreqwest only): every send shares one
    # connection, up to the server's stream limit. Off by default: README, design notes.
    graph_http2: bool = False

    @field_validator("graph_http2")
    @classmethod
    def _http2(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("graph_transport") != "pyreqwest":
            raise ValueError("needs WA_GRAPH_TRANSPORT=pyreqwest (aiohttp's client has no HTTP/2)")
        return value

    # Credentials
    tenant_service_url: str | None = None
    tenant_service_token: SecretStr | None = None
    tenant_service_timeout_seconds: float = Field(default=5.0, gt=0)
    static_credentials: dict[str, dict[str, Any]] = Field(default_factory=dict)
    credential_ttl_seconds: float = Field(default=900.0, gt=0)
    credential_cache_size: int = Field(default=10_000, ge=1)

    # Retry policy
    retry_delays: list[float] = Field(default_factory=lambda: [30.0, 120.0, 600.0, 1800.0, 3600.0])
    max_retries: int = Field(default=5, ge=0)
    rate_limit_min_delay: float = Field(default=60.0, ge=0)
    pair_limit_min_delay: float = Field(default=10.0, ge=0)
    max_message_age_seconds: float = Field(default=86_400.0, gt=0)
    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    max_deliveries: int = Field(default=5, ge=2)
    error_text_bytes: int = Field(default=1024, ge=64, le=16_384)

    # Throughput (SPEC §12)
    number_rate: float = Field(default=80.0, ge=0)  # sends/s per phoneNumberId; 0: no limit
    number_rates: dict[str, float] = Field(default_factory=dict)  # {"<phoneNumberId>": rate}
    redis_url: str | None = None  # set: the number limits hold across every daemon sharing it
    redis_prefix: str = "wa:"
    redis_fallback_share: float = Field(default=0.5, gt=0, le=1)  # of the rate, Redis away
    throttle_max_wait_seconds: float = Field(default=1.0, ge=0)  # longer: to a wait queue
    throttle_requeue_seconds: float = Field(default=1.0, ge=0)  # its wait queue; 0: 1st step
    pair_min_interval_seconds: float = Field(default=0.0, ge=0)  # per recipient; 0: off

    # Tenant controls (SPEC §14; with the ledger): pauses, held queues, the breaker
    controls_poll_seconds: float = Field(default=2.0, ge=0.1, le=60)  # replicas read pauses
    held_queue_prefix: str = Field(default="outbound-held", min_length=1, max_length=64)
    # Consecutive account-level failures (account, auth, tenant_suspended) that pause a
    # tenant or number by themselves; 0: no breaker
    breaker_threshold: int = Field(default=5, ge=0, le=100_000)
    breaker_probe_seconds: float = Field(default=300.0, gt=0)  # then one probe message

    # Delivery statuses (SPEC §13): the webhook receiver, and the status consumer in ``run``
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=8090, ge=0, le=65535)
    webhook_path: str = Field(default="/webhook", pattern=r"^/[!-~]*$")
    webhook_verify_token: SecretStr | None = None  # Meta's subscription check
    webhook_app_secret: SecretStr | None = None  # signs X-Hub-Signature-256
    webhook_app_secrets: list[SecretStr] = Field(default_factory=list)  # several Meta apps
    webhook_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)  # Meta's are KiB
    webhook_max_concurrent: int = Field(default=1000, ge=1)  # requests read at once; more: 503
    webhook_publish_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_exchange: str = "whatsapp-webhooks"
    webhook_queue: str = "inbound-webhooks"
    webhook_routing_key: str = "webhook.whatsapp"
    webhook_failed_queue: str = "inbound-webhooks-failed"  # bodies that cannot be read
    inbound_messages_queue: str = "inbound-messages"
    inbound_routing_key: str = "inbound.message"
    inbound_messages: bool = True  # forward customers' messages; False: drop them (counted)
    statuses_enabled: bool = True  # apply statuses to the ledger in ``run`` (ledger on)
    statuses_prefetch: int = Field(default=500, ge=1, le=65535)
    statuses_batch_seconds: float = Field(default=0.05, ge=0, le=5)

    # Process
    # How long start-up waits in all for RabbitMQ and PostgreSQL to answer; 0: fail at once
    startup_wait_seconds: float = Field(default=60.0, ge=0)
    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    metrics_port: int = Field(default=9464, ge=0, le=65535)  # /metrics, /healthz, /readyz; 0: off
    metrics_host: str = "0.0.0.0"
    metrics_tenant_labels: bool = False  # a tenant label on message counters (cardinality!)
    metrics_queue_interval_seconds: float = Field(default=15.0, gt=0)
    # Queues whose head message is peeked for its age (wa_consumer/probe.py says what it costs)
    metrics_queue_peek: list[Literal["main", "wait", "dead"]] = Field(default=["main"])

    # Workers (`run --workers N`, wa_consumer/supervisor): restarts of one worker allowed in
    # the window before the supervisor gives up (0: the first death ends it); the index is
    # the supervisor's to set in each worker it starts (the `worker` field of its log lines)
    worker_restart_limit: int = Field(default=5, ge=0)
    worker_restart_window_seconds: float = Field(default=300.0, gt=0)
    worker_index: int | None = Field(default=None, ge=0)

    @field_validator("worker_index", mode="before")
    @classmethod
    def _no_index(cls, value: object) -> object:
        return None if value == "" else value  # WA_WORKER_INDEX= (empty): not a worker

    # Alerts (an error line with alert=true, wa_alerts_total, and the webhook when set)
    alert_webhook_url: SecretStr | None = None  # may carry a secret in its path: never logged
    alert_dead_rate: float = Field(default=60.0, ge=0)  # dead messages per minute; 0: off
    alert_queue_age_seconds: float = Field(default=300.0, ge=0)  # main queue head; 0: off
    alert_dedup_seconds: float = Field(default=600.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # OpenTelemetry spans per delivery (the ``otel`` extra; exporters from OTEL_* variables)
    otel_enabled: bool = False
    log_format: Literal["json", "console"] = "json"

    # Console (``wa-consumer console``): the web page and JSON API for failures and tenants
    console_host: str = "127.0.0.1"
    console_port: int = Field(default=8091, ge=0, le=65535)
    # {"<user>": "scrypt$n$r$p$salt$hash"}, made by `wa-consumer console hash-password`
    console_users: dict[str, SecretStr] = Field(default_factory=dict)
    # {"<name>": "<token>"}: bearer tokens for /api/*; the name is the actor in the audit trail
    console_api_tokens: dict[str, SecretStr] = Field(default_factory=dict)
    # Signs session cookies; unset: a random one per process (sessions end at a restart)
    console_secret: SecretStr | None = None
    console_secure_cookie: bool = False  # the Secure flag: set it when served over HTTPS
    console_replay_rate: float = Field(default=5.0, gt=0, le=10_000)  # a group replay, msgs/s
    console_canary: int = Field(default=10, ge=1, le=1000)  # replayed first, then asked

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("retry_delays")
    @classmethod
    def _ladder(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("needs at least one delay")
        if any(d <= 0 for d in value):
            raise ValueError("delays must be positive seconds")
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("expected an amqp:// or amqps:// URL")
        return value

    @field_validator("graph_api_url", "tenant_service_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("alert_webhook_url", mode="before")
    @classmethod
    def _webhook(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text == "":
            return None  # WA_ALERT_WEBHOOK_URL= (empty): no webhook
        if isinstance(text, str) and not text.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    # Empty is unset, as config/.env.example leaves them: copied to .env, it means the defaults.
    @field_validator(
        "webhook_verify_token",
        "webhook_app_secret",
        "database_url",
        "tenant_service_url",
        "tenant_service_token",
        mode="before",
    )
    @classmethod
    def _empty_secret(cls, value: object) -> object:
        return None if value == "" else value  # WA_WEBHOOK_APP_SECRET= (empty): unset

    @field_validator("webhook_app_secrets")
    @classmethod
    def _secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not s.get_secret_value() for s in value):
            raise ValueError("an app secret cannot be empty")
        return value

    @property
    def webhook_secrets(self) -> tuple[bytes, ...]:
        """Every app secret a webhook's signature may be made with."""
        every = [self.webhook_app_secret, *self.webhook_app_secrets]
        return tuple(s.get_secret_value().encode() for s in every if s is not None)

    @field_validator("number_rates")
    @classmethod
    def _rates(cls, value: dict[str, float]) -> dict[str, float]:
        for number, rate in value.items():
            if rate < 0:
                raise ValueError(f"rate of {number!r} must be 0 (no limit) or more")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if not value:
            return None  # WA_REDIS_URL= (empty): in process
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("static_credentials")
    @classmethod
    def _static(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for tenant, entry in value.items():
            for key in ("accessToken", "phoneNumberId"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise ValueError(f"tenant {tenant!r} needs a non-empty {key!r}")
        return value

    # Console: a malformed password hash, a short token or secret stops start-up.
    @field_validator("console_users")
    @classmethod
    def _console_users(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for user, hashed in value.items():
            if not user or not user.isprintable() or len(user) > 64:
                raise ValueError("a user name must be 1 to 64 printable characters")
            if not _PASSWORD_HASH.fullmatch(hashed.get_secret_value()):
                raise ValueError(
                    f"the hash of {user!r} is not scrypt$N$r$p$salt$hash "
                    "(make one with `wa-consumer console hash-password`)"
                )
        return value

    @field_validator("console_api_tokens")
    @classmethod
    def _console_tokens(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in value.items():
            if not name or not name.isprintable() or len(name) > 64:
                raise ValueError("a token's name must be 1 to 64 printable characters")
            if len(token.get_secret_value()) < 24:
                raise ValueError(f"the token {name!r} is shorter than 24 characters")
        return value

    @field_validator("console_secret", mode="before")
    @classmethod
    def _console_secret(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text == "":
            return None  # WA_CONSOLE_SECRET= (empty): a random one per process
        if isinstance(text, str) and len(text) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @property
    def max_age_ms(self) -> int:
        return int(self.max_message_age_seconds * 1000)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """pydantic's, secrets masked: ``repr``, ``str`` and rich's repr all come through here.

        The fields keep their types (code reads ``amqp_url`` as a str): only the shown copy is
        masked. ``SecretStr`` fields mask themselves.
        """
        for name, value in super().__repr_args__():
            if name == "static_credentials" and isinstance(value, Mapping):
                yield name, {tenant: _masked_entry(entry) for tenant, entry in value.items()}
            elif name is not None and name.endswith("_url") and isinstance(value, str):
                yield name, safe_url(value)
            else:
                yield name, value


def _field_env_name(loc: tuple[int | str, ...]) -> str:
    return "WA_" + str(loc[0]).upper() if loc else "settings"


def _shown(name: str, value: object) -> str:
    """`` (got <value>)`` for a bad value, its password masked; nothing for a secret setting."""
    if name in _SECRET_SETTINGS or not isinstance(value, str | int | float):
        return ""
    if isinstance(value, str):
        value = safe_url(value)  # a value that is no URL comes out as it went in
    return f" (got {value!r})"


def masked(text: str) -> str:
    """``text`` (an error line) with the password of any URL in it shown as ``***``."""
    return _USERINFO.sub(rf"\g<1>{MASK}", text)


def _scrubbed(line: str, secret: object) -> str:
    """``line`` with ``secret`` (a bad secret setting's value) and any URL password masked."""
    if isinstance(secret, str) and len(secret) >= 4 and secret in line:
        line = line.replace(secret, MASK)
    return _USERINFO.sub(rf"\g<1>{MASK}", line)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, or raise ``SettingsError`` with one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _field_env_name(tuple(first["loc"]))
        value = first.get("input")
        secret = value if name in _SECRET_SETTINGS else None
        line = _scrubbed(f"{name}: {first['msg']}{_shown(name, value)}", secret)
    except ValueError as exc:  # pydantic-settings' JSON decoding of list/dict fields
        found = re.search(r'field "(\w+)"', str(exc))
        name = "WA_" + found.group(1).upper() if found else "settings"
        # json's own message names the place, never the text; anything else is not quoted.
        cause = exc.__cause__
        why = str(cause) if isinstance(cause, json.JSONDecodeError) else "cannot be decoded"
        line = _scrubbed(f"{name}: expected JSON ({why})", None)
    # Raised out here: the exceptions above hold the bad values (tokens among them) and would
    # stay reachable as its __context__, even with ``from None``.
    raise SettingsError(line)
