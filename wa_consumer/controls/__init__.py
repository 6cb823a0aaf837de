"""Tenant and number controls (SPEC §14): pause, resume, drain, and a breaker per tenant.

store      the pauses and held queues in PostgreSQL (what every replica reads)
service    TenantControls: what the CLI and the console do
gate       TenantGate: the daemon's side, the ``Gate`` seam the pipeline calls
breaker    consecutive account-level failures, counted per tenant or number
release    moving held messages back to the main queue
observe    their metrics
"""

from .service import TenantControls, TenantState
from .store import Pause, held_queue, target_of

__all__ = ["Pause", "TenantControls", "TenantState", "held_queue", "target_of"]
