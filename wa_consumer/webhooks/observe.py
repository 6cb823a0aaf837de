"""What the status consumer shows: metrics of statuses, failures after acceptance and
delivery latency, and the alerts of account-level failures (like a send's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from ..alerts import ACCOUNT_CATEGORIES, Alerter
from ..ledger.statuses import Applied, Tied
from ..logs import get_logger

log = get_logger("statuses")

#: Accepted -> delivered, seconds: from a blink to a phone that was off for a day.
DELIVERY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86_400)


class StatusMetrics:
    """A ``StatusObserver`` on the daemon's registry; no tenant labels (cardinality)."""

    def __init__(self, registry: CollectorRegistry, alerts: Alerter | None = None) -> None:
        self._alerts = alerts
        self.statuses = Counter(
            "wa_statuses",
            "Status transitions applied to the ledger, by new status.",
            ("status",),
            registry=registry,
        )
        self.failed = Counter(
            "wa_failed_after_accept",
            "Messages Meta accepted and then reported failed, by category and Meta code.",
            ("category", "code"),
            registry=registry,
        )
        self.reconciled = Counter(
            "wa_status_reconciled",
            "Messages recorded as not sent (an ambiguous attempt) that a status showed sent.",
            registry=registry,
        )
        self.sent_twice = Counter(
            "wa_sent_twice",
            "Messages a status showed accepted under a second wamid (an ambiguous attempt "
            "and its retry both went out).",
            registry=registry,
        )
        self.ignored = Counter(
            "wa_webhook_values_ignored",
            "Webhook values with neither statuses nor customers' messages (other fields).",
            registry=registry,
        )
        self.pending = Counter(
            "wa_statuses_untied",
            "Statuses whose wamid no recorded send has yet (kept until it has).",
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "wa_delivery_latency_seconds",
            "From the Cloud API's acceptance to the delivered status.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.inbound_messages = Counter(
            "wa_inbound_messages",
            "Customers' messages in webhooks: forwarded to the application, or dropped.",
            ("outcome",),
            registry=registry,
        )
        self.unreadable_webhooks = Counter(
            "wa_webhooks_unreadable",
            "Webhook bodies sent to the failed queue (not a webhook, or refused by the ledger).",
            registry=registry,
        )
        for status in ("sent", "delivered", "read", "failed"):
            self.statuses.labels(status)
        for outcome in ("forwarded", "dropped"):
            self.inbound_messages.labels(outcome)

    def applied(self, row: Applied) -> None:
        if row.tenant_id is None and row.was is None:
            self.pending.inc()
        # A delivered time first seen, also after a read (statuses come out of order).
        if row.delivered_at and row.was_delivered_at is None and row.accepted_at is not None:
            seconds = (row.delivered_at - row.accepted_at).total_seconds()
            self.delivery_latency.observe(max(0.0, seconds))
        if not row.changed:
            return
        self.statuses.labels(row.status).inc()
        if row.status == "failed":
            self._failed(row)

    def tied(self, tie: Tied) -> None:
        where = {"tenant_id": tie.tenant_id, "internal_id": tie.internal_id, "wamid": tie.wamid}
        if tie.reconciled:
            self.reconciled.inc()
            log.info("status_reconciled", **where, was=tie.was)
        elif tie.sent_twice:
            self.sent_twice.inc()
            log.warning("sent_twice", **where, reason="an ambiguous attempt was accepted too")

    def ignored_values(self, count: int) -> None:
        self.ignored.inc(count)

    def _failed(self, row: Applied) -> None:
        category = row.error_category or "permanent"
        code = row.error_code or "unknown"
        self.failed.labels(category, code).inc()
        log.warning(
            "failed_after_accept",
            tenant_id=row.tenant_id,
            internal_id=row.internal_id,
            wamid=row.wamid,
            category=category,
            code=code,
            error=row.error_message,
        )
        if self._alerts is not None and category in ACCOUNT_CATEGORIES:
            self._alerts.fire(
                category,
                tenant=row.tenant_id,
                category=category,
                code=code,
                cause=row.error_message or f"failed after acceptance with code {code}",
            )

    def inbound(self, count: int, *, forwarded: bool) -> None:
        self.inbound_messages.labels("forwarded" if forwarded else "dropped").inc(count)
        if not forwarded:
            log.info("inbound_dropped", count=count, reason="WA_INBOUND_MESSAGES is off")

    def unreadable(self) -> None:
        self.unreadable_webhooks.inc()
