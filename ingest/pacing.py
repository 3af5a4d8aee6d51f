"""Pacer: when each request may go, and how many batches are worked at once.

Takes each attempt's outcome (``Attempt``: status, round trip, ``Retry-After``)
from the ``RetryingCaller``; gives out turns to send (``turn``), slots to work a
batch in (``slot``, which also caps the bytes held in flight), and a read-only
``snapshot`` of its state for progress lines and ``-v`` logs.

Two implementations, one per behaviour (the math is in ``ingest.adaptive``):

- ``FixedPacer``: a fixed number of workers and an optional hard rate; a 429
  pauses every worker for ``Retry-After`` or a backoff, floored, then each waits
  a jitter of its own. What ``--rate R --concurrency N`` ask for.
- ``AdaptivePacer``: the default. The rate is found from throttles (CUBIC) unless
  ``--rate`` fixes it; requests in flight follow the latency (AIMD) unless
  ``--concurrency`` fixes them. A ``Retry-After`` pauses every worker together
  for just what it asks: the even spacing of the adaptive rate, not a floor, is
  what keeps a ``Retry-After: 0`` from turning into a hot loop.

aiolimiter is gone: its rate is fixed when it is built and it has no pause, and
both the adaptive rate and the shared pause need exactly those.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import anyio

from ingest.adaptive import AdaptiveConcurrency, AdaptiveRate, Spacing
from ingest.clock import Clock, LoopClock, sleep_unless
from ingest.retry import RetryPolicy

log = logging.getLogger("ingest")

# The longest shared pause one Retry-After asks for (a later 429 asks again).
_MAX_PAUSE = 3600.0
# Requests in flight the adaptive concurrency may reach (and the workers started).
MAX_AUTO_CONCURRENCY = 128
# Bytes of batches in flight, at most (but one batch, however big): memory stays
# bounded whatever the concurrency reaches.
MAX_BYTES_IN_FLIGHT = 16 << 20


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request's outcome, as pacing sees it."""

    status: int | None  # None: no answer (a timeout, a dropped connection)
    sent: float  # the clock's time when it went
    answered: float
    retry_after: float | None = None  # seconds the server asked to wait, if it said
    throttled: int = 0  # 429s in a row for this request, this one included

    @property
    def rtt(self) -> float:
        """Seconds from sending to the answer."""
        return self.answered - self.sent


class PacerSnapshot(NamedTuple):
    """The pacing state at one moment."""

    rate: float | None  # requests/s allowed now; None: no cap
    concurrency: int  # batches allowed in flight
    in_flight: int  # requests sent and not answered yet
    throttled: int  # 429s answered so far
    paused: float  # seconds left of a pause every worker honours
    rate_found: bool  # the rate is found from throttles, not set
    concurrency_found: bool  # the concurrency follows the latency, not set


class Pacer(Protocol):
    """What the sender and the caller need of pacing."""

    workers: int  # the tasks to start: the most batches ever worked at once
    clock: Clock

    def slot(self) -> AbstractAsyncContextManager[Slot]:
        """Room to work one batch (see ``_Pacer.slot``)."""
        ...

    async def turn(self, stop: anyio.Event) -> float | None:
        """Wait for a request's turn; the turn's time, or None on a stop."""
        ...

    def went(self, turn: float, at: float) -> None:
        """The request of the turn taken at ``turn`` went at ``at``; due once per turn."""
        ...

    def record(self, attempt: Attempt) -> float:
        """An attempt ended; seconds before it may go again if throttled."""
        ...

    def forfeit(self) -> None:
        """A turn ended with no outcome (an error before or instead of an answer)."""
        ...

    def snapshot(self) -> PacerSnapshot:
        """The state now."""
        ...


def pacer_for(
    *,
    rate: float | str | None,
    concurrency: int | str,
    policy: RetryPolicy,
    clock: Clock | None = None,
) -> Pacer:
    """The pacer a run's settings ask for: ``"auto"`` for either makes it adaptive."""
    if rate == "auto" or concurrency == "auto":
        return AdaptivePacer(
            rate=None if rate == "auto" else float(rate or 0),
            concurrency=None if concurrency == "auto" else int(concurrency),
            clock=clock,
        )
    return FixedPacer(
        rate=float(rate or 0) or None,
        concurrency=int(concurrency),
        policy=policy,
        clock=clock,
        max_bytes=MAX_BYTES_IN_FLIGHT,
    )


class Slot:
    """Room to work one batch: taken before the batch is, so batches held stay bounded."""

    def __init__(self, pacer: _Pacer) -> None:
        self._pacer = pacer
        self.nbytes = 0
        self.locked = True

    def hold(self, nbytes: int) -> None:
        """The batch taken is ``nbytes`` long; the next worker may now look for room."""
        self.nbytes = nbytes
        self._pacer._bytes += nbytes
        self._pacer._release_admission(self)


class _Pacer:
    """What both pacers share: slots, turns, the shared pause and the counters."""

    def __init__(self, *, workers: int, clock: Clock | None, max_bytes: int) -> None:
        self.workers = workers  # tasks the sender starts: the most batches ever in flight
        self.clock = clock or LoopClock()
        self._max_bytes = max_bytes
        self._spacing: Spacing | None = None
        self._until = -math.inf  # the shared pause lasts until then
        self._held = 0
        self._bytes = 0
        self._in_flight = 0
        self.throttled = 0
        self._admission = anyio.Lock()
        self._room = anyio.Event()

    def limit(self) -> int:
        """Batches allowed in flight now."""
        return self.workers

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Room for one batch: within the limit, and under the bytes in flight (but one).

        One worker at a time waits for room and takes its batch (then ``Slot.hold``),
        so at most one batch is held that the byte cap has not counted.
        """
        await self._admission.acquire()
        slot = Slot(self)
        try:
            while self._held >= self.limit() or (self._held and self._bytes >= self._max_bytes):
                self._room = anyio.Event() if self._room.is_set() else self._room
                await self._room.wait()
            self._held += 1
            try:
                yield slot
            finally:
                self._held -= 1
                self._bytes -= slot.nbytes
                self._wake()
        finally:
            self._release_admission(slot)

    def _release_admission(self, slot: Slot) -> None:
        if slot.locked:
            slot.locked = False
            self._admission.release()

    def _wake(self) -> None:
        self._room.set()

    async def turn(self, stop: anyio.Event) -> float | None:
        """Wait for the pause to lift and for this request's turn; its send time.

        None if ``stop`` is set first: after a stop no request starts.
        """
        while True:
            now = self.clock.now()
            if (paused := self._until - now) > 0:
                if await sleep_unless(self.clock, paused, stop) or await self._after_pause(stop):
                    return None
                continue
            if self._spacing is not None and (wait := self._spacing.delay(now)) > 0:
                if await sleep_unless(self.clock, wait, stop):
                    return None
                continue
            break
        if stop.is_set():
            return None
        if self._spacing is not None:
            self._spacing.taken(now)
        self._in_flight += 1
        self._sent(now)
        return now

    def went(self, turn: float, at: float) -> None:
        """The request of the turn taken at ``turn`` went at ``at``: a hard cap counts it
        from then (a journal fsync may come between). Due once for each turn, also when
        the request never went (then ``at`` is when that was known)."""
        if self._spacing is not None:
            self._spacing.went(turn, at)

    async def _after_pause(self, stop: anyio.Event) -> bool:
        """What a worker does once a shared pause ends; whether ``stop`` came meanwhile."""
        return False

    def _sent(self, now: float) -> None:
        """A request is going at ``now``."""

    def record(self, attempt: Attempt) -> float:
        """An attempt ended; seconds before that request may go again if it was throttled."""
        self._in_flight -= 1
        if attempt.status == 429:
            self.throttled += 1
        return self._recorded(attempt)

    def _recorded(self, attempt: Attempt) -> float:
        raise NotImplementedError

    def forfeit(self) -> None:
        """A turn ended with no outcome: it is no longer in flight, and teaches nothing."""
        self._in_flight -= 1

    def pause(self, seconds: float) -> None:
        """Hold every request for ``seconds`` from now (an earlier end never shortens it)."""
        self._until = max(self._until, self.clock.now() + seconds)

    @property
    def paused(self) -> float:
        """Seconds until requests may go again."""
        return max(self._until - self.clock.now(), 0.0)

    def snapshot(self) -> PacerSnapshot:
        """The state now, for progress lines and logs."""
        return PacerSnapshot(
            rate=self._spacing.rate if self._spacing is not None else None,
            concurrency=self.limit(),
            in_flight=self._in_flight,
            throttled=self.throttled,
            paused=self.paused,
            rate_found=self._found()[0],
            concurrency_found=self._found()[1],
        )

    def _found(self) -> tuple[bool, bool]:
        return False, False


class FixedPacer(_Pacer):
    """Fixed workers and an optional hard rate; a 429 pauses everyone, backing off.

    pacer = FixedPacer(rate=20.0, concurrency=8)
    async with pacer.slot() as slot: ...
    """

    def __init__(
        self,
        *,
        rate: float | None,
        concurrency: int,
        policy: RetryPolicy | None = None,
        clock: Clock | None = None,
        max_bytes: int = 1 << 62,
    ) -> None:
        super().__init__(workers=concurrency, clock=clock, max_bytes=max_bytes)
        self._policy = policy or RetryPolicy()
        self._spacing = Spacing(rate, hard=True) if rate else None

    async def _after_pause(self, stop: anyio.Event) -> bool:
        # Every paused worker wakes at the same instant: spread them out.
        return await sleep_unless(self.clock, self._policy.jitter(), stop)

    def _recorded(self, attempt: Attempt) -> float:
        if attempt.status != 429:
            return 0.0
        wait = self._policy.throttled(max(attempt.throttled, 1), attempt.retry_after)
        self.pause(wait)
        return wait


class AdaptivePacer(_Pacer):
    """The rate found from throttles and the concurrency from latency, unless fixed.

    pacer = AdaptivePacer(rate=None, concurrency=None, max_concurrency=128)
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        concurrency: int | None = None,
        max_concurrency: int = MAX_AUTO_CONCURRENCY,
        clock: Clock | None = None,
        max_bytes: int = MAX_BYTES_IN_FLIGHT,
    ) -> None:
        """``rate``: a hard cap, 0 for none, None to find it; ``concurrency``: fixed, or None."""
        super().__init__(workers=concurrency or max_concurrency, clock=clock, max_bytes=max_bytes)
        self._rate = AdaptiveRate() if rate is None else None
        if rate:
            self._spacing = Spacing(rate, hard=True)
        self._concurrency = AdaptiveConcurrency(max_concurrency) if concurrency is None else None

    def _found(self) -> tuple[bool, bool]:
        return self._rate is not None, self._concurrency is not None

    def limit(self) -> int:
        return self._concurrency.value if self._concurrency is not None else self.workers

    def _sent(self, now: float) -> None:
        if self._rate is not None:
            self._rate.sent(now)

    def _recorded(self, attempt: Attempt) -> float:
        status, now = attempt.status, attempt.answered
        wait = 0.0
        if attempt.retry_after is not None and status in (429, 503):
            wait = min(attempt.retry_after, _MAX_PAUSE)
            self.pause(wait)
        throttle = status == 429 or (status == 503 and attempt.retry_after is not None)
        if self._rate is not None:
            if throttle:
                if self._rate.throttled(now, sent=attempt.sent):
                    assert self._rate.rate is not None
                    if self._spacing is None:
                        # As if a request went now: the throttled ones wait their turn
                        # at the cut rate, not resend at once (no Retry-After to wait).
                        self._spacing = Spacing(self._rate.rate)
                        self._spacing.sent(now)
                    log.debug(
                        "pacing: HTTP %s; rate cut to %.1f req/s (%.1f accepted a second)",
                        status,
                        self._rate.rate,
                        self._rate.accepted(now),
                    )
            else:
                self._rate.succeeded(now)
            if self._spacing is not None and self._rate.rate is not None:
                self._spacing.rate = self._rate.rate
        if self._concurrency is not None:
            before = self._concurrency.value
            pressure = status is None or status == 429 or status >= 500
            self._concurrency.answered(
                now, rtt=attempt.rtt, in_flight=self._in_flight + 1, pressure=pressure
            )
            if self._concurrency.value > before:
                self._wake()
            elif self._concurrency.value < before:
                log.debug(
                    "pacing: concurrency cut to %d (%s)",
                    self._concurrency.value,
                    "back pressure" if pressure else "the round trip grew",
                )
        if throttle and wait == 0.0 and self._spacing is not None:
            wait = self._spacing.delay(now)
        return wait
