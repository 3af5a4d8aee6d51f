"""Sender: the pool of workers that POST batches, with the rate limit and retries.

Takes ``Batch`` es from a stream; gives out durable journal records: *sending*
before each POST, *done* with the ``example_ids`` after a 2xx, *unknown* when
an answer may hide a commit (5xx, timeout, dropped connection), and
*rejected* for a row the server refused. A refused batch (400/413/422) is
halved until the bad rows stand alone; the good rows are delivered.

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
    DatasetNotFoundError,
    DeliveryError,
    RetriesExhaustedError,
)
from ingest.report import RunStats
from ingest.retry import Action, PauseGate, RetryPolicy, classify, parse_retry_after
from ingest.source import Reject

log = logging.getLogger("ingest")


class _Abandoned(Exception):
    """A stop was asked for while a batch waited to be sent again: leave it."""


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

    async def deliver(self, batch: Batch, *, resends_unknown: bool = False) -> None:
        """Deliver one batch, halving it while the server refuses rows in it or its size.

        ``resends_unknown``: this batch sends again rows whose earlier outcome is unknown.
        """
        if self._stopping.is_set():
            raise _Abandoned  # not sent yet: the resumed run sends it
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
        reply = await self.post(batch, resends_unknown=resends_unknown)
        if classify(reply.status) is Action.DELIVERED:
            await self._done(batch, len(batch.rows), _example_ids(reply, len(batch.rows)))
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
            unknown = classify(reply.status) is Action.RETRY_UNKNOWN
            first, second = batch.split()
            await self.deliver(first, resends_unknown=unknown)
            await self.deliver(second)
        else:
            reject = Reject(
                batch.last_line,
                batch.starts[0],  # the row's own line, not the blank lines before it
                batch.end,
                f"refused by the server: {reply.problem()}",
                batch.rows[0],
            )
            await self._journal.reject(reject)
            await self._done(batch, 0, [])
            self._on_reject(reject.line, reject.reason)

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

    async def post(self, batch: Batch, *, resends_unknown: bool = False) -> Reply:
        """POST the batch until a 2xx or a refusal of its rows; raise when that cannot be."""
        body = batch.body()

        async def unknown(cause: str) -> None:
            await self._journal.write(
                {"t": "unknown", "seq": batch.seq, "part": batch.part, "cause": cause},
                durable=False,
            )

        return await self.call(
            lambda: self._append(body),
            batch.name,
            on_unknown=unknown,
            split_after_500s=2 if len(batch.rows) > 1 else None,
            resends_unknown=resends_unknown,
        )

    async def call(
        self,
        request: Callable[[], Awaitable[Reply]],
        what: str,
        *,
        on_unknown: Callable[[str], Awaitable[None]] | None = None,
        split_after_500s: int | None = None,
        resends_unknown: bool = False,
    ) -> Reply:
        """Make ``request`` until it answers 2xx or refuses the rows, within the retry bounds.

        With ``split_after_500s``, that many HTTP 500s in a row return the reply so the
        caller halves the batch: Arize answers 500 to bodies it finds too large.

        Raises ``AuthError``, ``DatasetNotFoundError`` or ``DeliveryError`` on a refusal
        retrying cannot fix, and ``RetriesExhaustedError`` when the bounds run out.
        """
        attempts = throttled = fives = 0
        started = self._clock()
        # Retries and resent unknown outcomes count once the request really goes out.
        owed_retry: str | None = None
        owed_unknown = resends_unknown
        while True:
            await self._ready()
            if owed_retry is not None:
                self._stats.retries[_bucket(owed_retry)] += 1
            self._stats.unknown_resent += owed_unknown
            owed_retry, owed_unknown = None, False
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
            if split_after_500s is not None and fives >= split_after_500s:
                assert reply is not None
                return reply
            if action is Action.RATE_LIMITED:
                throttled += 1
                after = parse_retry_after(reply.retry_after if reply else None)
                wait = after if after is not None else self._policy.backoff(throttled)
                self._gate.pause(wait)
            else:
                attempts += 1
                wait = self._policy.backoff(attempts)
            elapsed = self._clock() - started
            if self._policy.gives_up(attempts=attempts, elapsed=elapsed, wait=wait):
                raise RetriesExhaustedError(
                    f"{what} did not succeed after {attempts} attempts in {elapsed:.0f}s "
                    f"(last: {cause}, next wait {wait:.0f}s); re-run the same command to resume"
                )
            owed_retry, owed_unknown = cause, unknown
            log.debug("%s: %s; retrying in %.2fs", what, cause, wait)
            if action is not Action.RATE_LIMITED:
                await self._pause(wait)

    async def _ready(self) -> None:
        """Wait for the 429 pause to lift and for a slot from the rate limiter."""
        while True:
            while (left := self._gate.remaining) > 0:
                await self._pause(left)
            if self._limiter is not None:
                await self._limiter.acquire()
            # A 429 may have paused everyone while this worker queued for its slot.
            if self._gate.remaining == 0:
                return

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
        message = f"{self._describe(action, reply)} (during {what})"
        if action is Action.AUTH:
            return AuthError(message)
        if action is Action.NOT_FOUND:
            return DatasetNotFoundError(message)
        return DeliveryError(message)


def _bucket(cause: str) -> str:
    """Group causes for the summary: 429, 5xx, 408, timeout, connection."""
    if cause.startswith("HTTP 5"):
        return "5xx"
    if cause.startswith("HTTP "):
        return cause[5:]
    if cause == "timeout":
        return "timeout"
    return "connection"


def _example_ids(reply: Reply, rows: int) -> list[Any]:
    doc = reply.json()
    ids = doc.get("example_ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list):
        log.warning("a 2xx reply carried no example_ids; counting its %d rows delivered", rows)
        return []
    if len(ids) != rows:
        log.warning("a 2xx reply carried %d example_ids for %d rows", len(ids), rows)
    return ids
