"""The delivery ledger (SPEC §9): every attempt recorded, no internalId sent twice."""

from .migrate import migrate
from .postgres import PostgresLedger

__all__ = ["PostgresLedger", "migrate"]
