"""Clock: the one source of time for retries, pacing and the 429 pause.

Everything on the send path reads the time through ``Clock.now`` and waits
through ``Clock.sleep``, never ``time.monotonic`` or ``anyio.sleep`` directly,
so a test can hand in a clock of its own and step it (botocore's
``retries/bucket.py`` ``Clock`` has the same two methods). The default is the
event loop's own clock, the one ``anyio.sleep`` and its timeouts run on.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    """Reads the time (seconds, monotonic) and waits."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable, like ``anyio.sleep``)."""
        ...


class LoopClock:
    """The event loop's clock: ``time.monotonic`` (asyncio's loop time) and ``anyio.sleep``.

    clock = LoopClock()
    started = clock.now()
    await clock.sleep(0.5)
    """

    def now(self) -> float:
        """The loop's monotonic time (readable outside the loop too, as a counter may be)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``anyio.sleep``."""
        await anyio.sleep(seconds)


async def sleep_unless(clock: Clock, seconds: float, stop: anyio.Event) -> bool:
    """Sleep ``seconds`` on ``clock``, cut short by ``stop``; whether the stop came."""
    if stop.is_set():
        return True
    if seconds <= 0:
        await anyio.lowlevel.checkpoint()
        return stop.is_set()
    async with anyio.create_task_group() as tg:

        async def on_stop() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(on_stop)
        await clock.sleep(seconds)
        tg.cancel_scope.cancel()
    return stop.is_set()
