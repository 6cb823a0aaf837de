"""``wa-consumer run --workers N``: one supervisor, N daemon processes on the same queue.

One event loop uses about one core; when CPU per message bounds a daemon, more processes on
the same host take more messages. The supervisor starts them, starts again one that dies,
passes signals on and shows them as one endpoint::

    processes   start, restart with back-off, signals, the stop deadline
    restarts    the back-off and the restart budget (pure, unit-tested)
    endpoint    /metrics (every worker's series, labelled by worker), /readyz (all ready)
    worker      the worker's side: stop when the supervisor is gone

With ``--workers 1`` (the default) there is no supervisor: ``run`` is the daemon itself.
"""

from .endpoint import WorkerEndpoints, WorkerState, merged, parse
from .processes import (
    Supervisor,
    stop_deadline,
    worker_count,
    worker_limits,
)
from .restarts import RestartPolicy
from .worker import follow_supervisor

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "WorkerEndpoints",
    "WorkerState",
    "follow_supervisor",
    "merged",
    "parse",
    "stop_deadline",
    "worker_count",
    "worker_limits",
]
