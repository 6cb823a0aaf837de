"""What every command group shares: one-line failures, exit codes, settings, the event loop,
connections of their own to the broker and the ledger, the DLQ filters, who acts and the
audit trail, progress.

Command modules import this one and never each other; ``wa_consumer.cli`` mounts them.
Heavy imports (aio-pika, asyncpg, rich) stay inside the functions: every command would
otherwise pay for them.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager, suppress
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from ..errors import (
    InvalidMessage,
    LedgerUnavailable,
    LedgerUnreachable,
    SettingsError,
    TopologyMismatch,
    Unreachable,
    WaConsumerError,
)
from ..settings import Settings, load_settings, masked
from ..startup import quiet_transport_errors, transient

if TYPE_CHECKING:
    import asyncpg
    from aio_pika.abc import AbstractConnection

    from ..dlq import DlqLedger, Filter

T = TypeVar("T")


class Exit(IntEnum):
    """The exit codes of every command; ``EXIT_CODES`` is how ``--help`` lists them."""

    OK = 0
    FAILED = 1  # not found (an unknown id), or the command could not do its work
    USAGE = 2  # a bad option, argument or setting
    TOPOLOGY = 3  # the broker holds a queue or exchange other than configured
    UNREACHABLE = 4  # RabbitMQ or PostgreSQL did not answer


EXIT_CODES = (
    "Exit codes: 0 ok; 1 not found, or the work failed; 2 bad usage or setting; "
    "3 topology mismatch; 4 broker or database unreachable."
)

_CONNECT_TIMEOUT = 5.0
_BROKER_TIMEOUT = 10.0


def fail(message: str, code: int = Exit.FAILED) -> typer.Exit:
    """One line on stderr; raise what it returns (``raise fail(...) from None``)."""
    typer.echo(f"wa-consumer: {message}", err=True)
    return typer.Exit(int(code))


def exit_code(exc: WaConsumerError) -> Exit:
    """The exit code an error ends a command with."""
    if isinstance(exc, TopologyMismatch):
        return Exit.TOPOLOGY
    if isinstance(exc, Unreachable):  # away: waiting (or a retry later) may help
        return Exit.UNREACHABLE
    if isinstance(exc, SettingsError | InvalidMessage):
        return Exit.USAGE
    return Exit.FAILED


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(f"bad setting {exc}", Exit.USAGE) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (faster I/O on the hot path)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def run_or_exit(coro: Coroutine[Any, Any, T]) -> T:
    """``run_async``; one of our errors ends the command with one line and its exit code."""
    try:
        return run_async(coro)
    except WaConsumerError as exc:
        raise fail(str(exc), exit_code(exc)) from None


def serve(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a server command to its end: its exit code, or one line on what stopped it."""
    raise typer.Exit(run_or_exit(main))


# -- the broker ------------------------------------------------------------------------------


async def connect_broker(url: str) -> AbstractConnection:
    """A plain connection for one-shot commands; ``Unreachable`` when RabbitMQ does not answer."""
    import aio_pika
    import aiormq

    try:
        with quiet_transport_errors():  # ours is the one line
            return await aio_pika.connect(url, timeout=_BROKER_TIMEOUT)
    except (OSError, TimeoutError, aiormq.exceptions.AMQPError) as exc:
        raise Unreachable(f"cannot connect to RabbitMQ: {masked(str(exc))}") from None


def on_broker(settings: Settings, work: Callable[[AbstractConnection], Awaitable[T]]) -> T:
    """Run ``work`` on a connection of its own; any failure ends the command with one line."""

    async def main() -> T:
        connection = await connect_broker(settings.amqp_url)
        try:
            return await work(connection)
        finally:
            await connection.close()

    return run_or_exit(main())


# -- the ledger ------------------------------------------------------------------------------


def database_url() -> str:
    url = settings_or_exit().database_url
    if not url:
        raise fail("WA_DATABASE_URL is not set; the ledger commands need its database", 2)
    return url


def on_ledger(url: str, work: Callable[[asyncpg.Connection[Any]], Awaitable[T]]) -> T:
    """Run ``work`` on a connection of its own; any failure ends the command with one line."""
    import asyncpg

    async def main() -> T:
        try:
            connection = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            # Away (4) or refused: a wrong password or database is the caller's to fix (1).
            kind = LedgerUnreachable if transient(exc) else LedgerUnavailable
            raise kind(f"cannot open the ledger: {masked(str(exc))}") from exc
        try:
            return await work(connection)
        except asyncpg.UndefinedTableError:
            raise LedgerUnavailable(
                "the ledger has no tables yet; run `wa-consumer db migrate` first"
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerUnavailable(f"ledger query failed: {exc}") from exc
        finally:
            await connection.close(timeout=_CONNECT_TIMEOUT)

    return run_or_exit(main())


# -- the filters of `dlq` and `failures` -----------------------------------------------------

Tenants = Annotated[
    list[str] | None, typer.Option("--tenant", metavar="TENANT", help="metadata.tenantId")
]
Types = Annotated[
    list[str] | None, typer.Option("--type", metavar="TYPE", help="wabaPayload.type, e.g. text")
]
Fingerprints = Annotated[
    list[str] | None,
    typer.Option("--fingerprint", metavar="FP", help="Failure fingerprint (a prefix will do)."),
]
Since = Annotated[
    str | None,
    typer.Option("--since", metavar="WHEN", help="Failed at or after: 2h, 7d or an ISO time."),
]
OlderThan = Annotated[
    str | None, typer.Option("--older-than", metavar="AGE", help="Failed before: 30d, 12h...")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DeadCategories = Annotated[
    list[str] | None,
    typer.Option("--category", metavar="CATEGORY", help="x-error-category, e.g. permanent"),
]
DeadCodes = Annotated[
    list[str] | None, typer.Option("--code", metavar="CODE", help="x-error-code, e.g. 131026")
]
Ids = Annotated[
    list[str] | None,
    typer.Option("--id", metavar="INTERNAL_ID", help="One message (internalId or message_id)."),
]
All = Annotated[
    bool, typer.Option("--all", help="Every message in the DLQ: needed when no filter is given.")
]


def filter_or_exit(**values: Any) -> Filter:
    """The filters given, or the command ends with one line saying which one is wrong."""
    from ..dlq import Filter

    try:
        return Filter.of(**values)
    except ValueError as exc:
        raise fail(str(exc), Exit.USAGE) from None


def all_or_exit(selection: Filter, every: bool, command: str) -> None:
    """A command that changes the queue acts on all of it only when asked in so many words."""
    if selection.empty and not every:
        raise fail(
            f"{command} with no filter would act on every message: pass a filter "
            "(--category, --code, --id...) or --all",
            Exit.USAGE,
        )


# -- who acts, and the audit trail -----------------------------------------------------------

Actor = Annotated[
    str | None,
    typer.Option("--actor", metavar="NAME", help="Who, in the audit trail (default: user@host)."),
]


def actor_name(given: str | None) -> str:
    """``--actor``, or who runs the command where: ``user@host (cli)``."""
    return given or f"{getpass.getuser()}@{socket.gethostname()} (cli)"


async def audited(
    ledger: DlqLedger,
    work: Awaitable[T],
    summary: Callable[[T], dict[str, Any]],
    *,
    action: str,
    details: dict[str, Any],
    **who: Any,
) -> T:
    """``work``, then one row of the audit trail (nothing without a ledger): ``action`` with
    ``summary(result)`` added to ``details``, or ``<action>_failed`` with the error."""
    try:
        result = await work
    except WaConsumerError as exc:
        with suppress(WaConsumerError):  # the ledger may be what failed
            failed = {**details, "error": str(exc)}
            await ledger.record(action=f"{action}_failed", details=failed, **who)
        raise
    await ledger.record(action=action, details={**details, **summary(result)}, **who)
    return result


# -- progress --------------------------------------------------------------------------------

Progress = Callable[[int, int], None]
_LINE_EVERY = 1000  # messages (or rows) between two progress lines
_LINE_SECONDS = 2.0  # ... or this long, whichever comes first
_BAR_FROM = 1000  # messages in a pass before a bar is worth drawing


def progress_line(label: str) -> Callable[[str], None]:
    """A plain line on stderr, e.g. ``wa-consumer: migrating: applying 0003_x.sql``."""

    def say(text: str) -> None:
        sys.stderr.write(f"wa-consumer: {label}: {text}\n")
        sys.stderr.flush()

    return say


@contextmanager
def show_progress(label: str, unit: str = "messages", *, bar: bool = True) -> Iterator[Progress]:
    """Progress of a long pass, called with (done, total); total 0 when not known.

    On a terminal (stderr a TTY) a rich bar for long passes, if ``bar``; elsewhere (cron,
    Kubernetes Jobs, pipes) a plain line on stderr every 1,000 or every 2 s, and one at the
    end, so a log shows the pass moving. A pass shorter than that prints nothing.
    """
    if sys.stderr.isatty():
        yield from _bar(label) if bar else _silent()
        return
    say = progress_line(label)
    said = {"done": 0, "total": 0, "at": 0}  # the last call's counts; done at the last line
    last_line = time.monotonic()

    def update(done: int, total: int) -> None:
        nonlocal last_line
        said["done"], said["total"] = done, total
        now = time.monotonic()
        if done - said["at"] >= _LINE_EVERY or now - last_line >= _LINE_SECONDS:
            say(_counted(done, total, unit))
            said["at"], last_line = done, now

    yield update
    if said["at"] and said["done"] != said["at"]:  # a long pass: say where it ended
        say(_counted(said["done"], said["total"], unit))


def _counted(done: int, total: int, unit: str) -> str:
    return f"{done:,} of {total:,} {unit}" if total else f"{done:,} {unit}"


def _silent() -> Iterator[Progress]:
    yield lambda done, total: None


def _bar(label: str) -> Iterator[Progress]:
    from rich.console import Console
    from rich.progress import Progress as Bar
    from rich.progress import TaskID

    with Bar(transient=True, console=Console(stderr=True)) as bar:
        task: list[TaskID] = []

        def update(done: int, total: int) -> None:
            if total < _BAR_FROM:
                return
            if not task:
                task.append(bar.add_task(label, total=total))
            bar.update(task[0], completed=done)

        yield update
