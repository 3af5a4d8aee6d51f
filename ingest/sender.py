"""Sender: the pool of workers that POST batches, with the rate limit and retries.

Takes ``Batch`` es from a stream; gives out durable journal records: *sending*
before each POST, *done* after a 2xx with one example id per row, *unknown* when
an answer may hide a commit (5xx, timeout, dropped connection; a 2xx that is
not the API's answer, which also stops the run), and
*rejected* for a row the server refused. A refused batch (400/413/422) is
halved until the bad rows stand alone; the good rows are delivered. A row
alone in its batch that gets HTTP 500 on every attempt is rejected too (the
server fails on that row: it must not block the run), unless rows keep
failing that way one after another with nothing delivered between: that is
a broken server, and the run stops for a resume.

Every request goes through the run's one ``RetryingCaller`` (``caller.py``):
the retries, the rate limit, the 429 pause and the stop are its business.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from ingest.batcher import Batch
from ingest.caller import (
    Abandoned,
    RetryingCaller,
    ServerErrorEveryTime,
    UnknownOutcome,
    retry_kind,
)
from ingest.checkpoint import CheckpointJournal
from ingest.client import Reply
from ingest.errors import (
    BaseUrlError,
    DeliveryError,
    RetriesExhaustedError,
)
from ingest.records import Done, Sending, Split, Unknown
from ingest.refusals import REFUSED_REASON, RefusalStreak
from ingest.replay import SERVER_ERROR_REASON
from ingest.report import RunStats
from ingest.retry import (
    Action,
    classify,
)
from ingest.rows import Reject
from ingest.settle import Settler, Tries

log = logging.getLogger("ingest")

# Rows rejected for server errors with no delivery between them, at most. A row
# the server fails on is rare; a run of them is a server that fails on every row,
# and rejecting on would drain the whole input into the rejects file.
_SERVER_ERROR_REJECTS_IN_A_ROW = 3


class Sender:
    """Delivers batches: one instance, up to ``pacer.workers`` tasks running ``work``.

    sender = Sender(append=client.append, journal=journal, caller=caller, ...)
    async with anyio.create_task_group() as tg:
        sender.start_workers(tg, batches, workers=caller.pacer.workers, on_failure=...)
    """

    def __init__(
        self,
        *,
        append: Callable[[bytes], Awaitable[Reply]],
        journal: CheckpointJournal,
        caller: RetryingCaller,
        stats: RunStats,
        on_reject: Callable[[int, str], None],
        server_error_rejects: int = 0,
        refused_before: tuple[str, int] = ("", 0),
        settler: Settler | None = None,
    ) -> None:
        self._append = append
        # With row keys, an unknown outcome is settled (looked up) instead of resent.
        self._settler = settler
        if settler is not None:
            settler.send, settler.reject = self._send, self._reject_server_error
        self._journal = journal
        self._caller = caller
        self._stats = stats
        self._on_reject = on_reject
        # Since the last delivered batch, earlier runs included (the journal's count).
        self._server_error_rejects = server_error_rejects
        self._server_error_rejects_before = server_error_rejects
        self._refusals = RefusalStreak()
        self._refusals.resume(*refused_before)  # rows refused alike by earlier runs, in a row
        self.resolved = 0  # batches taken from the stream and settled
        self._group: TaskGroup | None = None  # where start_workers starts them
        self._workers_left = 0  # workers start_workers may still start
        self.workers_started = 0

    def start_workers(
        self,
        group: TaskGroup,
        batches: MemoryObjectReceiveStream[Batch],
        *,
        workers: int,
        on_failure: Callable[[DeliveryError], None],
    ) -> None:
        """Start the tasks that deliver ``batches``: one now, ``workers`` at most.

        Each worker starts the next when it takes a batch, so there are as many as
        batches worked at once, plus one waiting for the next batch. That is all the
        pacer lets wait at a time anyway (its admission), so delivery is the same as
        with ``workers`` tasks started at once, but a small input starts one or two,
        not the 128 an adaptive run may reach (~25 ms of start-up on a 10-row file).
        """
        self._group, self._workers_left = group, workers
        self._start_worker(batches, on_failure)

    def _start_worker(
        self, batches: MemoryObjectReceiveStream[Batch], on_failure: Callable[[DeliveryError], None]
    ) -> None:
        if self._group is None or self._workers_left <= 0:
            return
        self._workers_left -= 1
        self.workers_started += 1
        # A clone of an open stream (the caller's, or the starting worker's own): the
        # stream never counts zero receivers while a worker is still to come.
        self._group.start_soon(self.work, batches.clone(), on_failure)

    async def work(
        self, batches: MemoryObjectReceiveStream[Batch], on_failure: Callable[[DeliveryError], None]
    ) -> None:
        """Deliver batches until the stream ends, a stop is asked for, or delivery fails.

        A failure is handed to ``on_failure`` (which asks every worker to stop)
        rather than raised, so the other workers' requests in flight can finish.
        On a stop, a batch waiting to be retried is left for the resumed run.
        """
        async with batches:
            while True:
                # The pacer's slot first, then the batch: a worker waiting for room holds none.
                async with self._caller.pacer.slot() as slot:
                    try:
                        batch = await batches.receive()
                    except anyio.EndOfStream:
                        return
                    slot.hold(batch.end - batch.start)
                    self._start_worker(batches, on_failure)  # the one to take the next batch
                    try:
                        await self.deliver(batch)
                    except Abandoned:
                        return
                    except DeliveryError as exc:
                        on_failure(exc)
                        return
                    # Not kept while waiting for the next slot: a worker idle at the
                    # limit held its last batch, up to 128 of them past the byte cap.
                    del batch
                self.resolved += 1

    async def deliver(self, batch: Batch) -> None:
        """Deliver one batch, halving it while the server refuses rows in it or its size."""
        if self._caller.stopping.is_set():
            raise Abandoned  # not sent yet: the resumed run sends it
        if self._settler is not None and self._settler.left_unsettled(batch):
            # An earlier run sent these lines and never learnt the outcome: look first.
            tries = Tries(self._caller.now(), cause="left in flight by an earlier run")
            await self._settler.settle(batch, tries)
        else:
            await self._send(batch, None)
        self._refusals.finished(batch.seq, len(batch.rows), batch.name)

    async def _send(self, batch: Batch, tries: Tries | None) -> None:
        """Send ``batch`` (``tries``: the rounds of settling behind it, if any)."""
        server_error: ServerErrorEveryTime | None = None
        try:
            reply = await self.post(batch)
        except ServerErrorEveryTime as exc:
            reply, server_error = exc.reply, exc
        except UnknownOutcome as exc:
            assert self._settler is not None
            self._stats.retries[retry_kind(exc.cause)] += 1  # settled, not blindly resent
            tries = tries or Tries(self._caller.now())
            await self._settler.settle(batch, tries.after(exc))
            return
        if classify(reply.status) is Action.DELIVERED:
            self._server_error_rejects = self._server_error_rejects_before = 0
            self._refusals.delivered()
            await self._check_example_ids(batch, reply)  # proof of storage; not journaled
            await self._done(batch, len(batch.rows), recheck=tries is not None)
            self._stats.rows_delivered += len(batch.rows)
            self._stats.batches += 1
            if self._settler is not None:
                if tries is not None:
                    self._settler.resent(batch)
                else:
                    self._settler.stored(batch)
        elif len(batch.rows) > 1:
            self._stats.retries["split"] += 1
            log.info("%s refused (%s); halving it", batch.name, reply.problem())
            # The whole stays in flight (a 500 may have committed it) until its halves
            # settle every line of it.
            await self._journal.write(Split(batch.seq, batch.part), durable=False)
            first, second = batch.split()
            await self._send(first, tries)
            await self._send(second, tries)
        else:
            # Made only for a reject: a 2xx's body need not be parsed for a refusal's text.
            if server_error is not None:
                problem = server_error.reply.problem()
                reason = self._server_error_reason(batch, problem, server_error.attempts)
            else:
                problem = reply.problem()
                reason = f"{REFUSED_REASON}{problem}"
                self._refusals.refused(batch.seq, problem)
            await self._reject(batch, reason)

    async def _reject(self, batch: Batch, reason: str) -> None:
        """Reject the one row of ``batch``: to the rejects file, and its lines are done."""
        raw = batch.rows[0]
        if batch.keys and self._settler is not None and (keys := self._settler.keys()):
            raw = keys.unspliced(raw, batch.keys[0])  # the rejects file holds the line as written
        reject = Reject(
            batch.lines[0],
            batch.starts[0],  # the row's own line, not the blank lines before it
            batch.ends[0],
            reason,
            raw,
        )
        await self._journal.reject(reject)
        await self._done(batch, 0)
        self._on_reject(reject.line, reject.reason)

    async def _reject_server_error(self, batch: Batch, problem: str, attempts: int) -> None:
        """Reject a row the server failed on every time (looked up: it is not stored)."""
        await self._reject(batch, self._server_error_reason(batch, problem, attempts))

    def _server_error_reason(self, batch: Batch, problem: str, attempts: int) -> str:
        """The reject reason for a row the server failed on; raises if that looks like an outage."""
        if self._server_error_rejects >= _SERVER_ERROR_REJECTS_IN_A_ROW:
            before = self._server_error_rejects_before
            runs = f" ({before} of them by earlier runs)" if before else ""
            raise RetriesExhaustedError(
                f"{batch.name}: {problem} on every attempt, after "
                f"{self._server_error_rejects} rows in a row{runs} rejected the same way with "
                "nothing delivered between: the server looks broken rather than failing on "
                "those rows. "
                "Re-run the same command to resume once it is healthy (the rejected rows are in "
                "the rejects file)"
            )
        self._server_error_rejects += 1
        stored = "it is not stored" if self._settler else "the row may or may not be stored"
        return f"{SERVER_ERROR_REASON}{problem}, on every one of {attempts} attempts ({stored})"

    async def _check_example_ids(self, batch: Batch, reply: Reply) -> None:
        """Check a 2xx gave the rows one id each; an answer of another shape stops the run.

        Such an answer is not the API's, yet something took the POST (a proxy may have
        passed it on and mangled the reply), so the rows may be stored: the batch is
        journaled as an unknown outcome, never as done, and a resumed run resends it.
        """
        doc = reply.json()
        ids = doc.get("example_ids") if isinstance(doc, dict) else None
        got = _ids_problem(ids, len(batch.rows)) if isinstance(doc, dict) else None
        if isinstance(ids, list) and got is None:
            return
        await self._unknown(batch, f"HTTP {reply.status} with {got or 'a body that is not JSON'}")
        raise BaseUrlError(
            f"{batch.name}: {reply.not_the_api('JSON with one example id per row', got)}. "
            "Whether its rows were stored is unknown: they are not counted as delivered, "
            + (
                "and re-running the same command looks them up before sending what is missing"
                if self._settler is not None
                else "and re-running the same command sends them again (they may then be "
                "duplicated)"
            )
        )

    async def _unknown(self, batch: Batch, cause: str) -> None:
        """Journal that ``batch`` may have been stored (an answer that hides the outcome)."""
        await self._journal.write(Unknown(batch.seq, batch.part, cause), durable=False)

    async def _done(self, batch: Batch, rows: int, *, recheck: bool = False) -> None:
        # Nothing waits on it; the next *sending* record's fsync carries it.
        await self._journal.write(Done.of(batch, rows, recheck), durable=False)

    async def post(self, batch: Batch) -> Reply:
        """POST the batch until a 2xx or a refusal of its rows; raise when that cannot be."""
        body = batch.body()

        async def sending() -> None:
            await self._journal.write(Sending.of(batch))

        return await self._caller.call(
            lambda: self._append(body),
            batch.name,
            on_first_send=sending,
            on_unknown=lambda cause: self._unknown(batch, cause),
            split_after_500s=2 if len(batch.rows) > 1 else None,
            reject_row_errors=len(batch.rows) == 1,
            settle_unknown=self._settler is not None,
        )


_ID_TYPES = {str, int}  # bool is not one: type(), not isinstance()


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
    if (
        type(ids) is list
        and len(ids) == rows
        and set(map(type, ids)) <= _ID_TYPES
        and "" not in (seen := set(ids))
        and len(seen) == rows
    ):
        return None  # the common answer, checked in C: Python per id costs 1 µs a row
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
    if (distinct := len(set(ids))) != rows:
        return f"JSON whose example_ids repeat ({distinct} distinct for {rows} rows)"
    return None
