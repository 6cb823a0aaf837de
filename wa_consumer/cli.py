"""``wa-consumer``: the daemon and its tools (SPEC §8)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Coroutine
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer

from .cli_deliveries import failures_app, report_app
from .cli_dlq import dlq_app
from .cli_ledger import db_app, status_command
from .errors import InvalidMessage, SettingsError, TopologyMismatch, WaConsumerError
from .gctuning import tune_for_serving
from .logs import configure_logging
from .settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    help="Deliver outbound WhatsApp messages from RabbitMQ through Meta's Cloud API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
topology_app = typer.Typer(help="The broker topology (SPEC §2).", no_args_is_help=True)
app.add_typer(topology_app, name="topology")
app.add_typer(db_app, name="db")
app.add_typer(dlq_app, name="dlq")
app.add_typer(failures_app, name="failures")
app.add_typer(report_app, name="report")
app.command("status")(status_command)

DISTRIBUTION = "wa-consumer"  # [project] name in pyproject.toml


def _print_version(wanted: bool) -> None:
    if not wanted:
        return
    try:
        installed = version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        installed = "unknown"
    typer.echo(f"wa-consumer {installed}")
    raise typer.Exit(0)


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    pass


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"wa-consumer: {message}", err=True)
    return typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise fail(f"bad setting {exc}", 2) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (faster I/O on the hot path)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@app.command()
def run() -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    from .consumer import Daemon

    tune_for_serving()

    async def main() -> int:
        daemon = Daemon(settings)
        daemon.install_signal_handlers()
        return await daemon.run()

    serve(main())


def serve(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a server command to its end: its exit code, or one line on what stopped it."""
    try:
        code = run_async(main)
    except TopologyMismatch as exc:
        raise fail(str(exc), 3) from None
    except WaConsumerError as exc:
        raise fail(str(exc), 1) from None
    raise typer.Exit(code)


@app.command()
def webhook() -> None:
    """Receive Meta's webhooks and queue them for the status consumer (SPEC §13)."""
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    from .webhooks.receiver import WebhookReceiver

    try:
        receiver = WebhookReceiver(settings)  # refuses to run without an app secret
    except SettingsError as exc:
        raise fail(f"bad setting {exc}", 2) from None
    tune_for_serving()

    async def main() -> int:
        receiver.install_signal_handlers()
        return await receiver.run()

    serve(main())


@topology_app.command("declare")
def topology_declare(
    check: Annotated[bool, typer.Option("--check", help="Verify only; change nothing.")] = False,
) -> None:
    """Declare the exchanges and queues (idempotent), or check them.

    With WA_DECLARE_TOPOLOGY=passive it only checks, as --check does.
    """
    settings = settings_or_exit()
    from .topology import Topology, connect, declare, prepare

    passive = settings.declare_topology == "passive"

    async def main() -> None:
        connection = await connect(settings.amqp_url)
        topology = Topology.from_settings(settings)
        try:
            if check:
                await declare(connection, topology, check=True)
            else:
                await prepare(connection, topology, passive=passive)
        finally:
            await connection.close()

    try:
        run_async(main())
    except WaConsumerError as exc:
        raise fail(str(exc), 3 if isinstance(exc, TopologyMismatch) else 1) from None
    if check or passive:
        typer.echo("topology is as configured" + ("" if check else " (passive: none declared)"))
    else:
        typer.echo("topology declared")


class ExportFormat(StrEnum):
    definitions = "definitions"


@topology_app.command("export")
def topology_export(
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Only RabbitMQ definitions JSON, for now.")
    ] = ExportFormat.definitions,
    output: Annotated[
        Path | None, typer.Option("--output", metavar="FILE", help="Write here, not stdout.")
    ] = None,
    vhost: Annotated[
        str | None, typer.Option(help="The vhost named in them (default: WA_AMQP_URL's).")
    ] = None,
) -> None:
    """Write the topology as definitions for `rabbitmqctl import_definitions` or
    the management plugin's load_definitions (brokers where the daemon may not declare)."""
    settings = settings_or_exit()
    from .definitions import definitions, render, vhost_of
    from .topology import Topology

    defs = definitions(Topology.from_settings(settings), vhost or vhost_of(settings.amqp_url))
    text = render(defs)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def publish(
    file: Annotated[
        str | None, typer.Argument(help="A JSON file with the whole message, or - for stdin.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="metadata.tenantId")] = None,
    to: Annotated[str | None, typer.Option(help="Recipient number, with country code.")] = None,
    text: Annotated[str | None, typer.Option(help="Send a text message with this body.")] = None,
    internal_id: Annotated[str | None, typer.Option(help="Idempotency key (default: new)")] = None,
    phone_number_id: Annotated[str | None, typer.Option(help="Send from this number.")] = None,
) -> None:
    """Publish one message, validated first, with a publisher confirm."""
    settings = settings_or_exit()
    if file is not None:
        body = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    elif tenant and to and text is not None:
        metadata: dict[str, Any] = {
            "tenantId": tenant,
            "internalId": internal_id or str(uuid.uuid4()),
        }
        if phone_number_id:
            metadata["phoneNumberId"] = phone_number_id
        body = orjson.dumps(
            {
                "metadata": metadata,
                "wabaPayload": {
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": to,
                    "type": "text",
                    "text": {"body": text},
                },
            }
        )
    else:
        raise fail("give a JSON file (or - for stdin), or --tenant, --to and --text", 2)

    from .publisher import Publisher
    from .topology import connect

    async def main() -> str:
        connection = await connect(settings.amqp_url)
        try:
            publisher = Publisher(
                connection,
                exchange=settings.exchange,
                routing_key_prefix=settings.routing_key_prefix,
            )
            return (await publisher.publish(body)).internal_id
        finally:
            await connection.close()

    try:
        sent = run_async(main())
    except InvalidMessage as exc:
        raise fail(f"invalid message: {exc}", 2) from None
    except WaConsumerError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"published {sent}")


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on (default 8089, the sandbox's own; 0: any free)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(metavar="FILE", help="SandboxConfig as JSON.")
    ] = None,
    latency_ms: Annotated[float | None, typer.Option(help="Delay before every answer.")] = None,
    jitter_ms: Annotated[float | None, typer.Option(help="Plus a uniform 0..jitter.")] = None,
    failure_rate: Annotated[
        float | None, typer.Option(help="Fraction of requests failed at random.")
    ] = None,
    failure_code: Annotated[
        int | None, typer.Option(help="Meta code of the random failures.")
    ] = None,
    number_rate: Annotated[
        float | None, typer.Option(help="Requests/s per phone number (0: no limit).")
    ] = None,
    service_token: Annotated[
        str | None, typer.Option(help="Required by the tenant service when set.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of latency jitter and failures.")] = None,
    no_request_log: Annotated[
        bool, typer.Option("--no-request-log", help="Keep no request log (benchmarks).")
    ] = False,
    no_rules: Annotated[
        bool, typer.Option("--no-rules", help="No default recipient rules.")
    ] = False,
    webhook_url: Annotated[
        str | None, typer.Option(help="POST signed status webhooks here (default: none).")
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            envvar="WA_WEBHOOK_APP_SECRET",
            show_envvar=True,
            help="App secret the webhooks are signed with (the receiver's).",
        ),
    ] = None,
    webhook_delivered_ms: Annotated[
        float | None, typer.Option(help="Delay from acceptance to `delivered`.")
    ] = None,
    webhook_read_share: Annotated[
        float | None, typer.Option(help="Fraction that also get `read`.")
    ] = None,
    webhook_batch: Annotated[
        int | None, typer.Option(help="Statuses per webhook POST (default 1).")
    ] = None,
) -> None:
    """A local stand-in for the Cloud API and the tenant service (SPEC §10).

    With --webhook-url it also sends the status webhooks of what it accepted (SPEC §13);
    the rest of their behaviour is the `webhooks` section of the --config file.
    """
    from pydantic import ValidationError

    # Imported here: aiohttp's import would slow every other command down.
    from .sandbox import DEFAULT_PORT, load_config, run_sandbox

    try:
        settings = load_config(
            config,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            failure_rate=failure_rate,
            failure_code=failure_code,
            number_rate=number_rate,
            service_token=service_token,
            seed=seed,
            record_requests=False if no_request_log else None,
            rules=[] if no_rules else None,
            webhook_url=webhook_url,
            webhook_app_secret=webhook_secret,
            webhook_delivered_after_ms=webhook_delivered_ms,
            webhook_read_share=webhook_read_share,
            webhook_batch=webhook_batch,
        )
    except (OSError, ValidationError, ValueError) as exc:
        raise fail(f"sandbox: bad configuration: {exc}", 2) from None
    run_sandbox(host, DEFAULT_PORT if port is None else port, settings)


@app.command()
def demo(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for every message to reach its end.")
    ] = 40.0,
    keep_ledger: Annotated[
        bool,
        typer.Option(help="Keep the demo's scratch ledger database, for `failures list` etc."),
    ] = False,
) -> None:
    """The newcomer's tour: sandbox, daemon and sample traffic on a vhost of its own."""
    settings = settings_or_exit()
    from .demo import run_demo

    raise typer.Exit(run_demo(settings, timeout=timeout, keep_ledger=keep_ledger, run=run_async))


def main() -> None:
    app()
