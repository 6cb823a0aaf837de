"""The classification table, the retry rules, the delay ladder and the wait queues' names."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_consumer.categories import CLOUD_API
from wa_consumer.classify import (
    BY_CODE,
    TABLE,
    Category,
    Rule,
    _index,
    classify,
    retry_delay,
    retry_queue_name,
    rule_for,
    wait_queue_for,
)
from wa_consumer.errors import GraphApiError, GraphTransportError

T, R, A, ACC, P = (
    Category.TRANSIENT,
    Category.RATE_LIMITED,
    Category.AUTH,
    Category.ACCOUNT,
    Category.PERMANENT,
)

# Transcribed from WHATSAPP.md's Classification table, independently of TABLE.
DOCUMENTED_TEXT = {
    T: "1 2 131000 131016 133004 131057",
    R: "4 17 80007 80008 130429 131056",
    A: "0 102 190",
    ACC: "3 10 200-299 131005 368 131031 130497 131042 131045 133010 33 131037 131063 134011"
    " 131048 131064",
    P: "100 131008 131009 131051 131053 135000 132000-132018 132068 132069 131026 131047 131049"
    " 131050 130403 130472 131021 131030",
}


def _codes(text: str) -> list[tuple[int, int]]:
    """``"1 200-299"`` -> ``[(1, 1), (200, 299)]``: inclusive ranges."""
    pairs = [word.split("-") if "-" in word else [word, word] for word in text.split()]
    return [(int(first), int(last)) for first, last in pairs]


DOCUMENTED = {category: _codes(text) for category, text in DOCUMENTED_TEXT.items()}
DOCUMENTED_ROWS = [(codes, category) for category, rows in DOCUMENTED.items() for codes in rows]

LADDER = (30.0, 120.0, 600.0, 1800.0, 3600.0)


def api_error(
    status: int = 400, code: int | None = None, *, is_transient: bool | None = None
) -> GraphApiError:
    return GraphApiError("x", status=status, code=code, is_transient=is_transient)


@pytest.mark.parametrize(("codes", "category"), DOCUMENTED_ROWS, ids=str)
def test_every_documented_code_maps_to_its_category(
    codes: tuple[int, int], category: Category
) -> None:
    first, last = codes
    for code in range(first, last + 1):
        # An HTTP status that would say otherwise, to show the code decides.
        status = 500 if category is not T else 400
        assert classify(api_error(status, code)) is category, code


def test_the_table_holds_exactly_the_documented_codes() -> None:
    documented: set[int] = set()
    for rows in DOCUMENTED.values():
        for first, last in rows:
            documented.update(range(first, last + 1))
    assert set(BY_CODE) == documented
    assert set(TABLE) == set(CLOUD_API)


def test_every_row_names_what_the_code_means() -> None:
    assert all(meaning.strip() for rows in TABLE.values() for _codes, meaning in rows)


def test_a_code_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="131000"):
        _index({T: ((131000, "a"),), P: ((range(130999, 131001 + 1), "b"),)})


def test_the_code_decides_over_the_http_status() -> None:
    assert classify(api_error(400, 130429)) is R  # rate limits come as 400
    assert classify(api_error(500, 190)) is A
    assert classify(api_error(400, 131000)) is T
    assert classify(api_error(400, 131000, is_transient=False)) is T


def test_a_known_code_decides_over_is_transient() -> None:
    assert classify(api_error(400, 131026, is_transient=True)) is P


def test_unknown_code_marked_transient_is_transient() -> None:
    assert classify(api_error(400, 999_999, is_transient=True)) is T
    assert classify(api_error(400, None, is_transient=True)) is T


@pytest.mark.parametrize(
    ("status", "category"),
    [(500, T), (502, T), (503, T), (504, T), (429, R), (400, P), (404, P), (408, P), (422, P)],
)
def test_unknown_code_falls_back_on_the_http_status(status: int, category: Category) -> None:
    assert classify(api_error(status, 987_654)) is category
    assert classify(api_error(status, None)) is category
    assert classify(api_error(status, 987_654, is_transient=False)) is category


def test_a_bare_401_is_auth_so_the_credentials_are_refreshed() -> None:
    # No Meta body (a proxy's 401, an empty one): the token was refused all the same.
    bare = GraphApiError("HTTP 401 with an empty body", status=401)
    assert classify(bare) is A
    assert rule_for(classify(bare), bare.code, rate_limit_min_delay=60.0).refresh_credentials


@pytest.mark.parametrize("is_transient", [None, False, True])
def test_a_401_with_an_unknown_code_or_none_is_auth(is_transient: bool | None) -> None:
    assert classify(api_error(401, None, is_transient=is_transient)) is A
    assert classify(api_error(401, 987_654, is_transient=is_transient)) is A


def test_a_401_with_a_known_code_keeps_the_codes_category() -> None:
    assert classify(api_error(401, 131026)) is P
    assert classify(api_error(401, 131000)) is T


@pytest.mark.parametrize("maybe_sent", [False, True])
def test_transport_errors_are_transient(maybe_sent: bool) -> None:
    err = GraphTransportError("timeout", maybe_sent=maybe_sent, short_code="timeout")
    assert classify(err) is T


def test_a_2xx_without_a_wamid_is_transient() -> None:
    err = GraphApiError("no wamid", status=200, maybe_sent=True, short_code="no_wamid")
    assert classify(err) is T


def test_rules_per_category() -> None:
    def rule(category: Category, code: int | None = None) -> Rule:
        return rule_for(category, code, rate_limit_min_delay=60.0, pair_min_delay=10.0)

    assert rule(T, 131000) == Rule(retry=True, min_delay=0.0, refresh_credentials=False)
    assert rule(A, 190) == Rule(retry=False, min_delay=0.0, refresh_credentials=True)
    assert rule(ACC, 368) == Rule(retry=False, min_delay=0.0, refresh_credentials=False)
    assert rule(P, 131026) == Rule(retry=False, min_delay=0.0, refresh_credentials=False)
    for code in (4, 17, 80007, 80008, 130429, None):
        assert rule(R, code) == Rule(retry=True, min_delay=60.0, refresh_credentials=False)
    assert rule(R, 131056) == Rule(retry=True, min_delay=10.0, refresh_credentials=False)


def test_pair_limit_floor_defaults_to_ten_seconds() -> None:
    assert rule_for(R, 131056, rate_limit_min_delay=60.0).min_delay == 10.0


@pytest.mark.parametrize(("retry", "delay"), [(1, 30), (2, 120), (3, 600), (4, 1800), (5, 3600)])
def test_retry_n_uses_step_n(retry: int, delay: float) -> None:
    assert retry_delay(retry, LADDER) == delay


def test_the_last_step_repeats() -> None:
    assert retry_delay(6, LADDER) == 3600
    assert retry_delay(50, LADDER) == 3600
    assert [retry_delay(n, [0.5, 1]) for n in (1, 2, 3)] == [0.5, 1, 1]


def test_min_delay_is_a_floor() -> None:
    assert retry_delay(1, LADDER, 60) == 60
    assert retry_delay(3, LADDER, 60) == 600


def test_retry_numbers_start_at_one_and_the_ladder_is_not_empty() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        retry_delay(0, LADDER)
    with pytest.raises(ValueError, match="at least one"):
        retry_delay(1, [])
    with pytest.raises(ValueError, match="at least one"):
        wait_queue_for(1, [])


def test_a_ladder_delay_has_its_own_queue() -> None:
    for step in LADDER:
        assert wait_queue_for(step, LADDER) == step


def test_a_floor_above_the_step_picks_the_next_queue_that_waits_long_enough() -> None:
    # A rate limit on the first retry: 60 s floor, 30 s step -> the 2 min queue.
    assert wait_queue_for(retry_delay(1, LADDER, 60), LADDER) == 120
    assert wait_queue_for(10, [0.5, 1, 2]) == 2  # past the largest: the largest
    assert wait_queue_for(1.5, [2, 0.5, 1]) == 2  # order of the ladder does not matter


@given(
    ladder=st.lists(st.floats(0.001, 1e5), min_size=1, max_size=8),
    retry=st.integers(1, 50),
    floor=st.floats(0, 2e5),
)
def test_the_chosen_queue_is_on_the_ladder_and_waits_at_least_the_floor_if_one_can(
    ladder: list[float], retry: int, floor: float
) -> None:
    delay = retry_delay(retry, ladder, floor)
    queue = wait_queue_for(delay, ladder)
    assert queue in ladder
    assert queue >= delay or queue == max(ladder)


@pytest.mark.parametrize(
    ("delay", "name"),
    [
        (30, "outbound-retry-30s"),
        (120, "outbound-retry-2m"),
        (600, "outbound-retry-10m"),
        (1800, "outbound-retry-30m"),
        (3600, "outbound-retry-1h"),
        (0.5, "outbound-retry-500ms"),
        (0.25, "outbound-retry-250ms"),
        (0.0015, "outbound-retry-1.5ms"),
        (1, "outbound-retry-1s"),
        (1.5, "outbound-retry-1.5s"),
        (90, "outbound-retry-90s"),
        (5400, "outbound-retry-90m"),
        (86400, "outbound-retry-24h"),
        (0.1 * 3, "outbound-retry-300ms"),
    ],
)
def test_wait_queue_names(delay: float, name: str) -> None:
    assert retry_queue_name(delay) == name


def test_wait_queue_name_prefix() -> None:
    assert retry_queue_name(30, "retry-abc-") == "retry-abc-30s"


@pytest.mark.parametrize("delay", [0, -1, math.nan, math.inf])
def test_a_wait_queue_needs_a_positive_delay(delay: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        retry_queue_name(delay)


@given(st.lists(st.floats(0.001, 1e6), min_size=1, max_size=20, unique=True))
def test_different_delays_get_different_queue_names(delays: list[float]) -> None:
    distinct = {round(d, 6) for d in delays}
    assert len({retry_queue_name(d) for d in distinct}) == len(distinct)
