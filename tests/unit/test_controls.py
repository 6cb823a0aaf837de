"""Tenant controls' pure parts: the breaker's count, held queue names, the hold decision."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from wa_consumer import headers as h
from wa_consumer.controls import Pause, held_queue
from wa_consumer.controls.breaker import Breaker
from wa_consumer.outcomes import Dead, Delivered, Failure, Retry

A = "106540352242922"


def dead(category: str, code: str = "131031") -> Dead:
    return Dead(Failure(category, code, "Business account is restricted"))


def test_breaker_trips_once_at_the_threshold_of_consecutive_account_failures() -> None:
    breaker = Breaker(3)
    assert breaker.observe("acme", A, dead("account")) is None
    assert breaker.observe("acme", A, dead("account")) is None
    trip = breaker.observe("acme", A, dead("account"))
    assert trip is not None
    assert (trip.tenant_id, trip.number, trip.category, trip.count) == ("acme", A, "account", 3)
    assert trip.reason.startswith("breaker: 3 consecutive account failures (code 131031")
    assert breaker.observe("acme", A, dead("account")) is None  # once, not every failure after


def test_a_send_accepted_starts_the_count_again() -> None:
    breaker = Breaker(2)
    assert breaker.observe("acme", A, dead("account")) is None
    assert breaker.observe("acme", A, Delivered("wamid.1")) is None
    assert breaker.observe("acme", A, dead("account")) is None
    assert breaker.observe("acme", A, dead("account")) is not None


def test_other_outcomes_say_nothing_of_the_account() -> None:
    breaker = Breaker(2)
    breaker.observe("acme", A, dead("account"))
    breaker.observe("acme", A, dead("invalid"))
    breaker.observe("acme", A, Retry("q", 1, Failure("transient", "131000", "x")))
    assert breaker.observe("acme", A, dead("account")) is not None


def test_auth_and_suspension_count_against_the_tenant_account_against_the_number() -> None:
    breaker = Breaker(2)
    breaker.observe("acme", A, dead("auth", "190"))
    trip = breaker.observe("acme", "other", dead("tenant_suspended", "tenant_suspended"))
    assert trip is not None
    assert trip.number is None  # the whole tenant
    breaker.observe("acme", "n1", dead("account"))
    assert breaker.observe("acme", "n2", dead("account")) is None  # another number's count


def test_a_threshold_of_zero_never_trips() -> None:
    breaker = Breaker(0)
    assert all(breaker.observe("acme", A, dead("account")) is None for _ in range(100))


def test_held_queue_names_are_plain_or_a_digest() -> None:
    assert held_queue("outbound-held", "acme", None, 7) == "outbound-held.acme.7"
    assert held_queue("outbound-held", "acme", A, 7) == f"outbound-held.acme:{A}.7"
    odd = held_queue("outbound-held", "a b/c\x00", None, 7)
    assert odd.startswith("outbound-held.h") and odd.endswith(".7")
    assert odd != held_queue("outbound-held", "a b/c\x01", None, 7)


@given(
    st.text(min_size=1, max_size=300),
    st.one_of(st.none(), st.from_regex(r"\d{1,32}", fullmatch=True)),
)
def test_every_held_queue_name_is_one_rabbitmq_takes(tenant: str, number: str | None) -> None:
    name = held_queue("outbound-held", tenant, number, 2**62)
    assert len(name.encode()) <= 255
    assert name.isprintable()


def test_the_release_header_is_read_only_as_a_positive_integer() -> None:
    assert h.held_release({h.HELD_RELEASE: 12}) == 12
    for value in (0, -1, True, "12", b"12", 2**63, 1.0, None):
        assert h.held_release({h.HELD_RELEASE: value}) is None
    assert h.held_release(None) is None


def test_a_pause_names_its_target_for_the_audit_trail() -> None:
    now = datetime.now(UTC)
    pause = Pause("acme", A, "paused", "x", "alice", False, None, 3, now)
    assert pause.target == f"acme:{A}"
    assert Pause("acme", None, "paused", "x", "alice", False, None, 3, now).target == "acme"


def test_a_held_queue_goes_back_after_a_resume_or_a_newer_drain_only() -> None:
    from wa_consumer.controls.store import Hold

    assert Hold("q", "acme", None, 3, None).releasable  # resumed
    assert Hold("q", "acme", None, 3, 5, "draining").releasable  # a drain after its pause
    assert not Hold("q", "acme", None, 5, 5, "draining").releasable  # the drain's own queue
    # Paused again after a resume: what is still held waits for this pause's resume.
    assert not Hold("q", "acme", None, 3, 5, "paused").releasable
