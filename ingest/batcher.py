"""Batcher: groups records into batches the API accepts.

Takes the rows of ``Chunk`` s in line order; gives out ``Batch`` es of at most
``batch_rows`` rows and ``batch_bytes`` of request body, numbered from
``first_seq``. The same records and settings always give the same batches.

Batches tile the input: each one covers every line from the end of the one
before it to its last row, blank and rejected lines included, so the done
ranges in the checkpoint leave no gaps and a resumed run can seek past them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ingest.rows import ENVELOPE_BYTES, Chunk

MAX_BATCH_ROWS = 1000  # the API's limit per request


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows to send in one request, with the line and byte span they cover.

    ``part`` names a piece made by splitting a refused batch: ``""`` is the
    whole batch, ``"0"`` and ``"1"`` its halves, ``"01"`` the second half of
    the first half, and so on.
    """

    seq: int
    first_line: int
    start: int
    rows: tuple[bytes, ...]
    lines: tuple[int, ...]
    ends: tuple[int, ...]
    starts: tuple[int, ...]  # where each row's own line begins (``start`` may be earlier)
    part: str = ""
    keys: tuple[str, ...] = ()  # each row's key, when the run keys its rows
    # The last line and end byte covered, when they lie past the last row: a batch of
    # the rows of another found missing still covers the lines of those found present.
    tail: tuple[int, int] | None = None

    @property
    def last_line(self) -> int:
        """The last line the batch covers: its last row's, or its ``tail``."""
        return self.lines[-1] if self.tail is None else self.tail[0]

    @property
    def end(self) -> int:
        """The byte offset just after the last line the batch covers."""
        return self.ends[-1] if self.tail is None else self.tail[1]

    @property
    def name(self) -> str:
        """How messages refer to this batch."""
        piece = f" part {self.part}" if self.part else ""
        return f"batch {self.seq}{piece} (lines {self.first_line}-{self.last_line})"

    def body(self) -> bytes:
        """The request body, ``{"examples":[...]}``, built from the rows' own bytes."""
        return b'{"examples":[' + b",".join(self.rows) + b"]}"

    def split(self) -> tuple[Batch, Batch]:
        """Halve the batch; the halves tile the same lines as the whole."""
        mid = len(self.rows) // 2
        if mid == 0:
            raise ValueError("a one-row batch cannot be split")
        first = Batch(
            self.seq,
            self.first_line,
            self.start,
            self.rows[:mid],
            self.lines[:mid],
            self.ends[:mid],
            self.starts[:mid],
            self.part + "0",
            self.keys[:mid],
        )
        second = Batch(
            self.seq,
            self.lines[mid - 1] + 1,
            self.ends[mid - 1],
            self.rows[mid:],
            self.lines[mid:],
            self.ends[mid:],
            self.starts[mid:],
            self.part + "1",
            self.keys[mid:],
            self.tail,
        )
        return first, second

    def only(self, rows: list[int], part: str) -> Batch:
        """The rows at indexes ``rows`` (in order), covering the same lines as the whole."""
        return Batch(
            self.seq,
            self.first_line,
            self.start,
            tuple(self.rows[i] for i in rows),
            tuple(self.lines[i] for i in rows),
            tuple(self.ends[i] for i in rows),
            tuple(self.starts[i] for i in rows),
            part,
            tuple(self.keys[i] for i in rows),
            (self.last_line, self.end),
        )


def body_size(rows: int, row_bytes: int) -> int:
    """Bytes of a body holding ``rows`` rows of ``row_bytes`` bytes in all."""
    return ENVELOPE_BYTES + row_bytes + max(rows - 1, 0)


class Batcher:
    """Accumulates records and hands out full batches.

    batcher = Batcher(batch_rows=500, batch_bytes=4 << 20)
    for chunk in chunks:
        for batch in batcher.extend(chunk.rows, chunk.lines, chunk.ends, chunk.starts):
            send(batch)
    if (batch := batcher.flush()) is not None:
        send(batch)
    """

    def __init__(
        self,
        *,
        batch_rows: int,
        batch_bytes: int,
        first_seq: int = 0,
        first_line: int = 1,
        start: int = 0,
    ) -> None:
        if not 1 <= batch_rows <= MAX_BATCH_ROWS:
            raise ValueError(f"batch_rows must be 1..{MAX_BATCH_ROWS}, not {batch_rows}")
        self.batch_rows = batch_rows
        self.batch_bytes = batch_bytes
        self._seq = first_seq
        self._first_line = first_line
        self._start = start
        self._rows: list[bytes] = []
        self._lines: list[int] = []
        self._ends: list[int] = []
        self._starts: list[int] = []
        self._keys: list[str] = []
        self._bytes = 0
        self._first_seq = first_seq

    @property
    def produced(self) -> int:
        """How many batches have been handed out."""
        return self._seq - self._first_seq

    @property
    def pending(self) -> int:
        """Rows waiting in the batch being filled."""
        return len(self._rows)

    def extend(
        self,
        rows: list[bytes],
        lines: list[int],
        ends: list[int],
        starts: list[int],
        keys: list[str] | None = None,
    ) -> list[Batch]:
        """Add rows (with their lines, end and start offsets, and keys if keyed); return
        the batches they filled."""
        full: list[Batch] = []
        i, n = 0, len(rows)
        while i < n:
            held = len(self._rows)
            take = rows[i : i + self.batch_rows - held]
            # Bytes of the body so far: envelope, rows, and a comma between rows.
            used = ENVELOPE_BYTES + self._bytes + held - 1
            sizes = list(map(len, take))
            if used + sum(sizes) + len(take) <= self.batch_bytes:
                fit = len(take)  # the common case: the row limit binds first
            else:
                # Each row adds its bytes and a comma; the first must go in an empty batch.
                limits = [total + k for k, total in enumerate(accumulate(sizes), start=1)]
                fit = max(bisect_right(limits, self.batch_bytes - used), 0 if held else 1)
            self._rows.extend(take[:fit])
            self._lines.extend(lines[i : i + fit])
            self._ends.extend(ends[i : i + fit])
            self._starts.extend(starts[i : i + fit])
            if keys:
                self._keys.extend(keys[i : i + fit])
            self._bytes += sum(sizes[:fit])
            i += fit
            if fit < len(take) or len(self._rows) == self.batch_rows:
                batch = self.flush()
                assert batch is not None
                full.append(batch)
        return full

    def flush(self) -> Batch | None:
        """Close and return the batch being filled, if it holds any row."""
        if not self._rows:
            return None
        batch = Batch(
            self._seq,
            self._first_line,
            self._start,
            tuple(self._rows),
            tuple(self._lines),
            tuple(self._ends),
            tuple(self._starts),
            keys=tuple(self._keys),
        )
        self._seq += 1
        self._first_line = batch.last_line + 1
        self._start = batch.end
        self._rows, self._lines, self._ends, self._starts, self._bytes = [], [], [], [], 0
        self._keys = []
        return batch


def batch_chunks(
    chunks: Iterable[Chunk], *, batch_rows: int, batch_bytes: int, first_seq: int = 0
) -> Iterator[Batch]:
    """All the batches the rows of ``chunks`` make, in order."""
    batcher = Batcher(batch_rows=batch_rows, batch_bytes=batch_bytes, first_seq=first_seq)
    for chunk in chunks:
        yield from batcher.extend(chunk.rows, chunk.lines, chunk.ends, chunk.starts, chunk.keys)
    if (batch := batcher.flush()) is not None:
        yield batch


async def batch_stage(
    batcher: Batcher,
    chunks: ObjectReceiveStream[Chunk],
    out: ObjectSendStream[Batch],
    stopping: anyio.Event,
) -> None:
    """The batcher stage: chunks in, batches out, the last one flushed at the input's end."""
    try:
        async with chunks, out:
            async for chunk in chunks:
                if stopping.is_set():
                    return
                for batch in batcher.extend(
                    chunk.rows, chunk.lines, chunk.ends, chunk.starts, chunk.keys
                ):
                    await out.send(batch)
            if not stopping.is_set() and (last := batcher.flush()) is not None:
                await out.send(last)
    except anyio.BrokenResourceError:
        pass  # the workers stopped (a stop request): queued rows stay unsent
