"""The parts of ``scripts/bench.py``: the daemon's throughput against this machine's floor.

common
    errors, deadlines and small helpers every part uses.
broker
    the run's RabbitMQ vhost, pre-filling a queue, reading its depth.
database
    the run's scratch PostgreSQL database (the ledger of the ledger-on scenarios).
procs
    the sandbox and daemon processes, their resident memory and CPU time.
scenarios
    what each scenario is and the settings its daemon runs with.
measure
    one measurement of one scenario: the floor or a daemon.
workers
    the ``workers-N`` scenarios' own steps: every worker consuming, ``/readyz``, sends per
    worker.
bodies
    Meta's status webhooks for the delivery-status scenarios, and the sends they refer to.
webhooks, loadgen
    the ``webhooks`` scenario: the receiver against its publish floor; Meta's side of it.
statuses
    the ``statuses`` scenario: the daemon applying statuses to a seeded ledger.
report, report_delivery
    medians, ratios against their targets, the table and the JSON; the delivery-status block.
cli
    options, the rounds, and clean-up on every way out.
"""
