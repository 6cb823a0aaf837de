"""Tenant controls: ``tenant pause | resume | drain | status TENANT [--number N]``.

The pause lives in the ledger's database, so these need ``WA_DATABASE_URL``; the broker is
used, when it answers, to declare the held queue at once and to count what each holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    EXIT_CODES,
    Actor,
    Exit,
    Json,
    actor_name,
    connect_broker,
    database_url,
    fail,
    on_ledger,
    settings_or_exit,
)

if TYPE_CHECKING:
    import asyncpg
    from aio_pika.abc import AbstractConnection

    from ..controls import TenantControls, TenantState

tenant_app = typer.Typer(
    name="tenant",
    help="Pause, resume or drain a tenant or one of its numbers; show what is paused. "
    "A paused tenant's messages are held (not sent, not dead) until it is resumed; every "
    "daemon sharing the ledger follows within WA_CONTROLS_POLL_SECONDS.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
)

Tenant = Annotated[str, typer.Argument(metavar="TENANT", help="metadata.tenantId")]
Number = Annotated[
    str | None,
    typer.Option("--number", metavar="N", help="Only this phone number id of the tenant."),
]
Reason = Annotated[
    str | None, typer.Option("--reason", metavar="TEXT", help="Why: kept in the audit trail.")
]


def _run(work: Any) -> Any:
    """``work(controls)`` on a ledger connection, with the broker when it answers."""
    from ..controls import TenantControls

    settings = settings_or_exit()

    async def main(connection: asyncpg.Connection[Any]) -> Any:
        broker: AbstractConnection | None
        try:
            broker = await connect_broker(settings.amqp_url)
        except Exception as exc:  # noqa: BLE001 - said so; the daemons declare the queue
            typer.echo(f"note: {exc}; the held queue is declared by the daemons", err=True)
            broker = None
        try:
            return await work(TenantControls(settings, connection, broker))
        finally:
            if broker is not None:
                await broker.close()

    try:
        return on_ledger(database_url(), main)
    except ValueError as exc:
        raise fail(str(exc), Exit.USAGE) from None


def _show(states: list[TenantState], as_json: bool) -> None:
    if as_json:
        from ..dlq.render import print_json

        print_json([s.to_json() for s in states])
        return
    for s in states:
        held = "" if s.held is None else f", {s.held} held"
        by = " (breaker)" if s.breaker else ""
        line = f"{s.target}: {s.mode}{by}{held}"
        if s.mode != "active":
            since = s.since.isoformat(timespec="seconds") if s.since else "-"
            line += f" since {since} by {s.actor}: {s.reason or '-'}"
        if s.breaker and s.probe_at is not None:
            line += f"; next probe {s.probe_at.isoformat(timespec='seconds')}"
        typer.echo(line)


def _control(action: str, doc: str) -> None:
    """Mount ``tenant <action>``: one change of a tenant's or number's state."""

    def command(
        tenant: Tenant,
        number: Number = None,
        reason: Reason = None,
        actor: Actor = None,
        as_json: Json = False,
    ) -> None:
        async def work(controls: TenantControls) -> TenantState:
            do = getattr(controls, action)
            state: TenantState = await do(
                tenant, number, reason=reason or "", actor=actor_name(actor)
            )
            return state

        _show([_run(work)], as_json)

    command.__doc__ = doc
    tenant_app.command(action)(command)


_control("pause", "Hold the tenant's (or number's) messages from now on: not sent, not dead.")
_control("resume", "Send again: held messages go back in their order, at the number's rate.")
_control("drain", "Send what is held now, and hold what comes from now on.")


@tenant_app.command("status")
def status_command(
    tenant: Annotated[
        str | None, typer.Argument(metavar="[TENANT]", help="One tenant (default: every pause).")
    ] = None,
    as_json: Json = False,
) -> None:
    """What is paused or draining, why, by whom, and how many messages each holds."""

    async def work(controls: TenantControls) -> list[TenantState]:
        return await controls.states(tenant)

    states = _run(work)
    if not states and not as_json:
        typer.echo(f"{tenant}: active" if tenant else "nothing is paused")
        return
    _show(states, as_json)
