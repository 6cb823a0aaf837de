"""Operator tools for the dead-letter queue (SPEC §8): stats, list, show, replay, purge, edit.

With the ledger on, stats, list and show read its mirror of the DLQ (``mirror``, the table
``wa_dead`` the daemon writes at each death) and never touch the queue. Otherwise, and for
replay and purge, a command is one pass over the queue (``sweep.DeadLetterPass``): the
messages it counted at the start are received once, in order, with a bounded prefetch; each
is kept (a copy to the tail of the queue), moved (replay) or dropped (purge), and acked only
after its copy is confirmed. The queue comes out in the order it went in, and memory does not
grow with its length. The module docstring of ``sweep`` gives the reasoning.

    record    one dead message as operators see it; the failure fingerprint
    filters   which messages a command applies to
    sweep     the pass itself: order, confirms, bounded memory
    inspect   stats, list, show (keep every message)
    replay    replay and purge
    canary    a group replay's canary: pick it, its outcomes (the console and the CLI)
    edit      edit a dead message and send it again (the console and the CLI)
    ledger    what the commands ask of the ledger (sent? record a resolution)
    mirror    stats, list, show from the ledger's mirror of the DLQ
    render    tables for people
"""

from .filters import Filter
from .inspect import Page, Stats, list_page, show, stats
from .ledger import DlqLedger, NoLedger, open_ledger
from .record import DeadRecord, describe, fingerprint, normalise
from .replay import PurgeSummary, ReplaySummary, purge, replay
from .sweep import DeadLetterPass, DlqError, PassOptions, PassReport

__all__ = [
    "DeadLetterPass",
    "DeadRecord",
    "DlqError",
    "DlqLedger",
    "Filter",
    "NoLedger",
    "Page",
    "PassOptions",
    "PassReport",
    "PurgeSummary",
    "ReplaySummary",
    "Stats",
    "describe",
    "fingerprint",
    "list_page",
    "normalise",
    "open_ledger",
    "purge",
    "replay",
    "show",
    "stats",
]
