"""A worker's side of ``run --workers``: stop when the supervisor is gone.

The supervisor starts each worker with a pipe on its stdin (a socket pair under uvloop) whose
other end only it holds. When the supervisor exits, however it exits (kill -9 included), the
kernel closes that end; the worker reads the end of the stream and stops as on SIGTERM,
rather than consume on as an orphan that nobody restarts or stops.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable

from ..logs import get_logger

log = get_logger("supervisor")


def follow_supervisor(stop: Callable[[], None]) -> None:
    """Call ``stop`` (as SIGTERM would) once the supervisor is gone.

    Only when stdin is a pipe or a socket (uvloop starts children with a socket pair) as the
    supervisor gives its workers: one started by hand with a terminal or ``/dev/null`` on
    stdin is left alone.
    """
    mode = os.fstat(0).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            if os.read(0, 4096):
                return  # nothing is ever written; ignore it
        except BlockingIOError:
            return
        except OSError:  # a reset socket: its other end is gone as well
            pass
        loop.remove_reader(0)
        log.warning("supervisor_gone", action="stopping")
        stop()

    loop.add_reader(0, readable)
