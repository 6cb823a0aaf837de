"""The exception tree of wa-consumer.

Errors from aiohttp, aio-pika and asyncpg are caught where they enter our code and
re-raised as one of these (``raise ... from exc``)::

    WaConsumerError
    ├── SettingsError            a setting is missing or malformed (start-up stops)
    ├── TopologyMismatch         the broker holds a queue with other arguments
    ├── Unreachable              RabbitMQ or PostgreSQL did not answer (start-up waits for it)
    ├── LedgerUnavailable        PostgreSQL cannot be reached (consuming pauses)
    │   └── LedgerUnreachable    ... at start, and waiting may help (an Unreachable too)
    ├── InvalidMessage           the body can never be sent as is (category ``invalid``)
    ├── CredentialError          the tenant's credentials could not be had
    │   ├── TenantUnknown        tenant service said 404   (``tenant_unknown``)
    │   ├── TenantSuspended      tenant service said 403   (``tenant_suspended``)
    │   ├── TenantMismatch       the number is not the tenant's (``tenant_mismatch``)
    │   └── TenantServiceUnavailable  5xx, 408, 429, timeout, connect error (retryable)
    ├── GraphError               the Cloud API did not return a wamid
    │   ├── GraphApiError        Meta answered with an error (HTTP status, code, subcode)
    │   └── GraphTransportError  no usable answer: connect failure or timeout
    └── PublishError             (publisher.py) the broker did not take a published message
        ├── Unroutable           no queue bound for the routing key
        ├── Refused              the broker nacked it
        └── NotConfirmed         no confirm in time: it may or may not be queued

No message of these ever holds an access token: callers pass ids, never tokens.
"""

from __future__ import annotations

from .categories import Category


class WaConsumerError(Exception):
    """Base of every error wa-consumer raises on purpose."""


class SettingsError(WaConsumerError):
    """A setting is missing or malformed; the message names it in one line."""


class TopologyMismatch(WaConsumerError):
    """The broker already holds a queue declared with other arguments."""

    def __init__(self, queue: str, argument: str, existing: object, wanted: object) -> None:
        self.queue = queue
        self.argument = argument
        self.existing = existing
        self.wanted = wanted
        super().__init__(
            f"queue {queue!r} exists with {argument}={existing!r} but this configuration "
            f"wants {argument}={wanted!r}; delete the queue (rabbitmqctl delete_queue {queue}, "
            f"after draining it) or change the setting to match the broker"
        )


class Unreachable(WaConsumerError):
    """A server did not answer at all: refused, timed out, no such host, still starting up.

    Start-up waits for it (``startup.py``, ``WA_STARTUP_WAIT_SECONDS``); any other error of a
    connect (a wrong password, no such database or vhost) stops start-up at once.
    """


class LedgerUnavailable(WaConsumerError):
    """The ledger's database cannot be reached; messages wait in RabbitMQ meanwhile."""


class LedgerUnreachable(LedgerUnavailable, Unreachable):
    """The ledger could not be opened, and waiting may help (``Unreachable``)."""


class InvalidMessage(WaConsumerError):
    """The message can never be sent as is; ``where`` points at the offending field."""

    def __init__(
        self,
        reason: str,
        where: str = "",
        *,
        tenant_id: str | None = None,
        internal_id: str | None = None,
    ) -> None:
        self.reason = reason
        self.where = where
        # Whatever ids could be read before the error, for the DLQ headers and logs.
        self.tenant_id = tenant_id
        self.internal_id = internal_id
        super().__init__(f"{where}: {reason}" if where else reason)


class CredentialError(WaConsumerError):
    """The tenant's credentials could not be had."""

    category: Category = Category.TRANSIENT
    retryable: bool = False

    def __init__(self, tenant_id: str, detail: str) -> None:
        self.tenant_id = tenant_id
        super().__init__(f"tenant {tenant_id!r}: {detail}")


class TenantUnknown(CredentialError):
    category = Category.TENANT_UNKNOWN


class TenantSuspended(CredentialError):
    category = Category.TENANT_SUSPENDED


class TenantMismatch(CredentialError):
    category = Category.TENANT_MISMATCH


class TenantServiceUnavailable(CredentialError):
    category = Category.TRANSIENT
    retryable = True


class GraphError(WaConsumerError):
    """The Cloud API did not give a wamid.

    ``maybe_sent`` is True when the request may have reached Meta (a timeout after the
    body was written): a resend could message the customer twice.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
        is_transient: bool | None = None,
        maybe_sent: bool = False,
        short_code: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id
        self.is_transient = is_transient
        self.maybe_sent = maybe_sent
        self.short_code = short_code
        super().__init__(message)

    @property
    def code_text(self) -> str:
        """What goes into ``x-error-code``: Meta's code, else the HTTP status, else a name."""
        if self.code is not None:
            return str(self.code)
        if self.status is not None:
            return str(self.status)
        return self.short_code or "unknown"


class GraphApiError(GraphError):
    """Meta (or something in front of it) answered with an HTTP error."""


class GraphTransportError(GraphError):
    """No usable answer: the connection failed, or the answer did not come in time."""
