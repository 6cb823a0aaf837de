"""The daemon, the webhook receiver and their tools: ``run``, ``webhook``, ``topology``,
``publish``, ``sandbox`` and ``demo``.

``daemon_app`` holds the top-level commands and ``topology_app`` its group; ``wa_consumer.cli``
mounts both on ``app``.
"""

from __future__ import annotations

import sys
import uuid
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from ..errors import InvalidMessage, SettingsError, WaConsumerError
from ..gctuning import tune_for_serving
from ..logs import configure_logging
from .common import (
    EXIT_CODES,
    Exit,
    connect_broker,
    exit_code,
    fail,
    run_async,
    run_or_exit,
    serve,
    settings_or_exit,
)

daemon_app = typer.Typer()
topology_app = typer.Typer(help="The broker topology.", epilog=EXIT_CODES, no_args_is_help=True)


@daemon_app.command()
def run(
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            metavar="N|auto",
            help="Daemon processes on the same queue under one supervisor (auto: one per "
            "core); 1 runs the daemon in this process.",
        ),
    ] = "1",
) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT (with --workers N, N daemons
    under one supervisor that restarts them, passes signals on and serves one endpoint)."""
    settings = settings_or_exit()
    count = _worker_count(workers)
    shared = count > 1 or settings.worker_index is not None  # one stdout, several processes
    configure_logging(
        settings.log_level, settings.log_format, worker=settings.worker_index, shared_stdout=shared
    )
    if count > 1:
        from ..supervisor import Supervisor

        serve(Supervisor(settings, count).run())

    from ..consumer import Daemon

    tune_for_serving()

    async def main() -> int:
        daemon = Daemon(settings)
        daemon.install_signal_handlers()
        if settings.worker_index is not None:  # started by `run --workers N`
            from ..supervisor import follow_supervisor

            follow_supervisor(daemon.request_stop)
        return await daemon.run()

    serve(main())


def _worker_count(value: str) -> int:
    from ..supervisor import worker_count

    try:
        return worker_count(value)
    except ValueError:
        raise fail(
            f"--workers: expected a number of 1 or more, or auto (got {value!r})", Exit.USAGE
        ) from None


@daemon_app.command()
def webhook() -> None:
    """Receive Meta's webhooks and queue them for the status consumer."""
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)
    from ..webhooks.receiver import WebhookReceiver

    try:
        receiver = WebhookReceiver(settings)  # refuses to run without an app secret
    except SettingsError as exc:
        raise fail(f"bad setting {exc}", Exit.USAGE) from None
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
    from ..topology import Topology, declare, prepare

    passive = settings.declare_topology == "passive"

    async def main() -> None:
        connection = await connect_broker(settings.amqp_url)
        topology = Topology.from_settings(settings)
        try:
            if check:
                await declare(connection, topology, check=True)
            else:
                await prepare(connection, topology, passive=passive)
        finally:
            await connection.close()

    run_or_exit(main())
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
    from ..definitions import definitions, render, vhost_of
    from ..topology import Topology

    defs = definitions(Topology.from_settings(settings), vhost or vhost_of(settings.amqp_url))
    text = render(defs)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@daemon_app.command()
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
        raise fail("give a JSON file (or - for stdin), or --tenant, --to and --text", Exit.USAGE)

    from ..publisher import Publisher

    async def main() -> str:
        connection = await connect_broker(settings.amqp_url)
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
        raise fail(f"invalid message: {exc}", Exit.USAGE) from None
    except WaConsumerError as exc:
        raise fail(str(exc), exit_code(exc)) from None
    typer.echo(f"published {sent}")


@daemon_app.command()
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
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Serve HTTPS with a CA and a certificate made at start; the banner prints "
            "the CA file for WA_GRAPH_CA_FILE.",
        ),
    ] = False,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="With --tls: write the CA, certificate and key here (kept); default a "
            "temporary directory removed on exit.",
        ),
    ] = None,
    plain_port: Annotated[
        int,
        typer.Option(
            help="With --tls: the same sandbox on plain HTTP here, for the tenant service and "
            "the admin endpoints (0: any free port, printed).",
        ),
    ] = 0,
    http2: Annotated[
        bool,
        typer.Option(
            help="With --tls: HTTP/2 to clients that offer h2 by ALPN (--no-http2: HTTP/1.1 only)."
        ),
    ] = True,
    http2_max_streams: Annotated[
        int,
        typer.Option(min=1, help="With --tls: streams at once per HTTP/2 connection."),
    ] = 100,
) -> None:
    """A local stand-in for the Cloud API and the tenant service.

    With --webhook-url it also sends the status webhooks of what it accepted;
    the rest of their behaviour is the `webhooks` section of the --config file.
    With --tls it serves HTTPS (HTTP/2 or HTTP/1.1, by ALPN) like Meta: point
    WA_GRAPH_CA_FILE at the CA file the banner prints.
    """
    from pydantic import ValidationError

    # Imported here: aiohttp's import would slow every other command down.
    from ..sandbox import DEFAULT_PORT, load_config, run_sandbox

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
        raise fail(f"sandbox: bad configuration: {exc}", Exit.USAGE) from None
    if tls_dir is not None and not tls:
        raise fail("sandbox: --tls-dir needs --tls", Exit.USAGE)
    run_sandbox(
        host,
        DEFAULT_PORT if port is None else port,
        settings,
        tls=tls,
        tls_dir=tls_dir,
        plain_port=plain_port,
        http2=http2,
        http2_max_streams=http2_max_streams,
    )


@daemon_app.command()
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
    from ..demo import run_demo

    raise typer.Exit(run_demo(settings, timeout=timeout, keep_ledger=keep_ledger, run=run_async))
