"""``python -m wa_consumer.sandbox``: the sandbox from the command line.

Options override the JSON file given with ``--config`` (a ``SandboxConfig`` as JSON; any
subset of its keys).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from wa_consumer.sandbox.app import DEFAULT_PORT, run_sandbox
from wa_consumer.sandbox.config import load_config
from wa_consumer.sandbox.http2 import DEFAULT_MAX_STREAMS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wa_consumer.sandbox",
        description="A local stand-in for the WhatsApp Cloud API and the tenant service.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--config", metavar="FILE", help="SandboxConfig as JSON")
    parser.add_argument("--latency-ms", type=float, help="delay before every answer")
    parser.add_argument("--jitter-ms", type=float, help="plus a uniform 0..jitter")
    parser.add_argument("--failure-rate", type=float, help="fraction failed at random")
    parser.add_argument("--failure-code", type=int, help="Meta code of random failures")
    parser.add_argument("--number-rate", type=float, help="requests/s per number (0: off)")
    parser.add_argument("--service-token", help="required by the tenant service if set")
    parser.add_argument("--seed", type=int, help="seed of latency jitter and failures")
    parser.add_argument(
        "--no-request-log", action="store_true", help="keep no request log (benchmarks)"
    )
    parser.add_argument("--no-rules", action="store_true", help="no default recipient rules")
    parser.add_argument("--webhook-url", help="POST signed status webhooks here")
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get("WA_WEBHOOK_APP_SECRET"),
        help="app secret to sign them with (default: $WA_WEBHOOK_APP_SECRET)",
    )
    parser.add_argument("--tls", action="store_true", help="serve HTTPS, CA made at start")
    parser.add_argument("--tls-dir", metavar="DIR", help="with --tls: keep the files here")
    parser.add_argument(
        "--plain-port", type=int, default=0, help="with --tls: plain HTTP too (0: any free)"
    )
    parser.add_argument(
        "--no-http2", action="store_true", help="with --tls: HTTP/1.1 only (no h2 by ALPN)"
    )
    parser.add_argument(
        "--http2-max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help=f"with --tls: streams at once per HTTP/2 connection ({DEFAULT_MAX_STREAMS})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, build the config, serve until interrupted."""
    args = _parser().parse_args(argv)
    try:
        config = load_config(
            args.config,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            failure_rate=args.failure_rate,
            failure_code=args.failure_code,
            number_rate=args.number_rate,
            service_token=args.service_token,
            seed=args.seed,
            record_requests=False if args.no_request_log else None,
            rules=[] if args.no_rules else None,
            webhook_url=args.webhook_url,
            webhook_app_secret=args.webhook_secret,
        )
    except (OSError, ValidationError, ValueError) as exc:
        print(f"sandbox: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.tls_dir is not None and not args.tls:
        print("sandbox: --tls-dir needs --tls", file=sys.stderr)
        return 2
    tls_dir = None if args.tls_dir is None else Path(args.tls_dir)
    if args.http2_max_streams < 1:
        print("sandbox: --http2-max-streams must be at least 1", file=sys.stderr)
        return 2
    run_sandbox(
        args.host,
        args.port,
        config,
        tls=args.tls,
        tls_dir=tls_dir,
        plain_port=args.plain_port,
        http2=not args.no_http2,
        http2_max_streams=args.http2_max_streams,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
