"""Checkpoint: the write-ahead journal that makes a run resumable.

Takes records of what the sender is about to do and has done (the types of
``ingest.records``, which hold the schema); gives back, when a run starts, what
is already done. One JSON object per line:

    {"t": "header", "v": 3, "fingerprint": {...}}     what run this journal belongs to
    {"t": "identity", "input": {...}}   the input's full identity, after a version-1 header
    {"t": "start", "keys": "ingest_key", "resent_in_flight": [[seq, part, a, b], ...], ...}
                                        each run's start; keys: the key field, null: --no-key
    {"t": "rejected", "line": 7, "bytes": [s, e], "reason": "..."}
    {"t": "sending", "seq": 3, "part": "", "lines": [a, b], "bytes": [s, e], "rows": n}
    {"t": "split", "seq": 3, "part": ""}          refused whole; its halves ("0", "1") follow
    {"t": "unknown", "seq": 3, "part": "", "cause": "HTTP 503"}   maybe committed
    {"t": "present", "seq": 3, "part": "", "spans": [[a, b, s, e], ...], "rows": n}
    {"t": "deleted", "seq": 3, "part": "", "ids": [...]}   extra copies settling deleted
    {"t": "done", "seq": 3, "part": "", "lines": [a, b], "bytes": [s, e], "rows": n}
                                        stored (its ids are checked, not kept: a row costs
                                        the journal under a byte; older journals,
                                        which kept them, still replay)
    {"t": "finished", "exit_code": 0, "delivered": n, "rejected": m}

A *sending* record is durable before its POST starts; a *done* record is
written after the 2xx. After a crash, a *sending* record whose lines are not
all done or rejected names a batch that was in flight (and may have been
committed); it stays named until a later run settles those lines. Writes are
group-committed by one task, so many workers share one fsync; a *done* waits
for the next durable record's (or ``LAZY_COMMIT_SECONDS``). The task commits
in the event loop while the disk is fast (a local disk's fsync is a fraction
of a millisecond, less than a thread's hand-off costs), and in a worker thread
from the first commit slower than ``INLINE_COMMIT_SECONDS`` on, so the loop
never waits on a slow disk. A torn last line (a crash mid-write) is dropped.

The header's fingerprint (``ingest.identity``) names the input by content, not
by path, and the dataset and version it goes to; ``ingest.replay`` reads a
journal back.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from ingest.errors import CheckpointError, RejectsFileError
from ingest.identity import fingerprint as fingerprint
from ingest.identity import grew, is_v1_identity, mismatch
from ingest.records import Record
from ingest.rejects import FILE_MODE, RejectsFile, backup_path, set_aside
from ingest.replay import JOURNAL_VERSION as JOURNAL_VERSION
from ingest.replay import JournalState as JournalState
from ingest.replay import LineRanges as LineRanges
from ingest.replay import ResendTally, parse_journal
from ingest.replay import read_journal as read_journal
from ingest.rows import Reject

log = logging.getLogger("ingest")
# The longest a record nothing waits on (a *done*, a reject) waits for a durable one to
# share its fsync: a crash within it costs a look-up of the batch, never a row.
LAZY_COMMIT_SECONDS = 0.2
# A commit (write and fsync) that takes longer than this moves the rest of the run's
# commits to a worker thread: the event loop waits on a fast disk, never on a slow one.
INLINE_COMMIT_SECONDS = 0.002

_Pending = tuple[str | None, tuple[int, int] | None, bytes]  # kind, lines, the record


class CheckpointJournal:
    """The journal of one run: open it, run its writer task, write records, close it.

    journal, state = CheckpointJournal.open(path, fp, rejects_path=rp)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        await journal.write(Sending.of(batch))  # durable on return
        ...
        journal.close()
    """

    def __init__(self, path: str, fd: int, rejects_path: str) -> None:
        self.path = path
        self.rejects_path = rejects_path
        self._fd = fd
        self._rejects_file = RejectsFile(rejects_path)
        self._buf: list[_Pending] = []
        self._rejects: list[bytes] = []
        self._committed = anyio.Event()
        self._has_work = anyio.Event()
        self._waited_on = anyio.Event()  # set by a durable write: commit now, not later
        self._inline = True  # commit in the event loop, until one commit is slow
        self._closing = False
        self._error: CheckpointError | None = None
        self._already_rejected: set[bytes] = set()
        # Once the rejects file fails, rejected lines are left out of the journal
        # (a resume reads and rejects them again), and so is the *done* record that
        # settles their batch, and *finished*; every other record is still committed.
        self.rejects_error: RejectsFileError | None = None
        self.on_rejects_error: Callable[[RejectsFileError], None] | None = None
        self._dropped_lines: set[int] = set()
        self._resends = ResendTally()

    @property
    def unknown_resent(self) -> int:
        """Unknown outcomes of this run whose rows it sent again (see ``RunResends``)."""
        return self._resends.count

    @classmethod
    def open(
        cls,
        path: str,
        fp: dict[str, Any],
        *,
        rejects_path: str,
        restart: bool = False,
        input_path: str = "the input",
    ) -> tuple[CheckpointJournal, JournalState]:
        """Take the journal at ``path`` (creating it), check it belongs to this run, load it.

        ``input_path`` only names the input in messages.
        """
        RejectsFile(rejects_path).check()  # before the checkpoint exists, let alone a request
        if os.path.exists(path) and not os.path.isfile(path):
            # A device or a FIFO (/dev/full, /dev/null) cannot hold a journal to resume from.
            raise CheckpointError(
                f"{path}: a checkpoint must be a regular file; pass --checkpoint PATH of a file"
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise CheckpointError(
                f"{path}: cannot open checkpoint: {exc.strerror}; pass --checkpoint PATH "
                "(and --rejects PATH) somewhere writable"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{path}: checkpoint is in use by another ingest run; wait for it to end "
                "(or pass --checkpoint for a separate run)"
            ) from None
        try:
            state = cls._load(fd, path, fp, restart, rejects_path, input_path)
        except BaseException:
            os.close(fd)
            raise
        journal = cls(path, fd, rejects_path)
        if state.attempts:
            try:
                journal._already_rejected = journal._rejects_file.recent()
            except RejectsFileError:
                journal.release()
                raise
        return journal, state

    @staticmethod
    def _load(
        fd: int, path: str, fp: dict[str, Any], restart: bool, rejects_path: str, input_path: str
    ) -> JournalState:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        try:
            state, good = parse_journal(data, path) if data else (JournalState(), 0)
        except CheckpointError:
            if not restart or not _has_header(data):
                raise
            state, good = JournalState(fingerprint={}), 0  # ours but damaged: start over
        reason = None
        if state.fingerprint is not None:
            reason = mismatch(state.fingerprint, fp, input_path=input_path)
        if reason is not None and not restart and grew(state.fingerprint or {}, fp, input_path):
            # Lines added at its end: what is done stays done; the new lines are sent.
            log.info("%s grew since its checkpoint: the lines added are sent", input_path)
            reason, grown = None, True
        else:
            grown = False
        if reason is not None and not restart:
            raise CheckpointError(
                f"{path}: this checkpoint is for {reason}. Pass --restart to start over "
                "(the old file is kept as a .bak), or --checkpoint PATH for a separate run"
            )
        if reason is not None or state.fingerprint is None:
            if data:
                # Never over an older backup: each restart keeps what it discards.
                backup = backup_path(path)
                bak = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                try:
                    _write_all(bak, data)
                finally:
                    os.close(bak)
                log.info("the old checkpoint is kept as %s", backup)
            good, state = 0, JournalState(fingerprint=fp)
            header = {"t": "header", "v": JOURNAL_VERSION, "fingerprint": fp}
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(header) + b"\n", 0)
            os.fsync(fd)
            _fsync_dir(path)
            # Rejects left by another run would pass for this one's: set them aside,
            # under a new name, so no run's rejects are ever lost (a shared --rejects).
            if (set_apart := set_aside(rejects_path)) is not None:
                log.info("rejects of an earlier run are kept as %s", set_apart)
        elif good < size:
            os.ftruncate(fd, good)
            os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_END)
        assert state.fingerprint is not None
        if grown:
            _write_all(fd, orjson.dumps({"t": "identity", "input": fp["input"]}) + b"\n")
            os.fsync(fd)
            state.fingerprint = {**state.fingerprint, "input": fp["input"]}
            state.finished = None  # its new lines are not done
        if is_v1_identity(state.fingerprint.get("input") or {}):
            # A version-1 header saw only the size and the edges: from now on the input's
            # full identity is checked, as for a checkpoint made by this version.
            _write_all(fd, orjson.dumps({"t": "identity", "input": fp["input"]}) + b"\n")
            os.fsync(fd)
            state.fingerprint = {**state.fingerprint, "input": fp["input"]}
        return state

    async def write(self, rec: Record | dict[str, Any], *, durable: bool = True) -> None:
        """Append ``rec``; if ``durable``, return once it (and all before it) is fsynced.

        ``ingest`` writes ``Record`` s (``ingest.records``); a plain object is taken as
        the record's JSON, for tests and hand-made journals.
        """
        record = rec.as_json() if isinstance(rec, Record) else rec
        if "seq" in record:
            self._resends.note(record.get("t"), record["seq"], record["part"])
        kind, lines = record.get("t"), record.get("lines")
        if kind == "done" and record.get("rows") != 0:
            lines = None  # delivered rows: never dropped, whatever lines it spans
        pending = (kind, tuple(lines) if lines else None, orjson.dumps(record) + b"\n")
        await self._append(pending, None, durable)

    async def reject(self, item: Reject, *, durable: bool = False) -> None:
        """Record a rejected line: first in the rejects file, then in the journal."""
        record = {
            "t": "rejected",
            "line": item.line,
            "bytes": [item.start, item.end],
            "reason": item.reason,
        }
        # After a crash between the rejects file and the journal, the line is there already.
        entry = item.to_json()
        rejects_line = b"" if entry in self._already_rejected else entry
        pending = ("rejected", (item.line, item.line), orjson.dumps(record) + b"\n")
        await self._append(pending, rejects_line, durable)

    async def _append(self, pending: _Pending, rejects_line: bytes | None, durable: bool) -> None:
        if self._error is not None:
            raise self._error
        self._buf.append(pending)
        if rejects_line is not None:
            self._rejects.append(rejects_line)
        committed = self._committed
        self._has_work.set()
        if durable:
            self._waited_on.set()
            await committed.wait()
            if self._error is not None:
                raise self._error

    async def run(self) -> None:
        """The writer task: commit what has been written, in groups, until closed.

        Cancelling it does not lose a record already written: what is buffered is
        committed first, shielded.
        """
        try:
            while True:
                if not self._buf and not self._rejects:
                    if self._closing:
                        return
                    await self._has_work.wait()
                    self._has_work = anyio.Event()
                    continue
                if not self._waited_on.is_set() and not self._closing:
                    # Only records nothing waits on (a *done*, a reject): they go with the
                    # next durable one, a fsync for both, or after a moment at the latest.
                    with anyio.move_on_after(LAZY_COMMIT_SECONDS):
                        await self._waited_on.wait()
                await self._commit_buffered()
        finally:
            if (self._buf or self._rejects) and self._error is None:
                await self._commit_buffered()

    async def _commit_buffered(self) -> None:
        buf, rejects, committed = self._buf, self._rejects, self._committed
        self._buf, self._rejects, self._committed = [], [], anyio.Event()
        self._waited_on = anyio.Event()
        failed_before = self.rejects_error
        try:
            if self._inline:
                # A local disk's fsync takes a fraction of a millisecond: done in the loop,
                # it costs less than a thread's hand-off (and its fight for the GIL) would.
                started = time.perf_counter()
                self._commit(b"".join(rejects), buf)
                if time.perf_counter() - started > INLINE_COMMIT_SECONDS:
                    self._inline = False  # a slow disk: the loop must not wait on it
                await anyio.lowlevel.checkpoint()
            else:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._commit, b"".join(rejects), buf)
            failed = self.rejects_error
            if failed is not None and failed is not failed_before and self.on_rejects_error:
                self.on_rejects_error(failed)  # before the waiters wake: a run ends failed
        except OSError as exc:
            self._error = CheckpointError(
                f"{self.path}: cannot write checkpoint: {exc}; free the disk or fix "
                "permissions, then re-run the same command to resume"
            )
            raise self._error from exc
        finally:
            committed.set()

    def _commit(self, rejects: bytes, buf: list[_Pending]) -> None:
        # Rejects first: a line in the journal as rejected is always in the rejects file.
        if rejects and self.rejects_error is None:
            try:
                self._rejects_file.append(rejects)
            except OSError as exc:
                self.rejects_error = self._rejects_file.write_error(exc)
        if self.rejects_error is not None:
            buf = self._without_rejects(buf)
        _write_all(self._fd, b"".join(data for _, _, data in buf))
        os.fsync(self._fd)

    def _without_rejects(self, buf: list[_Pending]) -> list[_Pending]:
        """The records that stay true with no rejects file: all but rejects and what they settle."""
        kept = []
        for pending in buf:
            kind, lines, _ = pending
            if kind == "rejected" and lines is not None:
                self._dropped_lines.add(lines[0])
            elif kind == "finished":
                pass
            elif kind == "done" and lines is not None and self._settles_dropped(lines):
                pass  # a refused row's batch (0 rows delivered): the resume sends it again
            else:
                kept.append(pending)
        return kept

    def _settles_dropped(self, lines: tuple[int, int]) -> bool:
        first, last = lines
        return any(first <= line <= last for line in self._dropped_lines)

    def move_to(self, path: str, rejects_path: str) -> None:
        """Rename the journal (and its rejects file, if it exists) while holding the lock.

        Raises ``OSError`` and leaves both names as they were if that cannot be done
        without overwriting a file.
        """
        move_rejects = rejects_path != self.rejects_path and os.path.exists(self.rejects_path)
        for target in (path, rejects_path) if move_rejects else (path,):
            if os.path.lexists(target):
                raise FileExistsError(f"{target} exists")
        os.rename(self.path, path)
        if move_rejects:
            try:
                os.rename(self.rejects_path, rejects_path)
            except OSError:
                os.rename(path, self.path)
                raise
        self.path, self.rejects_path = path, rejects_path
        self._rejects_file.path = rejects_path
        _fsync_dir(path)

    def close(self) -> None:
        """Ask the writer task to commit what is left and end."""
        self._closing = True
        self._has_work.set()
        self._waited_on.set()

    def release(self) -> None:
        """Close the files and drop the lock; call after the writer task ended."""
        self._rejects_file.close()
        os.close(self._fd)


def _has_header(data: bytes) -> bool:
    try:
        first = orjson.loads(data[: data.find(b"\n")])
    except orjson.JSONDecodeError:
        return False
    return isinstance(first, dict) and first.get("t") == "header"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: str) -> None:
    # A new file's directory entry is durable only once its directory is fsynced.
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
