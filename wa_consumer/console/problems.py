"""What can go wrong with a console request, each with its HTTP status.

Raised by the reads and the actions; the API answers ``{"error": ...}`` with the status, a
page shows the line above its form. Errors from the broker or the ledger (``DlqError``,
``LedgerUnavailable``, a ``PublishError``) are turned into these where they are caught.
"""

from __future__ import annotations


class ConsoleError(Exception):
    """A request the console cannot do; ``status`` is its HTTP status."""

    status = 500


class Invalid(ConsoleError):
    """A value in the request is wrong (a filter, a reason left out, an edited body)."""

    status = 422


class NotFound(ConsoleError):
    """No such group, message or job."""

    status = 404


class Busy(ConsoleError):
    """Another pass over the DLQ is under way (the queue takes one at a time), or a job is
    not in the phase the request needs."""

    status = 409


class Unavailable(ConsoleError):
    """RabbitMQ or PostgreSQL did not do what was asked; trying again later may work."""

    status = 503
