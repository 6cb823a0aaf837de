"""Throughput of the daemon against the floor of this machine, all measured in one run.

Every round measures, in this order, over N messages pre-filled for each measurement:

floor      a bare aio-pika consume+ack loop (same prefetch, same uvloop) in this process;
zero-off   ``python -m wa_consumer run`` against the sandbox at 0 ms, no ledger;
zero-on    the same with the ledger (a scratch PostgreSQL database for the run);
latency    the sandbox at 100 ms, ledger on, ``WA_PREFETCH=500``;
plain, plain-zero, plain-tls
           the aio-pika + aiohttp consumer a user would write (at 100 ms, at 0 ms, and at
           100 ms over HTTPS);
latency-tls
           ``latency`` over HTTPS (issue 17): the sandbox's TLS port, its CA (made at its
           start) trusted through ``WA_GRAPH_CA_FILE``; HTTP/1.1;
workers-1, workers-2
           ``run --workers N`` as ``zero-on`` (N = 1: the daemon itself; N = 2: a supervisor
           and two daemon processes on the queue), timed once every worker consumes, with
           CPU µs per message summed over the supervisor and the workers and the peak RSS of
           each worker (``workers-1-latency``, ``workers-2-latency``: the same at 100 ms,
           only when named).

It reports the median rate of each, the ratios the issues set targets for (0 ms ledger-on
over the floor, ledger-on over ledger-off, the 100 ms rate over min(0 ms rate,
prefetch/latency), the TLS daemon over the TLS plain consumer) and the daemon's peak resident
memory (per worker with ``run --workers``), each with PASS or MISS; 2 workers over 1 (no
target: on 2 cores the workers share the machine with RabbitMQ, PostgreSQL and the sandbox);
and per sender its CPU µs per message and the connections it opened (the sandbox counts
them; over TLS each is a handshake); the figures also go to ``--json`` (default
``bench-results/latest.json``). Everything runs in a RabbitMQ vhost and a PostgreSQL database
of its own, both removed at the end, also on failure or Ctrl-C. Every wait has a deadline
(``--deadline``).

Delivery statuses (issue 14), measured only when named in ``--scenarios``:

webhooks   webhooks/s ``wa-consumer webhook`` accepts (signed POSTs from a load generator in a
           process of its own, 200 in flight), over the floor of the same round: the same
           bodies published with confirms from one aio-pika channel; CPU µs per webhook;
statuses   statuses/s the daemon's status consumer applies to the ledger from a pre-filled
           webhook queue; CPU µs per status of the daemon and of PostgreSQL.

    .venv/bin/python scripts/bench.py --messages 20000 --repeat 3
    .venv/bin/python scripts/bench.py --scenarios floor,zero-on --log-level WARNING
    .venv/bin/python scripts/bench.py --scenarios floor,zero-on,workers-1,workers-2 --repeat 3
    .venv/bin/python scripts/bench.py --scenarios webhooks,statuses --messages 10000 --repeat 3

The parts live in ``scripts/benchlib/``.
"""

from __future__ import annotations

import sys

from benchlib.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n\n")[0] if __doc__ else None))
