"""Delivery statuses in the demo (SPEC §13), when it has a ledger of its own.

The loop closes as in production, all in this process: the sandbox signs a status webhook
for each message it accepted (``sent``, then ``delivered`` and for some ``read``, or
``failed`` for the recipients ``1555 01D xxxx``) and posts it to the webhook receiver, which
queues it; the daemon's status consumer writes it to the ledger. The demo waits until every
accepted message has its delivered, read or failed status (bounded), and after the daemon
stopped reads the counts and the failures after acceptance with ``failures list``'s query.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import asyncpg
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..dlq.filters import Filter
from ..errors import LedgerUnavailable
from ..ledger.deliveries import FailurePage, failure_page
from ..sandbox import RunningSandbox, SandboxConfig, WebhookConfig
from ..settings import Settings
from ..webhooks.receiver import WebhookReceiver
from .scratch import ScratchLedger

HOST: Final = "127.0.0.1"
DELIVERED_AFTER_MS: Final = 300.0
READ_AFTER_MS: Final = 300.0
READ_SHARE: Final = 0.5
WAIT_SECONDS: Final = 15.0
"""At most this long for the statuses, once every message has reached its end."""
FINAL: Final = ("delivered", "read", "failed")
"""A status after which the demo waits for nothing more (read may follow delivered)."""
_POLL_SECONDS: Final = 0.2
_TIMEOUT: Final = 5.0
_ERRORS: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_OF_WAMIDS: Final = """
SELECT status, count(*) FROM wa_deliveries WHERE wamid = ANY($1::text[]) GROUP BY status
"""
_BY_MESSAGE: Final = """
SELECT internal_id, status, error_code FROM wa_deliveries WHERE internal_id IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class StatusFindings:
    """The ledger's statuses after the run, for the report."""

    database: str
    url: str
    """The database's URL to print (a password masked)."""
    kept: bool
    accepted: int
    """Messages the sandbox accepted with a wamid (read receipts get none)."""
    by_status: dict[str, int]
    """The accepted messages by their latest status in the ledger."""
    by_message: dict[str, tuple[str, str | None]]
    """internalId -> its status and, when failed, Meta's code."""
    failures: FailurePage
    timed_out: bool


def _accepted(sandbox: RunningSandbox) -> list[str]:
    return [r["wamid"] for r in sandbox.state.requests() if r["outcome"] == "sent" and r["wamid"]]


class StatusLoop:
    """The webhook receiver, listening while the sandbox may post; the ledger's side read."""

    def __init__(self, settings: Settings, scratch: ScratchLedger, *, keep: bool) -> None:
        # A secret and a token of this run only: the receiver checks what the sandbox signs.
        self.settings = settings.model_copy(
            update={
                "webhook_app_secret": SecretStr(secrets.token_hex(16)),
                "webhook_app_secrets": [],
                "webhook_verify_token": SecretStr(secrets.token_hex(8)),
            }
        )
        self._scratch = scratch
        self._keep = keep
        self._receiver = WebhookReceiver(self.settings)
        self.url = ""

    async def __aenter__(self) -> StatusLoop:
        port = await self._receiver.start(HOST, 0)
        self.url = f"http://{HOST}:{port}{self.settings.webhook_path}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._receiver.close()

    def sandbox_config(self) -> SandboxConfig:
        """The sandbox's defaults, with status webhooks to the receiver, quick ones."""
        hooks = WebhookConfig(
            url=self.url,
            app_secret=self.settings.webhook_app_secret,
            delivered_after_ms=DELIVERED_AFTER_MS,
            read_after_ms=READ_AFTER_MS,
            read_share=READ_SHARE,
        )
        return SandboxConfig(webhooks=hooks)

    async def _connect(self) -> asyncpg.Connection[Any]:
        try:
            return await asyncpg.connect(self._scratch.url, timeout=_TIMEOUT)
        except _ERRORS as exc:
            raise LedgerUnavailable(f"cannot open the demo's ledger: {exc}") from exc

    async def wait(self, sandbox: RunningSandbox, console: Console, seconds: float) -> bool:
        """Show statuses arriving until each accepted message has a final one; False on
        timeout. The sandbox must also have posted every status it planned (a ``read``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        wamids = _accepted(sandbox)
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
        )
        connection = await self._connect()
        try:
            with Progress(*columns, console=console) as progress:
                bar = progress.add_task("statuses arrived", total=len(wamids), counts="")
                while True:
                    rows = await connection.fetch(_OF_WAMIDS, wamids, timeout=_TIMEOUT)
                    counts = {status: n for status, n in rows}
                    done = sum(counts.get(status, 0) for status in FINAL)
                    shown = ", ".join(f"{s} {counts.get(s, 0)}" for s in FINAL)
                    progress.update(bar, completed=done, counts=shown)
                    if done >= len(wamids) and not sandbox.webhooks.pending:
                        return True
                    if loop.time() >= deadline:
                        return False
                    await asyncio.sleep(_POLL_SECONDS)
        except _ERRORS as exc:
            raise LedgerUnavailable(f"the demo's ledger failed: {exc}") from exc
        finally:
            await connection.close(timeout=_TIMEOUT)

    async def collect(self, sandbox: RunningSandbox, *, timed_out: bool) -> StatusFindings:
        """What the ledger holds now (call it once the daemon has stopped)."""
        wamids = _accepted(sandbox)
        connection = await self._connect()
        try:
            by_status = await connection.fetch(_OF_WAMIDS, wamids, timeout=_TIMEOUT)
            by_message = await connection.fetch(_BY_MESSAGE, timeout=_TIMEOUT)
            # `wa-consumer failures list` as a newcomer would type it: no filter, 50 rows.
            failures = await failure_page(connection, Filter())
        except _ERRORS as exc:
            raise LedgerUnavailable(f"the demo's ledger failed: {exc}") from exc
        finally:
            await connection.close(timeout=_TIMEOUT)
        return StatusFindings(
            database=self._scratch.name,
            url=self._scratch.shown_url(),
            kept=self._keep,
            accepted=len(wamids),
            by_status={status: n for status, n in by_status},
            by_message={r["internal_id"]: (r["status"], r["error_code"]) for r in by_message},
            failures=failures,
            timed_out=timed_out,
        )
