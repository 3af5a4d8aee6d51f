"""Retry policy: classification, Retry-After, backoff bounds and the shared pause."""

from __future__ import annotations

import email.utils

import pytest

from ingest.config import RunConfig
from ingest.retry import Action, RetryPolicy, classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (200, Action.DELIVERED),
        (201, Action.DELIVERED),
        (429, Action.RATE_LIMITED),
        (408, Action.RETRY),
        (425, Action.RETRY),
        (500, Action.RETRY_UNKNOWN),
        (503, Action.RETRY_UNKNOWN),
        (504, Action.RETRY_UNKNOWN),
        (400, Action.SPLIT),
        (413, Action.SPLIT),
        (422, Action.SPLIT),
        (401, Action.AUTH),
        (403, Action.AUTH),
        (404, Action.NOT_FOUND),
        (409, Action.FAIL),
    ],
)
def test_each_status_maps_to_its_action(status: int, action: Action) -> None:
    """5xx may hide a commit, 4xx on rows are split, auth and 404 stop the run."""
    assert classify(status) is action


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is read as seconds or as an HTTP date; garbage is ignored."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(10.0)
    assert parse_retry_after(email.utils.formatdate(999_990, usegmt=True), now=1_000_000) == 0.0


def test_a_long_retry_after_is_read_as_sent_and_only_the_wait_is_capped() -> None:
    """parse_retry_after gives the server's figure uncapped; the throttled wait caps at an hour."""
    assert parse_retry_after("99999") == 99999.0
    date = email.utils.formatdate(1_000_000 + 7200, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == pytest.approx(7200.0)
    assert parse_retry_after("inf") is None
    assert RetryPolicy(base=0.5).throttled(1, 99999.0) == 3600.0


def test_backoff_is_equal_jitter_under_a_cap() -> None:
    """Each delay is half of min(cap, base * 2**attempt) plus the jitter share of the other half."""
    top = RetryPolicy(base=0.5, cap=30.0, rng=lambda: 1.0)
    assert [top.backoff(a) for a in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 30.0]
    assert RetryPolicy(base=0.5, cap=30.0, rng=lambda: 0.0).backoff(5) == 8.0


def test_the_default_budget_rides_out_a_minute_of_outage_whatever_the_jitter() -> None:
    """With the defaults, the waits between attempts add up to over a minute in every draw."""
    least = RetryPolicy(rng=lambda: 0.0)
    waits = sum(least.backoff(a) for a in range(1, least.max_attempts))
    assert waits == least.least_ridden_out() == 75.5
    assert RunConfig(input="x", dataset_id="d").max_attempts == least.max_attempts
    assert RetryPolicy(max_seconds=30.0).least_ridden_out() == 30.0


def test_throttled_waits_never_drop_below_the_floor() -> None:
    """A 429 pause is Retry-After or the backoff, but never less than base: 0 is not honoured."""
    policy = RetryPolicy(base=0.5, cap=30.0, rng=lambda: 0.0)
    assert policy.throttled(1, 0.0) == 0.5  # Retry-After: 0
    assert policy.throttled(1, 0.1) == 0.5
    assert policy.throttled(1, 3.0) == 3.0
    assert policy.throttled(4, None) == 0.5  # full jitter drew 0: still the floor
    assert RetryPolicy(base=0.5, rng=lambda: 1.0).throttled(3, None) == 4.0


def test_a_tiny_backoff_base_does_not_lower_the_throttled_floor() -> None:
    """A backoff_base near 0 still leaves a throttled wait and its jitter a fixed minimum."""
    policy = RetryPolicy(base=0.0001, rng=lambda: 0.0)
    assert policy.throttled(1, 0.0) == 0.1
    assert policy.throttled(5, None) == 0.1
    assert RetryPolicy(base=0.0001, rng=lambda: 0.5).jitter() == 0.05


def test_jitter_spreads_workers_over_the_floor() -> None:
    """Each worker's extra wait after a shared pause is a fraction of base, drawn from rng."""
    assert RetryPolicy(base=0.5, rng=lambda: 0.5).jitter() == 0.25
    assert RetryPolicy(base=0.5, rng=lambda: 0.0).jitter() == 0.0


def test_policy_gives_up_on_attempts_or_time() -> None:
    """The bounds are attempts per batch and total seconds per batch."""
    policy = RetryPolicy(max_attempts=3, max_seconds=10.0)
    assert not policy.gives_up(attempts=2, elapsed=1.0, wait=1.0)
    assert policy.gives_up(attempts=3, elapsed=1.0, wait=1.0)
    assert policy.gives_up(attempts=1, elapsed=9.5, wait=1.0)
