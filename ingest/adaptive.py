"""The pacing math, pure: send spacing, an adaptive rate, an adaptive concurrency.

Every method takes the time as an argument and nothing here sleeps, so the
decisions are tested on numbers (as botocore tests ``retries/throttling.py``).
``ingest.pacing`` puts them behind the async ``Pacer`` the workers wait on.

- ``Spacing``: sends at most ``rate`` a second, evenly. A hard cap (``--rate R``)
  also keeps every sliding one-second window at or under R.
- ``AdaptiveRate``: no cap until the server throttles (429, or 503 with
  ``Retry-After``); then CUBIC, as botocore's adaptive retry mode does: the rate
  is cut to ``BETA`` of what was being sent, climbs back to ``HOLD`` of it along a
  cubic that flattens there, then probes above it. Each throttle at the same level
  as the last doubles the climbs held before the probe (a limit that stays put is
  not probed every few seconds: a probe costs a 429 and often a whole second of
  ``Retry-After``). Its time runs in requests, not
  seconds (the climb back takes ``CLIMB_REQUESTS`` requests at any rate), so no
  constant favours one server's limit: a 5/s limit is found as well as a 500/s one.
- ``AdaptiveConcurrency``: requests in flight, as Vector's adaptive request
  concurrency and TCP do: start at 1 and add 1 for each answer while the limit
  is reached (slow start: doubling every round trip), then add 1 a round trip;
  cut by ``CONCURRENCY_CUT`` on back pressure (429, 5xx, no answer) or when the
  round trip grows past twice its best.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field

# A throttle cuts the rate to this share of what was being sent (botocore: 0.7).
BETA = 0.8
# Requests, at the rate where the last throttle came, that the cubic takes to climb
# back there from BETA of it: the probe above it starts after them.
CLIMB_REQUESTS = 60.0
# ...and at least this many seconds: a limiter counting per second (a fixed window)
# shows an overshoot only once its quota is spent, up to a second later.
CLIMB_SECONDS = 3.0
# Where the climb back levels off, as a share of the rate the last throttle came at:
# sending at the limit itself, a fixed window's arrivals jitter one over it now and
# then, and a 429 whose Retry-After rounds up to a whole second costs a window's quota.
HOLD = 0.97
# A throttle at the level of the one before (within this share of it) means the limit
# has not moved: the next probe above it waits twice as many climbs, up to MAX_PATIENCE.
# A throttle elsewhere (the limit moved) probes after one climb again.
SAME_LEVEL = 0.1
MAX_PATIENCE = 8.0
# ...and the first throttle of a run, which ends a climb from no cap at all (so what was
# accepted then is the limit), holds this many.
FIRST_PATIENCE = 4.0
# The rate is never cut below this (requests/s): one request every two seconds still
# learns when a throttle is over. botocore's floor is the same.
MIN_RATE = 0.5
# Sends the rate is measured over: requests, not seconds, for the same reason.
MEASURED_SENDS = 16
# Far below the best rate a throttle has shown (after a storm of 429s), each success
# grows the rate by this share, instead of the slow start of the cubic.
RECOVERY_GROWTH = 0.25
# A hard cap's window: a little over a second, so that arrival jitter cannot fit
# one request more than the cap into a second counted at the server.
_WINDOW = 1.01

CONCURRENCY_CUT = 0.9  # Vector's decrease ratio
LATENCY_GROWTH = 2.0  # a round trip this many times the best one is queueing
LATENCY_SLACK = 0.002  # seconds: scheduling noise a fast local server shows
_BASELINE_WINDOWS = 30  # the best round trip is the least of this many windows' means


class Spacing:
    """Sends spaced evenly at ``rate`` a second; ``hard`` also caps each sliding second.

    spacing = Spacing(20.0, hard=True)
    wait = spacing.delay(now)   # 0.0: send now
    spacing.taken(now)          # the turn is taken...
    spacing.went(now, later)    # ...and the request went (after a journal fsync, say)

    A hard cap counts a request from when it went, not from its turn: what comes
    between (the journal's fsync of a batch's first send) takes from nothing to tens
    of milliseconds, and a cap counted at turns lets two sends that far apart arrive
    within the server's second. A turn taken and not gone yet counts as going now.
    """

    def __init__(self, rate: float, *, hard: bool = False) -> None:
        self._hard = hard
        self._sends: deque[float] = deque()  # when requests went, in order
        self._pending: list[float] = []  # turns taken whose requests have not gone yet
        self._last = -math.inf  # the last send
        self._next = -math.inf  # when the next is due on the even schedule
        self.rate = rate

    @property
    def rate(self) -> float:
        """Requests per second (settable: an adaptive rate changes it)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = value
        # At most this many sends in any window of _WINDOW seconds.
        self._per_window = max(1, math.floor(value)) if self._hard and value >= 1 else 0

    def delay(self, now: float) -> float:
        """Seconds until the next request may go."""
        interval = 1.0 / self._rate
        # A late send may catch up on its turn, but never faster than twice the rate...
        gap = interval if self._rate < 1 or not self._sends else interval / 2
        due = self._last + gap
        if self._sends:
            # ...and never ahead of the even schedule.
            due = max(due, self._next)
        if self._per_window:
            # The per_window-th latest send, the pending ones counted as going now.
            back = self._per_window - len(self._pending)
            if back <= 0:
                due = max(due, now + _WINDOW)
            elif len(self._sends) >= back:
                due = max(due, self._sends[-back] + _WINDOW)
        return max(due - now, 0.0)

    def taken(self, now: float) -> None:
        """A turn was taken at ``now``: its request goes next (see ``went``)."""
        interval = 1.0 / self._rate
        # The schedule never falls more than one interval behind: no burst after a pause.
        self._next = max(self._next + interval, now)
        self._last = now
        self._pending.append(now)

    def went(self, turn: float, at: float) -> None:
        """The request of the turn taken at ``turn`` went at ``at`` (or was given up).

        A turn taken before this spacing was made (an adaptive rate's first cut) is
        counted from ``at`` alone.
        """
        with contextlib.suppress(ValueError):
            self._pending.remove(turn)
        self._last = max(self._last, at)
        sends = self._sends
        if not sends or at >= sends[-1]:
            sends.append(at)
        else:
            bisect.insort(sends, at)
        while len(sends) > max(self._per_window, 1):
            sends.popleft()

    def sent(self, now: float) -> None:
        """A request went at ``now``, its turn taken then too."""
        self.taken(now)
        self.went(now, now)


@dataclass(slots=True)
class AdaptiveRate:
    """The send rate found from throttles: None (no cap) until the first one.

    rate = AdaptiveRate()
    rate.sent(now)
    rate.throttled(now, sent=t0)   # a 429: cut to BETA x the rate the server accepted
    rate.succeeded(now)            # climbs back along the cubic
    """

    rate: float | None = None
    throttles: int = 0  # throttles that cut the rate
    _w_max: float = 0.0  # the accepted rate at the last cut: the cubic flattens near it
    _patience: float = 1.0  # climbs held at HOLD x w_max before probing above it
    _held: float = 0.0  # the last w_max held through its patience (then probed above)
    _peak: float = 0.0  # the best accepted rate a cut has seen, a storm's aside
    _cut_at: float = -math.inf
    _recovering: bool = False
    _recovered: bool = False  # won back to BETA x the peak, and not throttled since
    _sends: deque[float] = field(default_factory=lambda: deque(maxlen=MEASURED_SENDS))
    _accepted: deque[float] = field(default_factory=deque)

    def sent(self, now: float) -> None:
        """A request went."""
        self._sends.append(now)

    def measured(self, now: float) -> float | None:
        """Requests a second sent lately, or None before two of them."""
        if len(self._sends) < 2:
            return None
        span = now - self._sends[0]
        return len(self._sends) / span if span > 0 else None

    def accepted(self, now: float) -> float:
        """Requests a second the server accepted lately: over the last second, or over
        the last ``MEASURED_SENDS`` answers where they span longer (a slow limit)."""
        window = self._accepted
        while len(window) > MEASURED_SENDS and window[0] < now - 1.0:
            window.popleft()
        if not window:
            return 0.0
        return len(window) / max(1.0, now - window[0])

    def throttled(self, now: float, *, sent: float) -> bool:
        """A throttle for a request sent at ``sent``; whether it cut the rate.

        A request sent before the last cut was sent at the old rate: it tells nothing
        new. The cut is from what the server accepted, not what was sent: a limiter
        that refuses everything once its quota is spent would otherwise drive the
        rate down throttle after throttle while it still takes its quota each second.
        """
        if sent < self._cut_at:
            return False
        base = max(self.accepted(now), MIN_RATE)
        if self._recovering or self._recovered or base >= BETA * self._peak:
            # An ordinary cut, or the limit fell, or the peak won back after a storm was
            # not a rate the server holds (a token bucket's burst shows more than its
            # rate): the limit is about here.
            self._peak = base
        # else a storm (next to nothing accepted): the peak is what to win back after it
        climbs = self._climbs(now) if self._w_max else math.inf
        if climbs > self._patience:
            self._held = self._w_max  # probing above a level that held through the patience
        held = self._held
        # Throttled again before the climb got back, above the level held: the level the
        # last cut took was not the limit (a token bucket refilled by a pause lets a burst
        # through): the level held is.
        same = held > 0 and (abs(base - held) <= SAME_LEVEL * held or (base > held and climbs < 1))
        if not self.throttles:
            self._patience = FIRST_PATIENCE  # the first throttle measured the limit itself
        elif same:
            self._patience = min(2 * self._patience, MAX_PATIENCE)
        elif base < held:
            self._patience = 1.0  # the limit fell: probe again soon
        # (Above the level held, the limit rose or a token bucket let a burst through:
        # the cut and climb follow it, and the patience stays.)
        # At the level held, the lower of the two is the limit: a count that straddles a
        # fixed window's edge reads a little over it, and holding there throttles again.
        self._w_max = min(base, held) if same else base
        self.rate = max(self._w_max * BETA, MIN_RATE)
        self._cut_at = now
        self._recovering = self._recovered = False
        self.throttles += 1
        return True

    def succeeded(self, now: float) -> None:
        """An answer that was not a throttle: the rate grows."""
        self._accepted.append(now)
        if self.rate is None:
            return
        if self._recovering or self.rate < BETA * BETA * self._peak:
            # After a storm: win back what it cost quickly, then climb as usual.
            self._recovering = True
            self.rate = min(self.rate * (1 + RECOVERY_GROWTH), BETA * self._peak)
            if self.rate >= BETA * self._peak:
                self._w_max, self._cut_at, self._recovering = self._peak, now, False
                self._recovered = True
            return
        rate, measured = self._cubic(now), self.measured(now)
        if measured is not None:
            # A rate the client does not use is not a rate the server has allowed: it
            # grows no further than twice what is sent (and is not cut for it either).
            rate = min(rate, max(2 * measured, self.rate))
        self.rate = rate

    def _climbs(self, now: float) -> float:
        """Climbs since the last cut."""
        return (now - self._cut_at) / max(CLIMB_REQUESTS / self._w_max, CLIMB_SECONDS)

    def _cubic(self, now: float) -> float:
        # Time in climbs: back at HOLD x w_max after one, held there for the patience,
        # then probing above (the convex half of the cubic, from there).
        u = self._climbs(now)
        if u <= 1:
            share = HOLD + (HOLD - BETA) * (u - 1) ** 3
        else:
            share = HOLD + (1 - BETA) * max(u - self._patience, 0.0) ** 3
        return max(self._w_max * share, MIN_RATE)


@dataclass(slots=True)
class AdaptiveConcurrency:
    """Requests allowed in flight, from round trips and back pressure (AIMD).

    limit = AdaptiveConcurrency(maximum=128)
    limit.answered(now, rtt=0.15, in_flight=1, pressure=False)
    limit.value   # 2 after the first round trip in which the limit was reached
    """

    maximum: int
    limit: float = 1.0
    slow_start: bool = True
    _window_end: float = -math.inf
    _rtts: float = 0.0
    _answers: int = 0
    _reached: bool = False
    _pressure: bool = False
    _means: deque[float] = field(default_factory=lambda: deque(maxlen=_BASELINE_WINDOWS))

    @property
    def value(self) -> int:
        """The whole number of requests allowed in flight."""
        return max(1, min(self.maximum, math.floor(self.limit)))

    @property
    def baseline(self) -> float | None:
        """The best round trip seen lately (the least of recent windows' means)."""
        return min(self._means) if self._means else None

    def answered(self, now: float, *, rtt: float, in_flight: int, pressure: bool) -> None:
        """A request ended after ``rtt`` s with ``in_flight`` requests (it included) out.

        ``pressure``: the server pushed back (429, 5xx, no answer).
        """
        if self._window_end == -math.inf:
            self._window_end = now + rtt
        self._rtts += rtt
        self._answers += 1
        # Limited by the limit, as RFC 7661 counts it: more than half of it in use. (A
        # full limit is seldom seen exactly: slots refill one worker at a time.)
        used = 2 * in_flight > self.value
        self._reached |= used
        self._pressure |= pressure
        if self.slow_start and not pressure and used:
            # One more for each answer while the limit is full: doubles every round trip,
            # as TCP's slow start does, without waiting for the window to end.
            self.limit = min(float(self.maximum), self.limit + 1)
        if now >= self._window_end:
            self._adjust(now)

    def _adjust(self, now: float) -> None:
        mean = self._rtts / self._answers
        baseline = self.baseline
        queueing = baseline is not None and mean > LATENCY_GROWTH * baseline + LATENCY_SLACK
        if self._pressure or queueing:
            self.limit = max(1.0, self.limit * CONCURRENCY_CUT)
            self.slow_start = False
        elif self._reached and not self.slow_start:
            self.limit = min(float(self.maximum), self.limit + 1)
        self._means.append(mean)
        # The next window lasts a round trip, so each change is seen before the next.
        self._window_end = now + mean
        self._rtts, self._answers = 0.0, 0
        self._reached = self._pressure = False
