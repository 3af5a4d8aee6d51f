"""Sender: the pool of workers that POST batches, with the rate limit and retries.

Takes ``Batch`` es from a stream; gives out durable journal records: *sending*
before each POST, *done* with the ``example_ids`` after a 2xx, *unknown* when
an answer may hide a commit (5xx, timeout, dropped connection; a 2xx that is
not the API's answer, which also stops the run), and
*rejected* for a row the server refused. A refused batch (400/413/422) is
halved until the bad rows stand alone; the good rows are delivered. A row
alone in its batch that gets HTTP 500 on every attempt is rejected too (the
server fails on that row: it must not block the run), unless rows keep
failing that way one after another with nothing delivered between: that is
a broken server, and the run stops for a resume.

Every worker shares one ``AsyncLimiter`` (the request rate) and one
``PauseGate`` (a 429 stops them all until ``Retry-After``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anyio
from aiolimiter import AsyncLimiter
from anyio.abc import ObjectReceiveStream

from ingest.batcher import Batch
from ingest.checkpoint import CheckpointJournal
from ingest.client import Reply
from ingest.errors import (
    AuthError,
    BaseUrlError,
    DatasetNotFoundError,
    DeliveryError,
    RetriesExhaustedError,
)
from ingest.replay import SERVER_ERROR_REASON
from ingest.report import RunStats
from ingest.retry import (
    ROW_ERROR_STATUSES,
    Action,
    PauseGate,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from ingest.source import Reject

log = logging.getLogger("ingest")

# Rows rejected for server errors with no delivery between them, at most. A row
# the server fails on is rare; a run of them is a server that fails on every row,
# and rejecting on would drain the whole input into the rejects file.
_SERVER_ERROR_REJECTS_IN_A_ROW = 3


class _Abandoned(Exception):
    """A stop was asked for while a batch waited to be sent again: leave it."""


class _ServerErrorEveryTime(Exception):
    """A one-row batch got a row error (HTTP 500) on every attempt its budget allowed."""

    def __init__(self, reply: Reply, attempts: int) -> None:
        super().__init__(reply.problem())
        self.reply = reply
        self.attempts = attempts


class Sender:
    """Delivers batches: one instance, ``concurrency`` tasks running ``work``.

    sender = Sender(append=client.append, journal=journal, stopping=stop, ...)
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(sender.work, batches.clone(), on_failure)
    """

    def __init__(
        self,
        *,
        append: Callable[[bytes], Awaitable[Reply]],
        journal: CheckpointJournal,
        policy: RetryPolicy,
        stats: RunStats,
        describe: Callable[[Action, Reply], str],
        on_reject: Callable[[int, str], None],
        limiter: AsyncLimiter | None = None,
        gate: PauseGate | None = None,
        stopping: anyio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        server_error_rejects: int = 0,
    ) -> None:
        self._append = append
        self._journal = journal
        self._policy = policy
        self._stats = stats
        self._describe = describe
        self._on_reject = on_reject
        self._limiter = limiter
        self._gate = gate or PauseGate(clock)
        self._stopping = stopping or anyio.Event()
        self._clock = clock
        # Since the last delivered batch, earlier runs included (the journal's count).
        self._server_error_rejects = server_error_rejects
        self._server_error_rejects_before = server_error_rejects
        self.resolved = 0  # batches taken from the stream and settled

    async def work(
        self, batches: ObjectReceiveStream[Batch], on_failure: Callable[[DeliveryError], None]
    ) -> None:
        """Deliver batches until the stream ends, a stop is asked for, or delivery fails.

        A failure is handed to ``on_failure`` (which asks every worker to stop)
        rather than raised, so the other workers' requests in flight can finish.
        On a stop, a batch waiting to be retried is left for the resumed run.
        """
        async with batches:
            async for batch in batches:
                try:
                    await self.deliver(batch)
                except _Abandoned:
                    return
                except DeliveryError as exc:
                    on_failure(exc)
                    return
                self.resolved += 1

    async def deliver(self, batch: Batch) -> None:
        """Deliver one batch, halving it while the server refuses rows in it or its size."""
        if self._stopping.is_set():
            raise _Abandoned  # not sent yet: the resumed run sends it
        try:
            reply = await self.post(batch)
            reason = f"refused by the server: {reply.problem()}"
        except _ServerErrorEveryTime as exc:
            reply, reason = exc.reply, self._server_error_reason(batch, exc)
        if classify(reply.status) is Action.DELIVERED:
            self._server_error_rejects = self._server_error_rejects_before = 0
            await self._done(batch, len(batch.rows), await self._example_ids(batch, reply))
            self._stats.rows_delivered += len(batch.rows)
            self._stats.batches += 1
        elif len(batch.rows) > 1:
            self._stats.retries["split"] += 1
            log.info("%s refused (%s); halving it", batch.name, reply.problem())
            # The whole stays in flight (a 500 may have committed it) until its halves
            # settle every line of it.
            await self._journal.write(
                {"t": "split", "seq": batch.seq, "part": batch.part}, durable=False
            )
            first, second = batch.split()
            await self.deliver(first)
            await self.deliver(second)
        else:
            reject = Reject(
                batch.last_line,
                batch.starts[0],  # the row's own line, not the blank lines before it
                batch.end,
                reason,
                batch.rows[0],
            )
            await self._journal.reject(reject)
            await self._done(batch, 0, [])
            self._on_reject(reject.line, reject.reason)

    def _server_error_reason(self, batch: Batch, exc: _ServerErrorEveryTime) -> str:
        """The reject reason for a row the server failed on; raises if that looks like an outage."""
        if self._server_error_rejects >= _SERVER_ERROR_REJECTS_IN_A_ROW:
            before = self._server_error_rejects_before
            runs = f" ({before} of them by earlier runs)" if before else ""
            raise RetriesExhaustedError(
                f"{batch.name}: {exc.reply.problem()} on every attempt, after "
                f"{self._server_error_rejects} rows in a row{runs} rejected the same way with "
                "nothing delivered between: the server looks broken rather than failing on "
                "those rows. "
                "Re-run the same command to resume once it is healthy (the rejected rows are in "
                "the rejects file)"
            )
        self._server_error_rejects += 1
        return (
            f"{SERVER_ERROR_REASON}{exc.reply.problem()}, on every one of {exc.attempts} attempts "
            "(the row may or may not be stored)"
        )

    async def _example_ids(self, batch: Batch, reply: Reply) -> list[Any]:
        """The ids a 2xx gave the rows, one per row; an answer of another shape stops the run.

        Such an answer is not the API's, yet something took the POST (a proxy may have
        passed it on and mangled the reply), so the rows may be stored: the batch is
        journaled as an unknown outcome, never as done, and a resumed run resends it.
        """
        doc = reply.json()
        ids = doc.get("example_ids") if isinstance(doc, dict) else None
        got = _ids_problem(ids, len(batch.rows)) if isinstance(doc, dict) else None
        if isinstance(ids, list) and got is None:
            return ids
        await self._journal.write(
            {
                "t": "unknown",
                "seq": batch.seq,
                "part": batch.part,
                "cause": f"HTTP {reply.status} with {got or 'a body that is not JSON'}",
            },
            durable=False,
        )
        raise BaseUrlError(
            f"{batch.name}: {reply.not_the_api('JSON with one example id per row', got)}. "
            "Whether its rows were stored is unknown: they are not counted as delivered, "
            "and re-running the same command sends them again (they may then be duplicated)"
        )

    async def _done(self, batch: Batch, rows: int, example_ids: list[Any]) -> None:
        await self._journal.write(
            {
                "t": "done",
                "seq": batch.seq,
                "part": batch.part,
                "lines": [batch.first_line, batch.last_line],
                "bytes": [batch.start, batch.end],
                "rows": rows,
                "example_ids": example_ids,
            },
            # Nothing waits on it; the next *sending* record's fsync carries it.
            durable=False,
        )

    async def post(self, batch: Batch) -> Reply:
        """POST the batch until a 2xx or a refusal of its rows; raise when that cannot be."""
        body = batch.body()

        async def sending() -> None:
            await self._journal.write(
                {
                    "t": "sending",
                    "seq": batch.seq,
                    "part": batch.part,
                    "lines": [batch.first_line, batch.last_line],
                    "bytes": [batch.start, batch.end],
                    "rows": len(batch.rows),
                }
            )

        async def unknown(cause: str) -> None:
            await self._journal.write(
                {"t": "unknown", "seq": batch.seq, "part": batch.part, "cause": cause},
                durable=False,
            )

        return await self.call(
            lambda: self._append(body),
            batch.name,
            on_first_send=sending,
            on_unknown=unknown,
            split_after_500s=2 if len(batch.rows) > 1 else None,
            reject_row_errors=len(batch.rows) == 1,
        )

    async def call(
        self,
        request: Callable[[], Awaitable[Reply]],
        what: str,
        *,
        on_first_send: Callable[[], Awaitable[None]] | None = None,
        on_unknown: Callable[[str], Awaitable[None]] | None = None,
        split_after_500s: int | None = None,
        reject_row_errors: bool = False,
    ) -> Reply:
        """Make ``request`` until it answers 2xx or refuses the rows, within the retry bounds.

        With ``split_after_500s``, that many HTTP 500s in a row return the reply so the
        caller halves the batch: Arize answers 500 to bodies it finds too large.
        ``on_first_send`` is awaited once, after the waits a stop cuts short and just
        before the first request: a batch journaled as sending is always sent, so a
        stop never leaves one in flight that was not.
        With ``reject_row_errors``, bounds that run out after a row error (HTTP 500)
        on every attempt raise ``_ServerErrorEveryTime``, so the caller rejects the row.

        Raises ``AuthError``, ``DatasetNotFoundError`` or ``DeliveryError`` on a refusal
        retrying cannot fix, and ``RetriesExhaustedError`` when the bounds run out.
        """
        attempts = throttled = fives = row_errors = 0
        last_row_error: Reply | None = None
        after: float | None = None  # what the last 429 asked for
        started = self._clock()
        # A retry counts once the request really goes out. (Resent unknown outcomes are
        # counted by the journal, which sees every run's.)
        owed_retry: str | None = None
        while True:
            await self._ready()
            if on_first_send is not None:
                await on_first_send()  # durable before the POST; no stop check after it
                on_first_send = None
            if owed_retry is not None:
                self._stats.retries[_bucket(owed_retry)] += 1
            owed_retry = None
            self._stats.requests += 1
            reply, action, cause = await self._attempt(request)
            if action in (Action.DELIVERED, Action.SPLIT):
                assert reply is not None
                return reply
            if action in (Action.AUTH, Action.NOT_FOUND, Action.FAIL):
                assert reply is not None
                raise self._fatal(action, reply, what)
            unknown = action is Action.RETRY_UNKNOWN and on_unknown is not None
            if unknown and on_unknown is not None:
                await on_unknown(cause)  # journaled whether or not the rows go again
            fives = fives + 1 if reply is not None and reply.status == 500 else 0
            if reply is not None and reply.status in ROW_ERROR_STATUSES:
                row_errors, last_row_error = row_errors + 1, reply
            if split_after_500s is not None and fives >= split_after_500s:
                assert reply is not None
                return reply
            if action is Action.RATE_LIMITED:
                throttled += 1
                after = parse_retry_after(reply.retry_after if reply else None)
                wait = self._policy.throttled(throttled, after)
                self._gate.pause(wait)
            else:
                attempts += 1
                wait = self._policy.backoff(attempts)
                after = None
            elapsed = self._clock() - started
            if self._policy.gives_up(attempts=attempts, elapsed=elapsed, wait=wait):
                # 429s are not attempts: a row error on each attempt is the row's doing.
                if reject_row_errors and last_row_error is not None and row_errors == attempts:
                    raise _ServerErrorEveryTime(last_row_error, attempts)
                raise RetriesExhaustedError(
                    self._exhausted(what, attempts, throttled, elapsed, cause, wait, after)
                )
            owed_retry = cause
            log.debug("%s: %s; retrying in %.2fs", what, cause, wait)
            if action is not Action.RATE_LIMITED:
                await self._pause(wait)

    def _exhausted(
        self,
        what: str,
        attempts: int,
        throttled: int,
        elapsed: float,
        cause: str,
        wait: float,
        asked: float | None,
    ) -> str:
        """Why retrying ``what`` stops, and what the user can do about it."""
        budget = self._policy.max_seconds
        if asked is not None and elapsed + wait > budget:
            # The server's own Retry-After is what outlasts the budget: say so, in its figure.
            left = max(budget - elapsed, 0.0)
            return (
                f"{what}: the server is throttling (HTTP 429) and asked to wait {_secs(asked)} "
                f"(Retry-After), more than the {_secs(left)} left of the {_secs(budget)} "
                "retry budget (max_retry_seconds): raise --max-retry-seconds, or re-run the same "
                "command later to resume"
            )
        tries = [f"{attempts} attempts"] if attempts else []
        tries += [f"{throttled} requests throttled (HTTP 429)"] if throttled else []
        return (
            f"{what} did not succeed after {' and '.join(tries)} in {elapsed:.0f}s "
            f"(last: {cause}, next wait {wait:.0f}s); re-run the same command to resume"
        )

    async def _ready(self) -> None:
        """Wait for the 429 pause to lift and for a slot from the rate limiter.

        Raises ``_Abandoned`` if a stop is asked for first: after a stop, no new
        request starts, even one whose wait was zero (a ``Retry-After: 0``).
        """
        while True:
            if (left := self._gate.remaining) > 0:
                await self._pause(left)
                # Every paused worker wakes at the same instant: spread them out.
                await self._pause(self._policy.jitter())
                continue
            if self._limiter is not None:
                await self._acquire(self._limiter)
            # A 429 may have paused everyone while this worker queued for its slot.
            if self._gate.remaining == 0:
                break
        if self._stopping.is_set():
            raise _Abandoned

    async def _acquire(self, limiter: AsyncLimiter) -> None:
        """A slot from the rate limiter, unless a stop comes first (a slot can be seconds away)."""
        async with anyio.create_task_group() as tg:

            async def on_stop() -> None:
                await self._stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_stop)
            await limiter.acquire()  # cancel-safe: aiolimiter drops a cancelled waiter
            tg.cancel_scope.cancel()
        if self._stopping.is_set():
            raise _Abandoned

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``; give up the batch at once if a stop is asked for meanwhile."""
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
        if self._stopping.is_set():
            raise _Abandoned

    async def _attempt(
        self, request: Callable[[], Awaitable[Reply]]
    ) -> tuple[Reply | None, Action, str]:
        """One request: its reply, what it calls for, and a cause for the logs."""
        try:
            reply = await request()
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise DeliveryError(
                f"TLS failed: {exc}; if a proxy or private CA sits in between, point "
                "SSL_CERT_FILE at its certificate"
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection was made, so nothing was sent: a plain retry.
            return None, Action.RETRY, f"connection failed ({exc.__class__.__name__})"
        except TimeoutError:
            return None, Action.RETRY_UNKNOWN, "timeout"
        except aiohttp.ClientError as exc:
            return None, Action.RETRY_UNKNOWN, f"connection lost ({exc.__class__.__name__})"
        action = classify(reply.status)
        return reply, action, f"HTTP {reply.status}"

    def _fatal(self, action: Action, reply: Reply, what: str) -> DeliveryError:
        if reply.redirected:
            return BaseUrlError(f"{what}: {reply.redirect()}")
        message = f"{self._describe(action, reply)} (during {what})"
        if action is Action.AUTH:
            return AuthError(message)
        if action is Action.NOT_FOUND:
            return DatasetNotFoundError(message)
        return DeliveryError(message)


def _is_id(value: Any) -> bool:
    """Whether ``value`` can be an example id: a non-empty string, or an integer (not a bool)."""
    if isinstance(value, str):
        return value != ""
    return isinstance(value, int) and not isinstance(value, bool)


def _ids_problem(ids: Any, rows: int) -> str | None:
    """What is wrong with the ``example_ids`` of a 2xx for ``rows`` rows, in words; None if fine.

    Only one distinct id per row proves the rows were stored: a null, an empty
    string or an object in their place, or one id given twice, is a reply that
    some other software made up, and counting it delivered would lose rows.
    """
    if ids is None:
        return "JSON without example_ids"
    if not isinstance(ids, list):
        kind = {str: "a string", dict: "an object", bool: "a boolean"}.get(type(ids), "a number")
        return f"JSON whose example_ids is {kind}, not a list"
    if len(ids) != rows:
        return f"{len(ids)} example_ids for {rows} rows"
    if bad := sum(not _is_id(i) for i in ids):
        return (
            f"JSON in which {bad} of {rows} example_ids are not ids "
            "(an id is a non-empty string or an integer)"
        )
    if len(set(ids)) != rows:
        return f"JSON whose example_ids repeat ({len(set(ids))} distinct for {rows} rows)"
    return None


def _secs(seconds: float) -> str:
    """A duration for a message: whole seconds, or tenths under ten."""
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"


def _bucket(cause: str) -> str:
    """Group causes for the summary: 429, 5xx, 408, timeout, connection."""
    if cause.startswith("HTTP 5"):
        return "5xx"
    if cause.startswith("HTTP "):
        return cause[5:]
    if cause == "timeout":
        return "timeout"
    return "connection"
