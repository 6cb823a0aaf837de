"""Metrics: bounded labels, registries that never collide, and how a head message's age is read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from wa_consumer.controls import Pause
from wa_consumer.controls.observe import ControlMetrics
from wa_consumer.metrics import MAX_TENANTS, Fanout, Metrics, NullObserver
from wa_consumer.outcomes import Dead, Delivered, Duplicate, Failure, Retry
from wa_consumer.probe import entered_at
from wa_consumer.webhooks.observe import StatusMetrics
from wa_consumer.webhooks.receiver_metrics import ReceiverMetrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_two_daemons_in_one_process_keep_their_own_counts() -> None:
    one, two = Metrics(), Metrics()
    one.outcome(Delivered("w"), "sent", "text", "acme")
    assert sample(one, "wa_messages_total", outcome="sent", type="text") == 1
    assert sample(two, "wa_messages_total", outcome="sent", type="text") is None


def test_outcomes_count_by_outcome_type_delay_and_category() -> None:
    m = Metrics()
    obs = Fanout(m, NullObserver())
    obs.outcome(Retry("q", 30, Failure("transient", "131000", "x")), "retry", "text", "acme")
    obs.outcome(Retry("q", 120, Failure("throttled", "t", "x"), counts=False), "wait", None, None)
    obs.outcome(Dead(Failure("invalid", "invalid", "x")), "dead", None, None)
    obs.outcome(Duplicate(), "duplicate", "image", "acme")
    obs.latency(0.2)
    obs.ambiguous()
    assert sample(m, "wa_retries_total", delay="30s") == 1
    assert sample(m, "wa_retries_total", delay="2m") is None  # a wait is not a retry
    assert sample(m, "wa_messages_total", outcome="wait", type="unknown") == 1
    assert sample(m, "wa_dead_total", category="invalid") == 1
    assert sample(m, "wa_dead_total", category="account") == 0  # exists from the start
    assert sample(m, "wa_duplicates_total") == 1
    assert sample(m, "wa_graph_latency_seconds_count") == 1
    assert sample(m, "wa_ambiguous_sends_total") == 1


def test_no_tenant_label_unless_asked_and_then_a_bounded_one() -> None:
    off = Metrics()
    off.outcome(Delivered("w"), "sent", "text", "acme")
    assert sample(off, "wa_messages_total", outcome="sent", type="text", tenant="acme") is None

    on = Metrics(tenant_labels=True)
    for i in range(MAX_TENANTS + 50):
        on.outcome(Dead(Failure("tenant_unknown", "x", "x")), "dead", "text", f"t{i}")
    assert sample(on, "wa_messages_total", outcome="dead", type="text", tenant="t0") == 1
    assert sample(on, "wa_messages_total", outcome="dead", type="text", tenant="other") == 50
    assert sample(on, "wa_dead_total", category="tenant_unknown", tenant="other") == 50


def test_credential_events_count_by_kind() -> None:
    m = Metrics()
    for event in ("miss", "fetch", "hit", "hit", "fetch_error", "unheard-of"):
        m.credential(event)
    assert sample(m, "wa_credential_cache_hits_total") == 2
    assert sample(m, "wa_credential_cache_misses_total") == 1
    assert sample(m, "wa_credential_fetches_total") == 1
    assert sample(m, "wa_credential_fetch_errors_total") == 1


def test_without_a_ledger_there_is_no_ledger_gauge() -> None:
    m = Metrics()
    m.watch(in_flight=lambda: 3, broker_connected=lambda: 1, ready=lambda: 0, ledger_up=None)
    assert sample(m, "wa_in_flight_messages") == 3
    assert sample(m, "wa_ready") == 0
    assert sample(m, "wa_ledger_up") is None


def message(headers: dict[str, Any] | None = None, timestamp: datetime | None = None) -> Any:
    return SimpleNamespace(headers=headers, timestamp=timestamp)


def test_a_head_message_entered_its_queue_at_the_newest_time_it_carries() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    published = now - timedelta(hours=2)
    failed = now - timedelta(minutes=10)
    returned = now - timedelta(seconds=5)
    # Fresh from a producer: its timestamp.
    assert entered_at(message(timestamp=published)) == published
    # In a wait queue (or the DLQ): when it was retried (or died).
    retried = {"x-failed-at": failed.isoformat().replace("+00:00", "Z")}
    assert entered_at(message(retried, published)) == failed
    # Back in the main queue from a wait queue: when the broker dead-lettered it there.
    back = {**retried, "x-death": [{"time": returned, "queue": "outbound-retry-30s"}]}
    assert entered_at(message(back, published)) == returned
    # Naive times are UTC; a head with no time at all has none.
    assert entered_at(message(timestamp=published.replace(tzinfo=None))) == published
    assert entered_at(message({"x-failed-at": b"not a time"})) is None


def test_the_deploy_dashboard_and_rules_use_only_metrics_the_daemon_exports() -> None:
    import json
    import re
    from pathlib import Path

    import yaml

    deploy = Path(__file__).parents[2] / "deploy"
    m = Metrics()
    m.watch(in_flight=lambda: 0, broker_connected=lambda: 1, ready=lambda: 1, ledger_up=lambda: 1)
    m.outcome(Retry("q", 30, Failure("transient", "131000", "x")), "retry", "text", "acme")
    m.queue_depth.labels("q", "main")
    m.queue_oldest_age.labels("q", "main")
    statuses = StatusMetrics(m.registry)
    statuses.failed.labels("account", "131048")
    receiver = ReceiverMetrics(lambda: True)
    controls = ControlMetrics(m.registry)
    now = datetime.now(UTC)
    pause = Pause("acme", "1065", "paused", "breaker: 5 consecutive account failures",
                  "breaker", True, now, 7, now)  # fmt: skip
    controls.watch(lambda: [(pause, "outbound-held.acme:1065.7")], lambda: None)
    exported = {
        s.name
        for registry in (m.registry, receiver.registry)
        for family in registry.collect()
        for s in family.samples
    }

    dashboard = json.loads((deploy / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((deploy / "prometheus-alerts.yml").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])] + [
        r["expr"] for g in rules["groups"] for r in g["rules"]
    ]
    used = {name for e in exprs for name in re.findall(r"\bwa_[a-z_]+", e)}
    assert used
    assert used <= exported, used - exported
    assert {r["alert"] for g in rules["groups"] for r in g["rules"]} >= {
        "WaConsumerDeadLetterRate",
        "WaConsumerDeadLetterDepth",
        "WaConsumerAccountFailure",
        "WaConsumerQueueAge",
        "WaConsumerNotReady",
        "WaConsumerStalled",
        "WaConsumerStatusBacklog",
        "WaWebhookReceiverRefusing",
    }
    # Every rule links the README's runbook, whoever gets paged.
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["runbook_url"].endswith("README.md#runbook"), rule["alert"]
