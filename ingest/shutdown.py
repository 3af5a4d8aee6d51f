"""Shutdown: how a run winds down, on a stop request or on a failure.

Takes the caller's stop request (Ctrl-C, SIGTERM, or a library caller's
event); gives the run one ``event`` that every stage watches, set by that
request or by the first failure, and the grace a phase gets once it is set:
requests in flight finish, nothing new starts, and what is left is cancelled
after ``grace`` seconds. Blocking reads run in daemon threads that a stop can
abandon, so a stalled stdin never holds a run open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import anyio

from ingest.errors import IngestError

log = logging.getLogger("ingest")
T = TypeVar("T")


class Shutdown:
    """The stop and failure state of one run.

    shutdown = Shutdown(requested=stop)
    finished = await shutdown.guard(run_stages, grace=20.0)  # False: cut short
    chunk = await shutdown.race(source.read_chunk)           # None: a stop came first
    """

    def __init__(self, requested: anyio.Event) -> None:
        self.requested = requested
        # Set by the request or by a failure; the caller's event is never set by us.
        self.event = anyio.Event()
        self.failure: IngestError | None = None

    def fail(self, exc: IngestError) -> None:
        """Record the run's failure and wind down as for a stop: in-flight requests finish."""
        self.note(exc)
        self.event.set()

    def note(self, exc: IngestError) -> None:
        """Record a failure without stopping: what was read before it is still delivered."""
        if self.failure is None:
            self.failure = exc

    async def guard(self, work: Callable[[], Awaitable[None]], *, grace: float) -> bool:
        """Run ``work``; once a stop is asked for, give it ``grace`` seconds, then cancel it.

        Returns False when ``work`` was cut short.
        """
        cut = False
        async with anyio.create_task_group() as tg:

            async def forward() -> None:
                await self.requested.wait()
                self.event.set()

            async def watch() -> None:
                nonlocal cut
                await self.event.wait()
                if grace:
                    why = "after an error" if self.failure else "as asked"
                    log.warning(
                        "stopping %s: nothing new is sent; requests in flight get up to %.0fs",
                        why,
                        grace,
                    )
                    await anyio.sleep(grace)
                cut = True
                tg.cancel_scope.cancel()

            tg.start_soon(forward)
            tg.start_soon(watch)
            await work()
            tg.cancel_scope.cancel()
        return not cut

    async def race(self, work: Callable[[], T]) -> T | None:
        """Blocking ``work``'s result, or None if a stop comes first; its error is raised."""
        got: list[T] = []
        failed: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                try:
                    got.append(await in_daemon_thread(work))
                except Exception as exc:  # raised below, outside the group, so not wrapped
                    failed.append(exc)
                tg.cancel_scope.cancel()

            async def stop() -> None:
                await self.event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(run)
            tg.start_soon(stop)
        if failed:
            raise failed[0]
        return got[0] if got else None


async def in_daemon_thread(work: Callable[[], T]) -> T:
    """Run blocking ``work`` in a daemon thread.

    Unlike ``anyio.to_thread``'s workers, a daemon thread left blocked (a read
    from a stdin that never ends, abandoned on a stop) does not keep the
    process from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # abandoned: nobody waits any more
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="ingest-reader", daemon=True).start()
    return await future


def first_ingest_error(exc: BaseException) -> BaseException:
    """The error to report out of a task group's ``ExceptionGroup``: an IngestError first."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, IngestError):
                return leaf
        return leaves[0] if leaves else exc
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
