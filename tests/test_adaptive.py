"""The pacing math on numbers: spacing, the adaptive rate (CUBIC), the adaptive concurrency."""

from __future__ import annotations

import heapq
import random

import pytest
from ratesim import Limit

from ingest.adaptive import (
    BETA,
    MIN_RATE,
    AdaptiveConcurrency,
    AdaptiveRate,
    Spacing,
)


def test_a_hard_cap_never_fits_more_than_r_requests_in_any_second_even_with_late_wakeups() -> None:
    """--rate R: sends woken late catch up, yet no sliding second holds more than R, and
    the rate kept is at least 0.97 R."""
    rng = random.Random(7)
    for rate in (5.0, 20.0, 50.0):
        spacing, now, sends = Spacing(rate, hard=True), 0.0, []
        while now < 60:
            now += spacing.delay(now) + rng.choice([0.0, 0.0, 0.0, 0.004, 0.015])
            if spacing.delay(now) == 0:
                spacing.sent(now)
                sends.append(now)
        most = max(sum(s <= t < s + 1.0 for t in sends) for s in sends)
        assert most <= rate
        assert len(sends) / 60 >= 0.97 * rate


def test_a_hard_cap_counts_a_request_from_when_it_went_not_from_its_turn() -> None:
    """--rate R: requests that go up to 40 ms after their turn (a journal fsync), several
    turns outstanding at once, still never put more than R in any sliding second."""
    rng = random.Random(11)
    for rate in (5.0, 20.0, 50.0):
        spacing, now = Spacing(rate, hard=True), 0.0
        went: list[float] = []
        pending: list[tuple[float, float]] = []  # (when it goes, its turn)
        while now < 60:
            due = now + spacing.delay(now)
            if pending and pending[0][0] <= due:
                now, turn = heapq.heappop(pending)
                spacing.went(turn, now)
                went.append(now)
                continue
            now = due
            spacing.taken(now)
            heapq.heappush(pending, (now + rng.choice([0.0, 0.0, 0.002, 0.04]), now))
        most = max(sum(s <= t < s + 1.0 for t in went) for s in went)
        assert most <= rate
        assert len(went) / 60 >= 0.97 * rate


def test_spacing_below_one_a_second_is_strict() -> None:
    """A rate of 0.5/s sends every two seconds, never sooner."""
    spacing = Spacing(0.5, hard=True)
    spacing.sent(0.0)
    assert spacing.delay(1.0) == pytest.approx(1.0)
    assert spacing.delay(2.0) == 0.0


def test_no_cap_until_the_first_throttle_then_a_cut_from_what_was_accepted() -> None:
    """The rate is free until a 429; then BETA x the accepted rate, whatever was sent."""
    rate = AdaptiveRate()
    for i in range(100):  # 20 accepted a second over five seconds
        rate.sent(i * 0.05)
        rate.succeeded(i * 0.05)
    assert rate.rate is None
    assert rate.throttled(5.0, sent=4.99)
    assert rate.rate == pytest.approx(BETA * 20, rel=0.1)


def test_a_throttle_of_a_request_sent_before_the_cut_does_not_cut_again() -> None:
    """Answers to requests sent at the old rate tell nothing new: one cut, not a cascade."""
    rate = AdaptiveRate()
    for i in range(40):
        rate.succeeded(i * 0.05)
    rate.throttled(2.0, sent=1.99)
    after = rate.rate
    assert not rate.throttled(2.01, sent=1.995)
    assert rate.rate == after and rate.throttles == 1


def test_the_cubic_climbs_back_to_the_cut_rate_and_then_probes_above_it() -> None:
    """After a cut the rate rises to where the throttle came within one climb, then past it."""
    rate = AdaptiveRate()
    for i in range(200):
        rate.sent(i * 0.01)
        rate.succeeded(i * 0.01)
    rate.throttled(2.0, sent=2.0)
    w_max = rate.rate / BETA  # type: ignore[operator]
    t, seen = 2.0, []
    while t < 20:
        t += 1 / (rate.rate or 1)
        rate.sent(t)
        rate.succeeded(t)
        seen.append((t, rate.rate))
    climb = max(60 / w_max, 3.0)
    near = [r for s, r in seen if abs(s - 2.0 - climb) < 0.2]
    assert near and all(r == pytest.approx(w_max, rel=0.05) for r in near)
    assert seen[-1][1] > 1.1 * w_max


def test_after_a_storm_the_rate_wins_back_quickly() -> None:
    """A storm of 429s drives the rate to its floor; successes after it restore most of
    the rate within a few dozen requests, not minutes of cubic growth."""
    rate = AdaptiveRate()
    for i in range(100):
        rate.sent(i * 0.02)
        rate.succeeded(i * 0.02)
    t = 1.49  # the storm begins just after the last success
    for _ in range(40):  # nothing accepted for twenty seconds
        t += 0.5
        rate.sent(t)
        rate.throttled(t, sent=t)
    assert rate.rate is not None and rate.rate < 1.0
    for _ in range(40):
        t += 1 / (rate.rate or 1)
        rate.sent(t)
        rate.succeeded(t)
    assert rate.rate is not None and rate.rate >= 0.6 * 50


def _simulate(limit: Limit, seconds: float, rtt: float = 0.005, workers: int = 8) -> None:
    """Drive AdaptiveRate and Spacing as the pacer does, against ``limit``, in virtual time."""
    rate, spacing = AdaptiveRate(), None
    t = pause = 0.0
    answers: list[tuple[float, float, int, float | None]] = []
    while t < seconds:
        due = max(t, pause)
        if spacing is not None:
            due += spacing.delay(due)
        while answers and answers[0][0] <= due:
            at, sent, status, after = heapq.heappop(answers)
            if status == 429:
                if after is not None:
                    pause = max(pause, at + after)
                if rate.throttled(at, sent=sent) and spacing is None:
                    spacing = Spacing(rate.rate or MIN_RATE)
            else:
                rate.succeeded(at)
            if spacing is not None and rate.rate is not None:
                spacing.rate = rate.rate
        if len(answers) >= workers:
            t = answers[0][0]
            continue
        if due < pause or (spacing is not None and spacing.delay(due) > 1e-12):
            t = max(due, pause)
            continue
        t = due
        if spacing is not None:
            spacing.sent(t)
        rate.sent(t)
        status, after = limit.answer(t)
        heapq.heappush(answers, (t + rtt, t, status, after))
        if spacing is None:
            t += 0.0005  # uncapped, the client itself manages 2,000 requests a second


@pytest.mark.parametrize("limit", [5.0, 20.0, 50.0, 200.0])
@pytest.mark.parametrize("mode", ["bucket", "window"])
@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "none"])
def test_an_unknown_limit_is_found_and_held(limit: float, mode: str, retry_after: bool) -> None:
    """Token bucket or fixed window, Retry-After or none, R from 5 to 200 a second: the
    rate found sustains 0.9 R or more with at most 5% of the requests answered 429."""
    server = Limit(limit, mode, retry_after)
    seconds = 200.0 if limit < 10 else 90.0
    _simulate(server, seconds)
    assert server.sustained(20.0, seconds) >= 0.9
    assert server.refused_share() <= 0.05


@pytest.mark.parametrize("limit", [20.0, 50.0, 200.0])
@pytest.mark.parametrize("mode", ["bucket", "window"])
@pytest.mark.parametrize("retry_after", [True, False], ids=["retry-after", "none"])
def test_a_limit_that_stays_put_is_probed_ever_more_rarely(
    limit: float, mode: str, retry_after: bool
) -> None:
    """Each probe above a limit costs a 429 (and often a whole second of Retry-After):
    once found, a limit that does not move is probed less and less, at most 3 times in
    the second half of the run (a token bucket's burst is not taken for a higher limit)."""
    server = Limit(limit, mode, retry_after)
    _simulate(server, 90.0)
    assert server.throttle_episodes(since=45.0) <= 3


def test_concurrency_starts_at_one_and_doubles_each_round_trip_while_latency_holds() -> None:
    """Slow start: 1, 2, 4, 8 ... while every request of a round trip comes back as fast
    (each answer while the limit is full lets one more go)."""
    c, now, seen = AdaptiveConcurrency(maximum=128), 0.0, []
    for _ in range(9):
        now += 0.15
        for _ in range(c.value):  # the round trip's answers; each freed slot is refilled
            c.answered(now, rtt=0.15, in_flight=c.value, pressure=False)
        seen.append(c.value)
    assert seen[:4] == [2, 4, 8, 16] and seen[-1] == 128


def test_concurrency_is_cut_on_back_pressure_and_then_grows_by_one() -> None:
    """A 429 or 5xx in a round trip cuts the limit by 10%; then it grows by one a round trip."""
    c = AdaptiveConcurrency(maximum=128, limit=50.0)
    c.answered(0.0, rtt=0.1, in_flight=50, pressure=False)
    c.answered(0.1, rtt=0.1, in_flight=50, pressure=True)
    assert c.value == 45 and not c.slow_start
    c.answered(0.3, rtt=0.1, in_flight=45, pressure=False)
    assert c.value == 46


def test_concurrency_is_cut_when_the_round_trip_doubles() -> None:
    """Queueing shows as latency: a round trip past twice the best one cuts the limit."""
    c = AdaptiveConcurrency(maximum=128, limit=40.0)
    c.answered(0.0, rtt=0.1, in_flight=40, pressure=False)
    c.answered(0.1, rtt=0.1, in_flight=40, pressure=False)  # a window at 0.1 s
    grown = c.value
    c.answered(0.3, rtt=0.5, in_flight=grown, pressure=False)
    assert c.value < grown


def test_concurrency_does_not_grow_when_the_limit_is_not_reached() -> None:
    """Requests held back by a rate are not a reason for more in flight."""
    c = AdaptiveConcurrency(maximum=128, limit=8.0)
    for i in range(20):
        c.answered(i * 0.1, rtt=0.1, in_flight=2, pressure=False)
    assert c.value == 8
