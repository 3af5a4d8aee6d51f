"""A clock for tests: virtual time that jumps ahead whenever every task waits.

clock = FakeClock()
async with anyio.create_task_group() as tg:
    tg.start_soon(clock.run)      # the jumper
    ...                           # code under test sleeps on clock.sleep
    tg.cancel_scope.cancel()

Like trio's ``MockClock(autojump_threshold=0)``: nothing sleeps for real, so a
test of minutes of pacing runs in milliseconds and gives the same answer on a
loaded machine. ``sleeps`` records every wait asked for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

import anyio


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, anyio.Event, list[bool]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        event, live = anyio.Event(), [True]
        heapq.heappush(self._heap, (self.t + max(seconds, 0.0), next(self._seq), event, live))
        try:
            await event.wait()
        finally:
            live[0] = False  # a cancelled sleep no longer moves the time

    async def run(self) -> None:
        """Jump to the next wake-up each time every other task is blocked; until cancelled."""
        me = asyncio.current_task()
        while True:
            await anyio.lowlevel.checkpoint()
            if not _all_blocked(me):
                continue
            while self._heap and not self._heap[0][3][0]:
                heapq.heappop(self._heap)
            if not self._heap:
                continue
            when, _, event, _live = heapq.heappop(self._heap)
            self.t = max(self.t, when)
            event.set()


def _all_blocked(me: asyncio.Task[object] | None) -> bool:
    for task in asyncio.all_tasks():
        if task is me or task.done():
            continue
        waiter = task._fut_waiter  # type: ignore[attr-defined]
        if waiter is None or waiter.done():
            return False
    return True
