"""Start-up's wait for its servers: the back-off, what is waited for, the bound, a stop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Any

import aiormq.exceptions as amqp
import asyncpg
import pytest
from structlog.testing import capture_logs
from tenacity import RetryCallState, wait_fixed

from wa_consumer import startup
from wa_consumer.errors import LedgerUnreachable, Unreachable, WaConsumerError
from wa_consumer.startup import BACKOFF, Startup, StartupStopped, transient


def _state(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return state


def test_backoff_doubles_from_half_a_second_to_eight_with_up_to_a_second_of_jitter() -> None:
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (6, 8.0), (20, 8.0)]:
        delays = [BACKOFF(_state(attempt)) for _ in range(200)]
        assert all(base <= d <= base + 1 for d in delays), (attempt, min(delays), max(delays))
        assert max(delays) - min(delays) > 0.5  # jittered: replicas do not retry in step


def _from(cause: BaseException, error: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "waits"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (TimeoutError(), True),
        (amqp.AMQPConnectionError(111, "Connect call failed"), True),
        (amqp.AMQPConnectionError("Server connection unexpectedly closed"), True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.TooManyConnectionsError("too many clients"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), True),
        (amqp.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"), False),
        (amqp.ConnectionNotAllowed("NOT_ALLOWED - vhost not found"), False),
        (amqp.InvalidFrameError("Connection.Close"), False),
        (asyncpg.InvalidPasswordError("password authentication failed"), False),
        (asyncpg.InvalidAuthorizationSpecificationError('role "x" does not exist'), False),
        (asyncpg.InvalidCatalogNameError('database "x" does not exist'), False),
        (ssl.SSLCertVerificationError("certificate verify failed"), False),
        (_from(ssl.SSLCertVerificationError("verify failed"), amqp.AMQPConnectionError()), False),
    ],
)
def test_only_connection_level_failures_are_waited_for(error: BaseException, waits: bool) -> None:
    assert transient(error) is waits


class Flaky:
    """A connect that fails ``failures`` times with ``error``, then returns "up"."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or Unreachable("cannot connect to RabbitMQ at amqp://u:***@h/")
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "up"


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "BACKOFF", wait_fixed(0.01))


async def test_unreachable_is_tried_again_with_one_line_per_failed_attempt(fast: None) -> None:
    connect = Flaky(3)
    with capture_logs() as logs:
        assert await Startup(5, asyncio.Event()).until_up("rabbitmq", connect) == "up"
    waits = [e for e in logs if e["event"] == "waiting_for_dependency"]
    assert [e["attempt"] for e in waits] == [1, 2, 3]
    assert all(e["dependency"] == "rabbitmq" and e["next_delay_s"] == 0.01 for e in waits)
    assert "***" in waits[0]["error"] and "cannot connect" in waits[0]["error"]


async def test_an_error_waiting_cannot_cure_fails_at_once(fast: None) -> None:
    connect = Flaky(5, LedgerUnavailableLike("cannot open the ledger: InvalidPasswordError"))
    with capture_logs() as logs, pytest.raises(WaConsumerError, match="InvalidPassword"):
        await Startup(60, asyncio.Event()).until_up("postgresql", connect)
    assert connect.calls == 1
    assert not [e for e in logs if e["event"] == "waiting_for_dependency"]


class LedgerUnavailableLike(WaConsumerError):
    """Not an ``Unreachable``: what a wrong password raises."""


async def test_after_the_bound_the_last_error_says_how_long_it_waited(fast: None) -> None:
    connect = Flaky(10**6, LedgerUnreachable("cannot open the ledger: ConnectionRefusedError"))
    started = time.monotonic()
    with pytest.raises(LedgerUnreachable) as info:
        await Startup(0.3, asyncio.Event()).until_up("postgresql", connect)
    assert 0.3 <= time.monotonic() - started < 1.0
    line = str(info.value)
    assert line.startswith("cannot open the ledger: ConnectionRefusedError (start-up waited")
    assert "WA_STARTUP_WAIT_SECONDS=0.3" in line and "\n" not in line
    assert connect.calls > 3


async def test_a_bound_of_zero_is_one_attempt_and_today_s_line() -> None:
    connect = Flaky(1)
    with pytest.raises(Unreachable) as info:
        await Startup(0, asyncio.Event()).until_up("rabbitmq", connect)
    assert connect.calls == 1
    assert str(info.value) == str(connect.error)


async def test_the_last_sleep_is_cut_at_the_bound() -> None:
    connect = Flaky(10**6)  # the real back-off: 0.5 s then 1 s, cut at 0.8 s
    started = time.monotonic()
    with pytest.raises(Unreachable):
        await Startup(0.8, asyncio.Event()).until_up("rabbitmq", connect)
    assert 0.8 <= time.monotonic() - started < 1.3
    # at 0; after 0.5-1.5 s, cut at 0.8; at the bound when the first sleep was under 0.8 s
    assert connect.calls in (2, 3)


async def test_a_stop_during_the_sleep_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = time.monotonic()
    with pytest.raises(StartupStopped):
        await Startup(60, stop).until_up("rabbitmq", Flaky(10**6))  # sleeps 0.5-1.5 s first
    assert time.monotonic() - started < 0.5


async def test_a_stop_during_an_attempt_abandons_it() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs() -> Any:
        try:
            await asyncio.sleep(60)  # a server that never answers, within aio-pika's timeout
        except asyncio.CancelledError:
            cancelled.set()
            raise

    asyncio.get_running_loop().call_later(0.1, stop.set)
    with pytest.raises(StartupStopped):
        await asyncio.wait_for(Startup(60, stop).until_up("postgresql", hangs), 2)
    assert cancelled.is_set()
