"""Settle: what happened to a batch whose request's outcome is unknown, and the repair.

Takes a batch that was sent without a trustworthy answer (a 5xx, a timeout, a
dropped connection, or one an earlier run left in flight); gives back nothing
but a dataset in which each of its rows is stored exactly once. It looks the
batch's keys up (``ingest.lookup``), deletes extra copies of a key (keeping the
earliest), journals the rows found stored as *present*, and hands only the
missing rows back to the sender. A batch is never simply sent again.

A look-up that misses rows looks again after ``settle_lag`` seconds (a commit
may take a moment to show in a search) before they are sent. After the run,
``finish`` looks again at every batch whose rows were sent after a look-up and
deletes any copy a late-showing commit left. Where the server refuses search
filters, batches wait (in memory, up to ``_PARKED_BYTES``) for ``finish``,
which reads the dataset once for all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ingest.batcher import Batch
from ingest.caller import RetryingCaller, UnknownOutcome
from ingest.checkpoint import CheckpointJournal
from ingest.errors import RetriesExhaustedError
from ingest.keys import RowKeys
from ingest.lookup import Found, Lookup
from ingest.records import Checked, Deleted, Present
from ingest.replay import merge_spans
from ingest.report import RunStats

log = logging.getLogger("ingest")

# Rows held for one read of the dataset, at most, where the server refuses filters.
_PARKED_BYTES = 64 << 20
_FINISH_ROUNDS = 8  # reads of the dataset at the end, at most, where filters are refused

Send = Callable[[Batch, "Tries"], Awaitable[None]]
Reject = Callable[[Batch, str, int], Awaitable[None]]


@dataclass(slots=True)
class Tries:
    """One batch's rounds of send, unknown outcome, look-up: bounded like retries."""

    started: float
    rounds: int = 0
    server_errors: int = 0  # rounds that ended in HTTP 500 (a row the server fails on?)
    cause: str = ""
    problem: str = ""
    status: int | None = None

    def after(self, outcome: UnknownOutcome) -> Tries:
        """These tries, with one more round ended by ``outcome``."""
        self.rounds += 1
        self.server_errors += outcome.status == 500
        self.cause, self.problem, self.status = outcome.cause, outcome.problem, outcome.status
        return self


@dataclass(slots=True)
class _Parked:
    batch: Batch
    tries: Tries


@dataclass(slots=True)
class Settler:
    """Settles the run's unknown outcomes; one per run, shared by the workers.

    settler = Settler(lookup=lookup, caller=caller, journal=journal, stats=stats, ...)
    await settler.settle(batch, tries)      # from a worker, after an unknown outcome
    await settler.finish()                  # after the input is sent
    """

    lookup: Lookup
    caller: RetryingCaller
    journal: CheckpointJournal
    stats: RunStats
    keys: Callable[[], RowKeys | None]  # the source knows them once it has read line 1
    lag: float
    maybe_present: list[tuple[int, int]] = field(default_factory=list)  # earlier runs' lines
    send: Send | None = None
    reject: Reject | None = None
    _parked: list[_Parked] = field(default_factory=list)
    _parked_bytes: int = 0
    _unsettled: int = 0  # parked batches not yet resolved (a failure halfway leaves them)
    _recheck: list[Batch] = field(default_factory=list)
    # Earlier runs' batches sent after a look-up, whose second look a stop or kill
    # prevented: (seq, part) -> lines. Looked at by their lines' key range.
    earlier_recheck: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    _last_sent: float = 0.0

    def left_unsettled(self, batch: Batch) -> bool:
        """Whether an earlier run may have stored some of ``batch``'s rows."""
        first, last = batch.first_line, batch.last_line
        return any(a <= last and first <= b for a, b in self.maybe_present)

    def stored(self, batch: Batch) -> None:
        """Note a batch the server confirmed stored: a check for range searches."""
        if batch.keys and self.lookup.wants_stored:  # only the first: no work per batch
            self.lookup.note_stored(batch.keys, *self._bounds(batch))

    def resent(self, batch: Batch) -> None:
        """Note rows sent after a look-up found them missing: ``finish`` looks once more."""
        self._recheck.append(batch)
        self._last_sent = anyio.current_time()

    async def settle(self, batch: Batch, tries: Tries) -> None:
        """Find which of ``batch``'s rows are stored; repair copies; send the missing ones."""
        found = await self._look(batch)
        if found is None:
            self._park(batch, tries)
            return
        await self._resolve(batch, found, tries)

    async def _look(self, batch: Batch) -> Found | None:
        lo, hi = self._bounds(batch)
        found = await self.lookup.keys(batch.keys, lo, hi)
        self.stats.lookups += 1
        if found is not None and len(found) < len(batch.keys) and self.lag > 0:
            # Not found may be "not visible yet": look again before sending a row twice.
            await self.caller.wait(self.lag)
            again = await self.lookup.keys(batch.keys, lo, hi)
            if again is not None:
                for key, ids in again.items():
                    if len(ids) > len(found.get(key, ())):
                        found[key] = ids
        return found

    def _bounds(self, batch: Batch) -> tuple[str, str]:
        if self.lookup.natural:
            return "", ""  # natural keys are looked up by equality, never as a range
        keys = self.keys()
        assert keys is not None  # a batch of keyed rows exists only once the keys do
        return keys.bounds(batch.first_line, batch.last_line)

    async def _resolve(self, batch: Batch, found: Found, tries: Tries) -> None:
        await self._drop_extras(batch, found)
        missing = [i for i, key in enumerate(batch.keys) if key not in found]
        present = len(batch.keys) - len(missing)
        if present:
            await self._present(batch, missing, present)
        if not missing:
            return
        if self._gives_up(tries):
            if len(batch.rows) == 1 and tries.server_errors == tries.rounds and self.reject:
                await self.reject(batch, tries.problem, tries.rounds)  # the row fails the server
                return
            raise RetriesExhaustedError(
                f"{batch.name}: {len(missing)} rows still not stored after {tries.rounds} "
                f"attempts whose outcome was unknown (last: {tries.cause}); none was sent "
                "twice. Re-run the same command to resume: it looks them up again"
            )
        await self.caller.wait(self.caller.policy.backoff(tries.rounds))
        rest = batch.only(missing, batch.part + "r")
        assert self.send is not None
        if tries.status == 500 and len(rest.rows) > 1:
            # Arize answers 500 to a body it finds too large: send the rows in halves.
            self.stats.retries["split"] += 1
            for half in rest.split():  # each half gets retries of its own, as a batch does
                await self.send(half, Tries(self.caller.now()))
        else:
            await self.send(rest, tries)

    def _gives_up(self, tries: Tries) -> bool:
        policy = self.caller.policy
        elapsed = self.caller.now() - tries.started
        return policy.gives_up(attempts=tries.rounds, elapsed=elapsed, wait=0.0)

    async def _drop_extras(self, batch: Batch, found: Found) -> None:
        mine = {key: found[key] for key in batch.keys if key in found}
        await self._delete_copies(batch.seq, batch.part, mine, batch.name)
        for key, ids in mine.items():
            found[key] = ids[:1]

    async def _delete_copies(self, seq: int, part: str, found: Found, name: str = "") -> None:
        """Delete every copy of a key in ``found`` but the earliest, and journal it."""
        extras = [i for ids in found.values() for i in ids[1:]]
        if not extras:
            return
        deleted = await self.lookup.delete(extras)
        self.stats.rows_deleted += deleted
        log.info("%s: deleted %d extra copies of its rows", name or f"batch {seq}", deleted)
        await self.journal.write(Deleted(seq, part, extras), durable=False)

    async def _present(self, batch: Batch, missing: list[int], present: int) -> None:
        """Journal the rows found stored, so no later run sends them again."""
        if not missing:
            spans = [[batch.first_line, batch.last_line, batch.start, batch.end]]
        else:
            gone = set(missing)
            spans = [
                [batch.lines[i], batch.lines[i], batch.starts[i], batch.ends[i]]
                for i in range(len(batch.rows))
                if i not in gone
            ]
        await self.journal.write(Present(batch.seq, batch.part, spans, present), durable=False)
        self.stats.rows_delivered += present
        self.stats.rows_present += present

    def _park(self, batch: Batch, tries: Tries) -> None:
        size = sum(map(len, batch.rows))
        if self._parked_bytes + size > _PARKED_BYTES:
            raise RetriesExhaustedError(
                f"{batch.name}: the server refuses search filters, and more than "
                f"{_PARKED_BYTES >> 20} MiB of rows with an unknown outcome wait for a read of "
                "the whole dataset; re-run the same command to resume: it settles them first"
            )
        self._parked.append(_Parked(batch, tries))
        self._parked_bytes += size
        self._unsettled += 1
        if tries.rounds:  # sent just now (not left by an earlier run): the read waits the lag
            self._last_sent = anyio.current_time()

    @property
    def settled(self) -> bool:
        """Whether no batch waits for a look-up, and no resent rows for their second look."""
        return self._unsettled == 0 and not self._recheck and not self.earlier_recheck

    async def finish(self) -> None:
        """Settle what waited for a read of the dataset; then look again where rows were resent."""
        for _ in range(_FINISH_ROUNDS):
            if not self._parked:
                break
            await self._lag_passed()
            parked, self._parked, self._parked_bytes = self._parked, [], 0
            found = await self._scan([p.batch for p in parked])
            for p in parked:
                mine = {k: found[k] for k in p.batch.keys if k in found}
                await self._resolve(p.batch, mine, p.tries)
                self._unsettled -= 1
        if self._parked:
            raise RetriesExhaustedError(
                f"{len(self._parked)} batches still have an unknown outcome after "
                f"{_FINISH_ROUNDS} reads of the dataset; re-run the same command to settle them"
            )
        await self._recheck_resent()
        await self._recheck_earlier()

    async def _recheck_resent(self) -> None:
        if not self._recheck:
            return
        await self._lag_passed()
        batches = self._recheck
        if self.lookup.mode == "scan":
            found = await self._scan(batches)
            for batch in batches:
                await self._drop_extras(batch, {k: found[k] for k in batch.keys if k in found})
        else:
            for batch in batches:
                lo, hi = self._bounds(batch)
                if (again := await self.lookup.keys(batch.keys, lo, hi)) is not None:
                    await self._drop_extras(batch, again)
        for batch in batches:
            await self.journal.write(Checked(batch.seq, batch.part), durable=False)
        self._recheck = []  # only once all are checked: a failure halfway is not settled

    async def _recheck_earlier(self) -> None:
        """Look again at rows earlier runs sent after a look-up, where they could not."""
        keys = self.keys()
        if not self.earlier_recheck or keys is None or self.lookup.natural:
            return  # natural keys are found by value only: `ingest verify` checks those
        spans = self.earlier_recheck
        by_range: dict[tuple[int, str], Found] = {}
        for name, (first, last) in spans.items():
            found = await self.lookup.in_range(*keys.bounds(first, last))
            if found is None:
                break
            by_range[name] = found
        if len(by_range) < len(spans):  # no range searches: one read of the dataset
            tag = keys.tag

            def wanted(key: str) -> bool:
                parts = keys.parse(key)
                return (
                    parts is not None
                    and parts.tag == tag
                    and any(a <= parts.line <= b for a, b in spans.values())
                )

            self.stats.lookups += 1
            every = await self.lookup.scan(wanted)
            for name, (first, last) in spans.items():
                by_range[name] = {
                    k: ids
                    for k, ids in every.items()
                    if (p := keys.parse(k)) is not None and first <= p.line <= last
                }
        for (seq, part), found in by_range.items():
            await self._delete_copies(seq, part, found)
            await self.journal.write(Checked(seq, part), durable=False)
        self.earlier_recheck = {}

    async def _lag_passed(self) -> None:
        left = self._last_sent + self.lag - anyio.current_time()
        if left > 0:
            await self.caller.wait(left)

    async def _scan(self, batches: list[Batch]) -> Found:
        """One read of the dataset for the keys of all of ``batches``."""
        wanted = {k for b in batches for k in b.keys}
        spans = merge_spans([(b.first_line, b.last_line) for b in batches])
        log.info(
            "reading the dataset once to settle %d batches (%d line ranges)",
            len(batches),
            len(spans),
        )
        self.stats.lookups += 1
        return await self.lookup.scan(wanted.__contains__)
