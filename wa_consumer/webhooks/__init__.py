"""Meta's webhooks (SPEC §13): received, signed-checked and queued (``receiver``); read back,
statuses applied to the ledger and customers' messages forwarded (``consumer``)."""
