"""What the sandbox does: one immutable ``SandboxConfig``, replaced whole when changed.

The config is data only (validated by pydantic, so a JSON file, CLI options and the admin
endpoint all go through the same checks). ``SandboxState`` turns it into the structures
the request handler reads (compiled regexes, token maps, buckets).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from wa_consumer.sandbox.throughput import RateWindow

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_MASK = str(SecretStr("x"))  # how pydantic shows a secret: "**********"


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regex: {exc}") from exc
    return value


class Latency(BaseModel):
    """Delay before every ``/messages`` answer: ``ms`` plus a uniform ``0..jitter_ms``."""

    model_config = _FROZEN

    ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)


class TenantConfig(BaseModel):
    """A business: its numbers and its (fake) token.

    ``token`` left empty is generated as ``sandbox-<id>-<random>``; a tenant that already
    exists keeps its current token when the config is replaced, so a running daemon's cached
    credentials stay valid unless a rotation is asked for.
    """

    model_config = _FROZEN

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    phone_number_ids: tuple[str, ...] = Field(min_length=1)
    token: str | None = None
    # The WhatsApp Business Account id status webhooks carry in ``entry[].id``; left empty,
    # one is derived from the tenant id (stable across runs).
    waba_id: str | None = Field(default=None, pattern=r"^[0-9]{1,20}$")
    suspended: bool = False
    # The tenant service answers this HTTP status for this tenant (e.g. 503) instead.
    service_error: int | None = Field(default=None, ge=400, le=599)


class FailureRule(BaseModel):
    """Answer requests whose recipient matches ``match`` with a failure.

    ``match`` is a regex searched in the recipient's digits (``to`` without ``+``, spaces or
    dashes). ``times`` fails only the first N requests of each recipient, after which that
    recipient succeeds (``None``: always fail). ``body`` ``html`` is a proxy's 502 page and
    ``empty`` no body at all; ``hang`` never answers (the connection is closed after
    ``hang_seconds``), to provoke client timeouts.
    """

    model_config = _FROZEN

    match: str
    code: int | None = None
    status: int | None = Field(default=None, ge=200, le=599)
    times: int | None = Field(default=None, ge=1)
    body: Literal["json", "html", "empty"] = "json"
    hang: bool = False
    subcode: int | None = None
    details: str | None = None
    note: str = ""

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _regex(value)

    @model_validator(mode="after")
    def _json_needs_code(self) -> FailureRule:
        if self.body == "json" and not self.hang and self.code is None:
            raise ValueError("a rule answering with a JSON error needs a Meta `code`")
        return self


def default_tenants() -> tuple[TenantConfig, ...]:
    """Two working businesses (acme has two numbers) and a suspended one."""
    return (
        TenantConfig(
            id="acme",
            phone_number_ids=("106540352242922", "106540352242923"),
            waba_id="102290129340398",
        ),
        TenantConfig(id="globex", phone_number_ids=("107650492331811",), waba_id="103301230451409"),
        TenantConfig(
            id="initech",
            phone_number_ids=("108760582410700",),
            waba_id="104412341562510",
            suspended=True,
        ),
    )


def default_rules() -> tuple[FailureRule, ...]:
    """Outcomes by recipient number alone: ``1555 00D xxxx``, where D picks the outcome."""
    return (
        FailureRule(match=r"^1555000", code=131026, note="undeliverable, always (permanent)"),
        FailureRule(match=r"^1555001", code=131000, times=2, note="transient twice, then sent"),
        FailureRule(match=r"^1555002", code=131031, note="account locked, always (account)"),
        FailureRule(match=r"^1555003", code=130429, times=1, note="throughput limit once"),
        FailureRule(match=r"^1555004", code=131056, times=1, note="pair rate limit once"),
        FailureRule(match=r"^1555005", body="html", times=1, note="proxy HTML 502 once"),
        FailureRule(match=r"^1555006", code=131047, note="24 h window closed, always (permanent)"),
        FailureRule(match=r"^1555007", hang=True, times=1, note="no answer once (timeout)"),
        FailureRule(match=r"^1555008", body="empty", status=503, times=1, note="empty 503 once"),
        FailureRule(match=r"^1555009", code=131016, note="service unavailable, always (transient)"),
    )


class WebhookFailure(BaseModel):
    """Accept a message to a matching recipient (200, a wamid), then report it ``failed``.

    Meta finds most undeliverable recipients only after accepting the request, so these
    arrive as ``sent`` followed by ``failed`` with this error, ``after_ms`` after acceptance
    (default: the section's ``delivered_after_ms``), and never as ``delivered``. ``match`` is
    searched in the recipient's digits; the ``/messages`` rules are checked first. ``title``,
    ``message`` and ``details`` default to Meta's wording of ``code``.
    """

    model_config = _FROZEN

    match: str
    code: int = 131026
    title: str | None = None
    message: str | None = None
    details: str | None = None
    after_ms: float | None = Field(default=None, ge=0)
    note: str = ""

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return _regex(value)


def default_webhook_failures() -> tuple[WebhookFailure, ...]:
    """Failures after acceptance by recipient number: ``1555 01D xxxx`` (beside ``00D``)."""
    return (
        WebhookFailure(match=r"^1555010", code=131026, note="accepted, then undeliverable"),
        WebhookFailure(match=r"^1555011", code=131047, note="accepted, then 24 h window closed"),
        WebhookFailure(match=r"^1555012", code=131049, note="accepted, then not delivered"),
    )


class WebhookConfig(BaseModel):
    """Status webhooks for accepted messages, signed like Meta's; off while ``url`` is None.

    ``sent`` goes out right after acceptance, ``delivered`` ``delivered_after_ms`` after it,
    and for a ``read_share`` fraction ``read`` a further ``read_after_ms`` later. A message's
    statuses are posted one after another (the next waits for the previous POST), so
    ``out_of_order`` (reverse order: read, delivered, sent, once all have happened) arrives
    in that order. ``duplicates`` posts that fraction of bodies twice; ``batch`` puts up to
    that many statuses in one POST, as Meta does under load. A POST answered non-2xx, or not
    at all within ``timeout_ms``, is retried ``retries`` times (``retry_backoff_ms``,
    doubling), then counted failed. At most ``max_pending`` messages wait for statuses;
    beyond that new ones get none and are counted dropped.
    """

    model_config = _FROZEN

    url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    app_secret: SecretStr | None = None
    delivered_after_ms: float = Field(default=500.0, ge=0)
    read_after_ms: float = Field(default=1000.0, ge=0)
    read_share: float = Field(default=0.5, ge=0, le=1)
    failed: tuple[WebhookFailure, ...] = Field(default_factory=default_webhook_failures)
    duplicates: float = Field(default=0.0, ge=0, le=1)
    out_of_order: float = Field(default=0.0, ge=0, le=1)
    batch: int = Field(default=1, ge=1, le=1000)
    # Template name -> pricing category; other templates go by a name heuristic.
    template_categories: dict[str, Literal["marketing", "utility", "authentication"]] = Field(
        default_factory=dict
    )
    retries: int = Field(default=3, ge=0, le=10)
    retry_backoff_ms: float = Field(default=500.0, ge=0)
    timeout_ms: float = Field(default=5000.0, gt=0)
    max_pending: int = Field(default=100_000, ge=1)

    @model_validator(mode="after")
    def _signed(self) -> WebhookConfig:
        if self.url is not None and self.app_secret is None:
            raise ValueError("webhooks.url needs webhooks.app_secret: Meta signs every webhook")
        return self


class SandboxConfig(BaseModel):
    """Every behaviour of the sandbox; see the package docstring for the defaults."""

    model_config = _FROZEN

    latency: Latency = Latency()
    tenants: tuple[TenantConfig, ...] = Field(default_factory=default_tenants)
    rules: tuple[FailureRule, ...] = Field(default_factory=default_rules)
    # A fraction of the requests no rule matched, answered with `failure_code`.
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    failure_code: int = 131000
    # Requests/s per phone number id; 0: no limit. Past it: 400 code 130429, as from Meta.
    # Meta's default is 80; off here so tests and benchmarks are not throttled unasked.
    number_rate: float = Field(default=0.0, ge=0)
    number_rates: dict[str, float] = Field(default_factory=dict)
    # How that rate is counted (wa_consumer/sandbox/throughput.py): "token_bucket", one
    # second of burst; "sliding", at most `rate` in any one second; "fixed", at most `rate`
    # in each second of the clock. Accepted requests count, 130429 answers do not.
    number_rate_window: RateWindow = "token_bucket"
    # When set, the tenant service requires `Authorization: Bearer <service_token>`.
    service_token: str | None = None
    # The request log (GET /_sandbox/requests); turn off for benchmarks.
    record_requests: bool = True
    max_requests: int = Field(default=10_000, ge=1)
    hang_seconds: float = Field(default=300.0, gt=0)
    webhooks: WebhookConfig = WebhookConfig()
    seed: int | None = None

    @model_validator(mode="after")
    def _numbers_unique(self) -> SandboxConfig:
        seen: dict[str, str] = {}
        for tenant in self.tenants:
            for number in tenant.phone_number_ids:
                if number in seen and seen[number] != tenant.id:
                    raise ValueError(f"number {number} belongs to {seen[number]} and {tenant.id}")
                seen[number] = tenant.id
        if len({t.id for t in self.tenants}) != len(self.tenants):
            raise ValueError("tenant ids must be unique")
        return self

    def updated(self, changes: dict[str, Any]) -> SandboxConfig:
        """A new config with the top-level keys of ``changes`` replaced (validated).

        The webhook secret is write-only: a ``webhooks`` section without ``app_secret``, or
        with the masked value ``GET /_sandbox/config`` shows, keeps the current one.
        """
        unknown = set(changes) - set(type(self).model_fields)
        if unknown:
            raise ValueError(f"unknown sandbox settings: {', '.join(sorted(unknown))}")
        merged = self.model_dump()
        merged.update(changes)
        hooks = changes.get("webhooks")
        if isinstance(hooks, dict) and hooks.get("app_secret", _MASK) == _MASK:
            merged["webhooks"] = {**hooks, "app_secret": self.webhooks.app_secret}
        return type(self).model_validate(merged)


def load_config(path: str | Path | None = None, **overrides: Any) -> SandboxConfig:
    """The config from an optional JSON file, then ``overrides`` (``None`` values skipped).

    Meant for command lines: ``load_config(args.config, number_rate=args.number_rate)``.
    ``latency_ms`` and ``jitter_ms`` are accepted as shortcuts for ``latency``, and
    ``webhook_<field>`` (``webhook_url``, ``webhook_app_secret``, ...) for ``webhooks``.
    """
    config = SandboxConfig()
    if path is not None:
        config = SandboxConfig.model_validate_json(Path(path).read_bytes())
    changes = {key: value for key, value in overrides.items() if value is not None}
    latency_ms = changes.pop("latency_ms", None)
    jitter_ms = changes.pop("jitter_ms", None)
    if latency_ms is not None or jitter_ms is not None:
        changes["latency"] = {
            "ms": config.latency.ms if latency_ms is None else latency_ms,
            "jitter_ms": config.latency.jitter_ms if jitter_ms is None else jitter_ms,
        }
    webhooks = {
        key.removeprefix("webhook_"): changes.pop(key)
        for key in list(changes)
        if key.startswith("webhook_")
    }
    if webhooks:
        changes["webhooks"] = {**config.webhooks.model_dump(), **webhooks}
    return config.updated(changes) if changes else config
