"""Fault settings for the fake server and the token bucket behind its rate limit.

`Faults` is mutable on purpose: a test can make the server slow, flaky or
stingy in the middle of a run and watch the client cope. `injected.py` applies
them; this module holds the settings, the dice and the token bucket.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final


@dataclass(slots=True)
class Faults:
    """What the fake server does wrong, read afresh on every request.

    >>> faults = Faults(fail_rate=0.1, rate_limit=50.0, seed=7)
    >>> faults.latency = 0.2  # takes effect on the next request
    """

    latency: float = 0.0
    """Seconds added to every /v2 request."""
    fail_rate: float = 0.0
    """Fraction of POST examples answered 503 before storing: safe to retry."""
    fail_after_commit_rate: float = 0.0
    """Fraction of POST examples answered 503 after storing: a retry duplicates."""
    rate_limit: float | None = None
    """Requests per second allowed over all /v2 requests; beyond it, 429."""
    rate_limit_mode: str = "bucket"
    """How `rate_limit` counts: "bucket", a token bucket of max(1, rate) tokens, or
    "window", at most max(1, floor(rate)) requests in each second of the server's
    monotonic clock (`floor(time.monotonic())`), as a fixed-window limiter does."""
    send_retry_after: bool = True
    """False: every 429 comes without a Retry-After, so the client must guess the wait."""
    retry_after: float | None = None
    """Retry-After sent with a 429; None means the time until a token frees."""
    accept_rows: int | None = None
    """Rows a dataset takes in all; a POST examples that would pass it gets 429 and stores
    nothing, so a benchmark can leave a run part done with no doubt about any batch."""
    max_body_bytes: int | None = None
    """Bodies larger than this get HTTP 500, as Arize does with large bodies."""
    refuse_field: str | None = None
    """Examples carrying this top-level field are refused with 422, as the real API
    refuses values the client cannot know are bad: a poison row for bisection."""
    drop_after_commit_rate: float = 0.0
    """Fraction of POST examples whose connection is closed, with no answer, after storing."""
    stall_after_commit_rate: float = 0.0
    """Fraction of POST examples that store, then wait `stall_seconds` before answering."""
    stall_after_commit_at: Collection[int] = ()
    """The commits with these numbers (1 = the first POST examples that stores) then stall."""
    stall_seconds: float = 60.0
    """How long a stall after a commit lasts; a server shutdown cuts it short (no answer)."""
    throttle_storm: float = 0.0
    """Seconds of a 429 storm, armed: it begins at the next POST examples and answers 429
    to every /v2 request until it ends. Starting it sets `throttle_until` and clears this."""
    throttle_until: float | None = None
    """`time.monotonic()` deadline of the running 429 storm."""
    retry_after_http_date: bool = False
    """Send each 429's Retry-After as an HTTP date (RFC 9110 IMF-fixdate), not seconds."""
    outage_seconds: float = 0.0
    """Seconds of an outage, armed: every /v2 request answers 503 (the data is kept). It
    begins at /v2 request number `outage_after_requests`, or at the next one when that is
    None. Starting it sets `outage_until` and clears this."""
    outage_after_requests: int | None = None
    """The /v2 request (counted from the server's start) at which the armed outage begins."""
    outage_until: float | None = None
    """`time.monotonic()` deadline of the running outage."""
    search_filters: bool = True
    """False: a search with a non-blank `filter` gets 400, as a server without filters."""
    seed: int | None = None
    """Seed for the coin flips behind the fail rates."""


class FaultDice:
    """Coin flips for the fail rates.

    The sequence restarts from the seed whenever `Faults.seed` changes or a
    new `Faults` object is installed, so a test that sets faults gets the
    same flips every time.
    """

    def __init__(self) -> None:
        self._faults: Faults | None = None
        self._seed: int | None = None
        self._rng = random.Random()

    def roll(self, faults: Faults, rate: float) -> bool:
        """Return True with probability `rate`."""
        if rate <= 0.0:
            return False
        if faults is not self._faults or faults.seed != self._seed:
            self._faults, self._seed = faults, faults.seed
            self._rng.seed(faults.seed)
        return self._rng.random() < rate


class TokenBucket:
    """A token bucket that holds at most `max(1, rate)` tokens.

    The rate is passed to every call rather than fixed at construction, because
    a test may change `Faults.rate_limit` while the server runs. The clock is
    injectable so tests of the bucket itself need not sleep.

    >>> bucket = TokenBucket(clock=lambda: 0.0)
    >>> bucket.take(1.0)
    0.0
    >>> bucket.take(1.0)  # empty: a token frees in one second
    1.0
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: float | None = None
        self._stamp = 0.0

    def take(self, rate: float) -> float:
        """Take a token; return 0.0 on success, else seconds until one frees."""
        now = self._clock()
        capacity = max(1.0, rate)
        if self._tokens is None:
            self._tokens = capacity
        else:
            self._tokens = min(capacity, self._tokens + (now - self._stamp) * rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate if rate > 0 else math.inf


class FixedWindow:
    """A fixed one-second window limiter: at most max(1, floor(rate)) takes per second.

    The windows are the whole seconds of the clock, so a client can be checked
    against them from outside; a burst straddling two windows gets up to twice the
    rate through in one second, as real fixed-window limiters allow.

    >>> window = FixedWindow(clock=lambda: 10.25)
    >>> window.take(1.0)
    0.0
    >>> window.take(1.0)  # full until the clock reaches 11
    0.75
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._second = -math.inf
        self._count = 0

    def take(self, rate: float) -> float:
        """Take a place in this second; return 0.0 on success, else seconds until the next."""
        now = self._clock()
        second = math.floor(now)
        if second != self._second:
            self._second, self._count = second, 0
        if self._count < max(1, math.floor(rate)):
            self._count += 1
            return 0.0
        return second + 1 - now


RATE_LIMIT_MODES: Final = ("bucket", "window")


def retry_after_header(faults: Faults, wait: float, *, now: float | None = None) -> str:
    """The Retry-After value: the configured one, else the wait rounded up (min 1).

    With `retry_after_http_date` it is the moment, `now` (wall-clock seconds) plus
    that, as an IMF-fixdate rounded up to the second, since a date has no fractions.

    >>> retry_after_header(Faults(retry_after_http_date=True), 1.5, now=0.0)
    'Thu, 01 Jan 1970 00:00:02 GMT'
    """
    if faults.retry_after is not None:
        seconds = faults.retry_after
        text = f"{seconds:g}"
    else:
        seconds = 60.0 if math.isinf(wait) else float(max(1, math.ceil(wait)))
        text = f"{seconds:.0f}"
    if not faults.retry_after_http_date:
        return text
    moment = math.ceil((time.time() if now is None else now) + seconds)
    return email.utils.format_datetime(datetime.fromtimestamp(moment, tz=UTC), usegmt=True)
