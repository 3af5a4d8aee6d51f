"""RetryPolicy: what each answer from the API means, and how long to wait.

Takes an HTTP status (or a transport error); gives back an ``Action``. Waits
use exponential backoff with equal jitter (half the step fixed, half drawn at
random), or the server's ``Retry-After``. The fixed half is what makes the
budget ride out an outage in every draw: with the defaults (``base`` 0.5,
``cap`` 30, 10 attempts) the 9 waits add up to 75.5..151 s, so an API gone
for a minute (a deploy, a restart, 503 for everything) costs no run. Full
jitter could draw them all near 0 and give up after seconds.
The pause every worker shares after a 429 is the pacer's (``ingest.pacing``).

A throttled retry (429) never waits less than the floor ``throttle_floor``
(``base``, but at least ``MIN_THROTTLED_WAIT``), whatever ``Retry-After``
says: a ``Retry-After: 0`` honoured literally is a hot loop of hundreds of
requests a second. The fixed minimum is there because ``base`` is the user's
to set, and a tiny one (0.0001, fine for backoff after a 5xx) would bring the
hot loop back. After the shared pause lifts, each worker also waits its own
``jitter()`` (uniform in ``[0, throttle_floor)``), so the workers do not all
hit the server in the same instant.
"""

from __future__ import annotations

import dataclasses
import email.utils
import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

# Seconds: the longest one throttled wait lasts (a later 429 asks again). The
# server's own figure is kept for messages; only the wait is capped.
_MAX_RETRY_AFTER = 3600.0
# Seconds: the least a throttled retry waits, whatever ``backoff_base`` is set to.
MIN_THROTTLED_WAIT = 0.1
# The preflight's bounds for a host that cannot be reached at all (its name does not
# resolve, or nothing listens): a mistyped --base-url fails in seconds, not after the
# whole budget. The appends keep the full budget, so an API gone mid-run is ridden out.
UNREACHABLE_ATTEMPTS = 4
UNREACHABLE_SECONDS = 20.0


class Action(enum.Enum):
    """What to do with a batch after an answer."""

    DELIVERED = "delivered"
    RETRY = "retry"  # not committed: send again after a backoff
    RETRY_UNKNOWN = "retry-unknown"  # maybe committed: record it, then send again
    RATE_LIMITED = "rate-limited"  # 429: pause every worker, then send again
    SPLIT = "split"  # the server refused some row in it: halve to find which
    AUTH = "auth"
    NOT_FOUND = "not-found"
    FAIL = "fail"  # a refusal retrying cannot fix


# The 5xx that can be a row's own fault: the server's error answer to that
# request. A one-row batch that gets it on every attempt is rejected (see
# sender.py). 502/503/504 come from proxies and outages, 501/505/507/511 from
# the server or the path as a whole: those never reject a row, they end the run.
ROW_ERROR_STATUSES = frozenset({500})


def classify(status: int) -> Action:
    """The action an HTTP status calls for on an append."""
    if 200 <= status < 300:
        return Action.DELIVERED
    if status == 429:
        return Action.RATE_LIMITED
    if status in (408, 425):
        return Action.RETRY
    if status >= 500:
        # The server may have committed the rows before failing (ARIZE_API.md).
        return Action.RETRY_UNKNOWN
    if status in (400, 413, 422):
        return Action.SPLIT
    if status in (401, 403):
        return Action.AUTH
    if status == 404:
        return Action.NOT_FOUND
    return Action.FAIL


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), if valid.

    The server's figure, uncapped (``RetryPolicy.throttled`` caps the wait itself),
    so that a message can say what the server asked for.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Bounds and backoff for retrying one batch.

    policy = RetryPolicy(max_attempts=10, max_seconds=600)
    delay = policy.backoff(attempt=3)   # uniform in [step/2, step], step = min(cap, base * 2**3)
    pause = policy.throttled(1, 0.0)    # after a 429 with Retry-After: 0: base, not 0
    """

    max_attempts: int = 10
    max_seconds: float = 600.0
    base: float = 0.5
    cap: float = 30.0
    rng: Callable[[], float] = random.random

    def backoff(self, attempt: int) -> float:
        """Equal-jitter delay before retry number ``attempt`` (1 = first retry)."""
        step = self._step(attempt)
        return step / 2 + step / 2 * self.rng()

    def _step(self, attempt: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(attempt, 32))

    def least_ridden_out(self) -> float:
        """Seconds of failures every draw of the backoff waits out before the attempts run out.

        Bounded by ``max_seconds`` too. The appends and settling's searches follow the same
        policy, so this is how long an outage (every request failing) can last unnoticed.
        """
        waits = sum(self._step(a) / 2 for a in range(1, self.max_attempts))
        return min(waits, self.max_seconds)

    def throttled(self, attempt: int, retry_after: float | None) -> float:
        """The shared pause after 429 number ``attempt``: ``Retry-After`` or the backoff, floored.

        The floor is ``throttle_floor``: a server asking for no wait still gets one.
        A ``Retry-After`` over an hour is waited an hour, then the next 429 tells again.
        """
        wait = min(retry_after, _MAX_RETRY_AFTER) if retry_after is not None else None
        # Full jitter here: the shared pause holds every worker, no budget is at stake.
        full = self._step(attempt) * self.rng()
        return max(full if wait is None else wait, self.throttle_floor)

    @property
    def throttle_floor(self) -> float:
        """The least a throttled retry waits: ``base``, never under ``MIN_THROTTLED_WAIT``."""
        return max(self.base, MIN_THROTTLED_WAIT)

    def jitter(self) -> float:
        """A worker's own delay after a shared pause lifts, so workers do not stampede."""
        return self.throttle_floor * self.rng()

    def unreachable(self) -> RetryPolicy:
        """The bounds for connections that fail in a row, where they are bounded apart."""
        return dataclasses.replace(
            self,
            max_attempts=min(self.max_attempts, UNREACHABLE_ATTEMPTS),
            max_seconds=min(self.max_seconds, UNREACHABLE_SECONDS),
        )

    def gives_up(self, *, attempts: int, elapsed: float, wait: float) -> bool:
        """Whether another try, after ``wait`` more seconds, would break the bounds."""
        return attempts >= self.max_attempts or elapsed + wait > self.max_seconds
