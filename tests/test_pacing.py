"""The pacer and the caller on a scripted transport and a fake clock: decisions, not sleeps.

Every test here runs in virtual time (``fakeclock.FakeClock``): minutes of pacing
take milliseconds, and a loaded machine cannot change an answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from fakeclock import FakeClock
from ratesim import Limit

from ingest.caller import Abandoned, RetryingCaller
from ingest.client import Reply
from ingest.errors import RetriesExhaustedError
from ingest.pacing import AdaptivePacer, FixedPacer, Pacer, pacer_for
from ingest.report import RunStats
from ingest.retry import RetryPolicy

POLICY = RetryPolicy(max_attempts=5, max_seconds=600.0, base=0.5, cap=4.0, rng=lambda: 0.5)


def _caller(pacer: Pacer, stop: anyio.Event | None = None) -> RetryingCaller:
    return RetryingCaller(
        policy=POLICY,
        stats=RunStats(now=pacer.clock.now),
        describe=lambda action, reply: f"{action}: {reply.status}",
        pacer=pacer,
        stopping=stop,
    )


class Server:
    """A scripted transport: answers from ``respond(now)`` after ``rtt`` virtual seconds."""

    def __init__(
        self,
        clock: FakeClock,
        respond: Callable[[float], tuple[int, float | None]],
        rtt: float = 0.01,
    ) -> None:
        self.clock, self.respond, self.rtt = clock, respond, rtt
        self.sent: list[float] = []
        self.in_flight = self.most_in_flight = 0

    async def request(self) -> Reply:
        self.sent.append(self.clock.now())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        status, after = self.respond(self.clock.now())
        await self.clock.sleep(self.rtt)
        self.in_flight -= 1
        body = b'{"example_ids":["x"]}' if status < 300 else b'{"title":"no"}'
        return Reply(status, body, retry_after=None if after is None else f"{after:.3f}")


async def _run_workers(
    clock: FakeClock, pacer: Pacer, server: Server, seconds: float, **call: Any
) -> int:
    """Workers sending one request per slot until ``seconds`` of virtual time pass."""
    caller, done = _caller(pacer), [0]
    end = clock.now() + seconds

    async def worker() -> None:
        while clock.now() < end:
            async with pacer.slot() as slot:
                slot.hold(100)
                await caller.call(server.request, "a batch", **call)
                done[0] += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        async with anyio.create_task_group() as workers:
            for _ in range(pacer.workers):
                workers.start_soon(worker)
        tg.cancel_scope.cancel()
    return done[0]


async def _in_virtual_time(clock: FakeClock, work: Callable[[], Awaitable[Any]]) -> Any:
    """``work()`` with the clock's jumper running; its result, or its exception unwrapped."""
    result: list[Any] = []
    failure: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        try:
            result.append(await work())
        except Exception as exc:
            failure.append(exc)
        tg.cancel_scope.cancel()
    if failure:
        raise failure[0]
    return result[0]


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
async def test_a_retry_after_pauses_every_worker_together(adaptive: bool) -> None:
    """After a 429 with Retry-After: 2, no worker sends until the two seconds are over."""
    clock = FakeClock()
    start = clock.now()
    throttle_at = start + 1.0
    answered = [False]

    def respond(now: float) -> tuple[int, float | None]:
        if now >= throttle_at and not answered[0]:
            answered[0] = True
            return 429, 2.0
        return 200, None

    pacer = (
        AdaptivePacer(rate=0, concurrency=8, clock=clock)
        if adaptive
        else FixedPacer(rate=None, concurrency=8, policy=POLICY, clock=clock)
    )
    server = Server(clock, respond, rtt=0.05)
    await _run_workers(clock, pacer, server, 6.0)
    refused = next(t for t in server.sent if t >= throttle_at)
    paused_until = refused + server.rtt + 2.0
    assert not [t for t in server.sent if refused < t < paused_until]
    assert [t for t in server.sent if t >= paused_until], "sending resumed after the pause"


async def test_the_fixed_pacer_spreads_workers_after_a_pause() -> None:
    """Workers released by a shared pause each wait their own jitter, not one instant."""
    clock = FakeClock()
    once = [True]

    def respond(now: float) -> tuple[int, float | None]:
        if once[0]:
            once[0] = False
            return 429, 1.0
        return 200, None

    pacer = FixedPacer(rate=None, concurrency=4, policy=POLICY, clock=clock)
    await _run_workers(clock, pacer, Server(clock, respond), 3.0)
    jitters = [s for s in clock.sleeps if s == POLICY.jitter()]
    assert len(jitters) >= 3


async def test_backoff_after_5xx_follows_the_policy_then_gives_up() -> None:
    """A 502 every time: waits of the equal-jitter sequence, then RetriesExhaustedError."""
    clock = FakeClock()
    pacer = FixedPacer(rate=None, concurrency=1, policy=POLICY, clock=clock)
    caller = _caller(pacer)
    server = Server(clock, lambda now: (502, None))
    with pytest.raises(RetriesExhaustedError, match="5 attempts"):
        await _in_virtual_time(clock, lambda: caller.call(server.request, "batch 1"))
    waits = [s for s in clock.sleeps if s != server.rtt]
    assert waits == [POLICY.backoff(a) for a in range(1, 5)]
    assert len(server.sent) == 5


async def test_a_stop_abandons_a_request_waiting_for_its_retry() -> None:
    """A stop during the backoff after a 503 ends the call at once, with nothing resent."""
    clock = FakeClock()
    stop = anyio.Event()
    pacer = FixedPacer(rate=None, concurrency=1, policy=POLICY, clock=clock)
    caller = _caller(pacer, stop)

    def respond(now: float) -> tuple[int, float | None]:
        stop.set()  # asked while the first answer is on its way
        return 503, None

    server = Server(clock, respond)
    with pytest.raises(Abandoned):
        await _in_virtual_time(clock, lambda: caller.call(server.request, "batch 1"))
    assert len(server.sent) == 1


@pytest.mark.parametrize(("mode", "retry_after"), [("window", False), ("bucket", True)])
async def test_the_adaptive_pacer_finds_an_unknown_limit(mode: str, retry_after: bool) -> None:
    """Eight workers, no rate given, a server allowing 20 requests a second: the caller
    and pacer together sustain 0.9 of it with at most 5% of requests answered 429."""
    clock = FakeClock(start=0.0)
    limit = Limit(20.0, mode, retry_after)
    pacer = AdaptivePacer(rate=None, concurrency=8, clock=clock)
    await _run_workers(clock, pacer, Server(clock, limit.answer, rtt=0.02), 60.0)
    assert limit.sustained(15.0, 60.0) >= 0.9
    assert limit.refused_share() <= 0.05
    snap = pacer.snapshot()
    assert snap.rate_found and snap.rate is not None and 15 <= snap.rate <= 26


async def test_with_a_hard_rate_no_request_is_throttled_and_no_second_holds_more() -> None:
    """--rate 20 against a 20/s limit: no 429, at least 0.97 R, never 21 in a second."""
    clock = FakeClock(start=0.0)
    limit = Limit(20.0, "window", True)
    pacer = pacer_for(rate=20.0, concurrency="auto", policy=POLICY, clock=clock)
    server = Server(clock, limit.answer, rtt=0.02)
    await _run_workers(clock, pacer, server, 30.0)
    assert limit.refused == 0
    assert limit.sustained(1.0, 30.0) >= 0.97
    assert max(sum(s <= t < s + 1 for t in server.sent) for s in server.sent) <= 20


async def test_concurrency_grows_to_cover_latency_without_being_told() -> None:
    """150 ms a request, no limit: in flight grows from 1 to the maximum within seconds."""
    clock = FakeClock(start=0.0)
    pacer = AdaptivePacer(rate=0, concurrency=None, max_concurrency=128, clock=clock)
    server = Server(clock, lambda now: (200, None), rtt=0.15)
    done = await _run_workers(clock, pacer, server, 10.0)
    assert server.most_in_flight == 128
    assert done >= 0.8 * 128 * 10 / 0.15


async def test_bytes_in_flight_are_capped_whatever_the_concurrency() -> None:
    """Slots past the byte cap wait, though the concurrency would allow them."""
    clock = FakeClock(start=0.0)
    pacer = AdaptivePacer(rate=0, concurrency=64, clock=clock, max_bytes=1000)
    server = Server(clock, lambda now: (200, None), rtt=0.1)
    caller, most = _caller(pacer), [0]
    held = [0]

    async def worker() -> None:
        for _ in range(5):
            async with pacer.slot() as slot:
                slot.hold(300)
                held[0] += 300
                most[0] = max(most[0], held[0])
                await caller.call(server.request, "a batch")
                held[0] -= 300

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        async with anyio.create_task_group() as workers:
            for _ in range(pacer.workers):
                workers.start_soon(worker)
        tg.cancel_scope.cancel()
    assert most[0] <= 1000 + 300  # the cap, and the one batch taken while under it


def test_the_snapshot_names_the_pacing_state() -> None:
    """Progress reads rate, concurrency, in flight, 429s and whether each was found."""
    snap = pacer_for(rate="auto", concurrency="auto", policy=POLICY).snapshot()
    assert snap.rate is None and snap.concurrency == 1
    assert snap.rate_found and snap.concurrency_found
    fixed = pacer_for(rate=20.0, concurrency=8, policy=POLICY).snapshot()
    assert fixed.rate == 20.0 and fixed.concurrency == 8 and not fixed.rate_found


async def test_a_request_that_raises_is_no_longer_counted_in_flight() -> None:
    """A turn that ends in an exception instead of an answer leaves nothing in flight,
    so the concurrency's use is not overstated for the rest of the run."""
    clock = FakeClock()
    pacer = AdaptivePacer(rate=None, concurrency=None, clock=clock)
    caller = _caller(pacer)

    async def broken() -> Reply:
        raise RuntimeError("a bug below the caller")

    with pytest.raises(RuntimeError):
        await _in_virtual_time(clock, lambda: caller.call(broken, "batch 1"))
    assert pacer.snapshot().in_flight == 0


def test_the_progress_line_shows_the_pacing_state() -> None:
    """The live line names the rate and concurrency, whether found, and the 429s."""
    from ingest.pacing import PacerSnapshot
    from ingest.report import Progress

    snap = PacerSnapshot(
        rate=17.6,
        concurrency=8,
        in_flight=3,
        throttled=12,
        paused=0.0,
        rate_found=True,
        concurrency_found=True,
    )
    line = Progress(RunStats(), pacing=lambda: snap).line()
    assert "rate 17.6 req/s (auto), concurrency 8 (auto), 3 in flight, 12 throttled (429)" in line


def test_the_first_throttle_without_retry_after_holds_its_request_for_a_turn() -> None:
    """The 429 that first cuts the rate, with no Retry-After, is not resent at once: it
    waits a turn at the cut rate (a resend at once was a second 429 at a low limit)."""
    from ingest.pacing import Attempt

    pacer = AdaptivePacer(rate=None, concurrency=8, clock=FakeClock(start=0.0))
    for i in range(20):  # 20 accepted a second
        pacer._in_flight += 1
        pacer.record(Attempt(201, sent=i * 0.05, answered=i * 0.05 + 0.001))
    pacer._in_flight += 1
    wait = pacer.record(Attempt(429, sent=1.0, answered=1.001, throttled=1))
    snap = pacer.snapshot()
    assert snap.rate is not None and wait >= 0.5 / snap.rate
