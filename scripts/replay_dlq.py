#!/usr/bin/env python3
"""``wa-consumer dlq replay`` for cron and runbooks: the same command, options and output.

    .venv/bin/python scripts/replay_dlq.py --category account --rate 20
    .venv/bin/python scripts/replay_dlq.py --id 9f1c2e7a-... --dry-run
    .venv/bin/python scripts/replay_dlq.py --code 131016 --since 6h --limit 500 --json

Settings come from the environment (``WA_AMQP_URL``, ``WA_DATABASE_URL``, queue names) or a
``.env`` file, as for the daemon. With no filter it refuses unless ``--all``. Progress lines
go to stderr. Exit status: 0 done, 1 the pass failed (nothing unconfirmed was acked) or it
stopped after a --canary, 2 a bad option or setting, 4 the broker or the ledger did not
answer.
"""

from __future__ import annotations

import typer

from wa_consumer.cli.dlq_replay import replay_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(replay_command)

if __name__ == "__main__":
    app()
