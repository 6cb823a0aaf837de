"""Start-up waits for its servers: RabbitMQ and PostgreSQL may come up after the daemon.

``Startup.until_up`` calls a connect function again, with exponential back-off and jitter,
while it fails with ``Unreachable`` (refused, timeout, DNS, "the database system is starting
up"), for at most ``WA_STARTUP_WAIT_SECONDS`` in all (the attempt under way when the time
runs out may take its own timeout), with one ``waiting_for_dependency`` line per failed
attempt. Whatever else a server says (a wrong user or password, no such database or vhost)
stops start-up at once: waiting would only delay the operator. After the bound, the last
error is raised, one line saying how long start-up waited. A stop (SIGTERM, SIGINT) during
the wait raises ``StartupStopped`` at once; the daemon and the receiver then exit 0, as after
any stop they were asked for. ``WA_STARTUP_WAIT_SECONDS=0``: one attempt, no wait.

``transient`` is the one table of what waiting may cure; ``connect_broker`` is the one way
the daemon and the webhook receiver connect to RabbitMQ.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Final, Literal, TypeVar

import aio_pika
import aiormq.exceptions as amqp
import asyncpg
from aio_pika.abc import AbstractRobustConnection
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from .errors import Unreachable, WaConsumerError
from .logs import get_logger
from .settings import masked, safe_url

log = get_logger("startup")

Dependency = Literal["rabbitmq", "postgresql"]
T = TypeVar("T")

#: 0.5 s doubling up to 8 s, each plus up to 1 s at random: replicas started together (a
#: compose stack, a rollout) do not knock on the broker in step.
BACKOFF: Final = wait_exponential(multiplier=0.5, max=8) + wait_random(0, 1)

#: What RabbitMQ says when waiting cannot help: credentials, vhost, protocol.
_AMQP_NEVER: Final = (
    amqp.AuthenticationError,
    amqp.ProbableAuthenticationError,
    amqp.IncompatibleProtocolError,
    amqp.ConnectionNotAllowed,
    amqp.ConnectionSyntaxError,
    amqp.ConnectionFrameError,
    amqp.ConnectionCommandInvalid,
    amqp.ConnectionChannelError,
    amqp.ConnectionUnexpectedFrame,
    amqp.ConnectionNotImplemented,
)
#: What PostgreSQL says for "not now": starting up or shutting down (57P0x), too many
#: connections, a connection lost half-way (a proxy or a restart).
_PG_NOT_NOW: Final = (
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


class StartupStopped(WaConsumerError):
    """A stop was asked for while start-up waited for a server; nothing was consumed."""


def transient(exc: BaseException) -> bool:
    """Whether waiting may cure ``exc``, raised while connecting to RabbitMQ or PostgreSQL.

    Connection-level failures may (refused, reset, timeout, DNS, a server starting up); a
    server's "no" (authentication, no such database or vhost) and a certificate that does
    not verify do not. aiormq raises its connection errors as OSErrors, ``from`` the cause.
    """
    if isinstance(exc, _AMQP_NEVER):
        return False
    if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(
        exc.__cause__, ssl.SSLCertVerificationError
    ):
        return False
    return isinstance(exc, (OSError, TimeoutError, *_PG_NOT_NOW))


async def connect_broker(url: str) -> AbstractRobustConnection:
    """The robust connection, or one line naming the broker (its password masked);
    ``Unreachable`` when waiting may help."""
    try:
        return await aio_pika.connect_robust(url, timeout=10, reconnect_interval=1)
    except (OSError, amqp.AMQPError) as exc:
        error = Unreachable if transient(exc) else WaConsumerError
        raise error(f"cannot connect to RabbitMQ at {safe_url(url)}: {masked(str(exc))}") from None


class Startup:
    """The wait of one start-up: one bound for every server, ended early by ``stop``."""

    def __init__(self, bound: float, stop: asyncio.Event) -> None:
        self.bound = bound
        self._stop = stop
        self._started = time.monotonic()
        self._deadline = self._started + bound

    async def until_up(self, dependency: Dependency, connect: Callable[[], Awaitable[T]]) -> T:
        """``connect()``'s result, tried again while it raises ``Unreachable`` (see above)."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unreachable),
            stop=self._out_of_time,
            wait=self._delay,
            sleep=self._sleep,
            before_sleep=lambda state: _log_attempt(dependency, state),
            reraise=True,
        )
        try:
            with quiet_transport_errors():
                async for attempt in retrying:
                    with attempt:
                        return await self._attempt(connect)
        except Unreachable as exc:
            if self._stop.is_set():
                raise StartupStopped("stopped while waiting for " + dependency) from None
            if self.bound <= 0:
                raise
            waited = time.monotonic() - self._started
            raise type(exc)(
                f"{exc} (start-up waited {waited:.0f}s, WA_STARTUP_WAIT_SECONDS={self.bound:g})"
            ) from None
        raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover

    async def _attempt(self, connect: Callable[[], Awaitable[T]]) -> T:
        """One attempt, abandoned as soon as a stop is asked for."""
        if self._stop.is_set():
            raise StartupStopped("stopped before connecting")
        attempt = asyncio.ensure_future(connect())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not attempt.done():
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
        if attempt.cancelled():
            raise StartupStopped("stopped while connecting")
        return attempt.result()  # what it raised, raised here

    def _out_of_time(self, _: RetryCallState) -> bool:
        return self._stop.is_set() or time.monotonic() >= self._deadline

    def _delay(self, state: RetryCallState) -> float:
        """The back-off, cut short at the deadline: the last attempt is made at the bound."""
        return min(BACKOFF(state), max(0.0, self._deadline - time.monotonic()))

    async def _sleep(self, seconds: float) -> None:
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise StartupStopped("stopped while waiting")


def _log_attempt(dependency: Dependency, state: RetryCallState) -> None:
    outcome, action = state.outcome, state.next_action
    error = outcome.exception() if outcome is not None else None
    log.warning(
        "waiting_for_dependency",
        dependency=dependency,
        attempt=state.attempt_number,
        next_delay_s=round(action.sleep, 2) if action is not None else None,
        error=masked(str(error))[:300],
    )


class _NoTransportErrors(logging.Filter):
    """aiormq logs every failed connect itself; during the wait, our line says it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


@contextmanager
def quiet_transport_errors() -> Iterator[None]:
    """aiormq's own line for a failed connect muted: the caller says it once, in its words."""
    logger, quiet = logging.getLogger("aiormq.connection"), _NoTransportErrors()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
