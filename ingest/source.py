"""Source: reads JSONL (plain, gzip or ``-`` for stdin) a line at a time.

Takes a path; gives out ``Chunk`` s: the valid rows of a stretch of lines (raw
bytes, line numbers, start and end offsets, kept in parallel lists because a Python
object per row costs more than reading and validating it) and the ``Reject`` s
among them (a line that must not be sent, with the reason). Memory is bounded
by one chunk, whatever the size of the file.

A row is sent as the bytes the file holds, never re-serialized: a parse and
dump would turn ``12345678901234567890123`` into a float (orjson does) and may
change escapes. orjson only *validates* the line.

A chunk of plain rows (the common case) is checked in passes that run in C over
all its lines; only a chunk holding a line that is not plain is looked at line by
line, for each line's reason. ``ingest.reading`` is the stage's task that drives
``read_chunk``; ``ingest.rows`` holds the types and the row rules,
``ingest.inputs`` the opening of the file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import orjson

from ingest.errors import SourceError
from ingest.gzipped import (
    GZIP_MAGIC,
    BrokenInput,
    changed_under_run,
    rewritten_under_run,
)
from ingest.inputs import open_input, refuse_compressed
from ingest.keys import RowKeys, input_tag
from ingest.rows import (
    BOM,
    ENVELOPE_BYTES,
    RESERVED_FIELDS,
    WHITESPACE,
    Chunk,
    Reject,
    check_value,
    natural_key,
    parse_error,
    plain_rows,
    too_long,
)

if TYPE_CHECKING:
    pass

_SLACK = 1024  # bytes a line may hold beyond batch_bytes (whitespace, CRLF) and still be read


def _is_regular(path: str) -> bool:
    """Whether ``path`` is a regular file (not a FIFO, a device or a socket, whose reads wait)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _raises(exc: Exception) -> Callable[[int], bytes]:
    """A ``readline`` that raises ``exc``: the error a read of lines ahead met."""

    def readline(_cap: int) -> bytes:
        raise exc

    return readline


def _why(exc: BaseException) -> str:
    """What a read error means to the user."""
    return str(exc) if isinstance(exc, BrokenInput) else f"cannot read past this line: {exc}"


class JsonlSource:
    """Reads a JSONL input in chunks, from a given line and byte offset.

    ``skip(line)`` says a line is already done (a resumed run): it is read but
    neither checked nor sent. ``expected_size`` is the input's size when the
    run took its fingerprint: an input that ends before it changed under the
    run, which is an error, never a complete read. Reading is blocking; call
    ``read_chunk`` from a worker thread. The first call does the slow part of
    opening: it checks a gzip input whole, reads past the done lines of one
    that cannot seek, and waits for stdin's first bytes.

        source = JsonlSource("rows.jsonl", max_row_bytes=4 << 20)
        while chunk := source.read_chunk():
            ...
    """

    def __init__(
        self,
        path: str,
        *,
        max_row_bytes: int,
        start_line: int = 1,
        start_offset: int = 0,
        skip: Callable[[int], bool] | None = None,
        expected_size: int | None = None,
        changed: Callable[[], str | None] | None = None,
        key_field: str | None = None,
        key_from: str | None = None,
    ) -> None:
        self.path = path
        self.max_row_bytes = max_row_bytes
        # Rows get a key (``ingest.keys``) once the input's first line is known.
        self.key_field = key_field
        self.keys: RowKeys | None = None
        # A field of the rows as their natural key (--key-from): each value once, so the
        # values seen (a resumed run reads the done lines for theirs) are kept: ~100 B a row.
        self.key_from = key_from
        self._plain_fields = RESERVED_FIELDS | ({key_field} if key_field else set())
        self._seen: dict[str, int] = {}
        self._file, self._gzip = open_input(path, expected_size=expected_size)
        self._regular = path != "-" and _is_regular(path)
        # The gzip stream checks its compressed size itself; offsets here count its output.
        self._size = None if self._gzip is not None else expected_size
        self._line = start_line - 1
        self._offset = start_offset
        self._skip = skip
        self._changed = changed
        self.skipped = 0
        self.skipped_rows = 0
        self._prefix_rows: int | None = 0 if start_offset == 0 else None
        self._start_offset = start_offset
        self._error: SourceError | None = None
        self._unready: tuple[int, int] | None = (start_line, start_offset)

    def _prepare(self, start_line: int, start_offset: int) -> None:
        """Check what stdin holds, then move to ``start_offset``."""
        if self.path == "-":
            head = self._file.peek(8)[:8]  # type: ignore[attr-defined]
            if head.startswith(GZIP_MAGIC):
                raise SourceError(
                    "stdin holds gzip data, whose checksums come only at its end: pass the "
                    ".gz file as --input so it can be checked before any row is sent, or "
                    "decompress it first",
                    path=self.path,
                )
            refuse_compressed(head, self.path)
        if self._gzip is not None:
            # Called on the stream itself, not through the buffer: a close() on a stop
            # must not wait for the buffer's lock while the whole file is checked.
            self._gzip.check()
        if start_offset == 0:
            return
        if self._file.seekable() and self._gzip is None:
            self._prefix_rows = None  # counted only if asked for: a seek reads nothing
            if self.key_field is not None:
                self._file.seek(0)
                self._keyed(self._file.readline(self.max_row_bytes + _SLACK))
            self._file.seek(start_offset)
            return
        self._line, self._offset, self._prefix_rows = 0, 0, 0
        while self._line < start_line - 1:
            line = self._file.readline()
            if not line:
                raise SourceError(
                    f"input ends at line {self._line}, before the checkpoint's line {start_line}",
                    path=self.path,
                )
            if self._line == 0 and self.key_field is not None:
                self._keyed(line)
            self._line += 1
            self._offset += len(line)
            self._prefix_rows += bool(line.strip(WHITESPACE))

    def _keyed(self, first_line: bytes) -> None:
        assert self.key_field is not None
        self.keys = RowKeys(field=self.key_field, tag=input_tag(first_line))

    def read_chunk(self, max_lines: int = 2048) -> Chunk:
        """Read until ``max_lines`` rows or rejects; an empty chunk means the input is exhausted."""
        if self._error is not None:
            raise self._error
        if self._unready is not None:
            try:
                self._prepare(*self._unready)
            except (OSError, EOFError, BrokenInput) as exc:
                raise SourceError(_why(exc), path=self.path) from exc
            self._unready = None
        chunk = Chunk()
        rows, lines, ends, starts = chunk.rows, chunk.lines, chunk.ends, chunk.starts
        rejects, keys = chunk.rejects, chunk.keys
        readline: Callable[[int], bytes] = self._file.readline
        skip, loads = self._skip, orjson.loads
        key_field = self.key_field
        overhead = self.keys.overhead if self.keys is not None else 0
        limit = self.max_row_bytes - ENVELOPE_BYTES - overhead
        # No sendable row is longer; room is left for whitespace and a CRLF.
        cap = self.max_row_bytes + _SLACK
        number, offset, expected = self._line, self._offset, self._size
        ahead: list[bytes] = []  # lines read by the plain path, not plain: looked at one by one
        if number > 0 and skip is None and self.key_from is None:
            ahead, failed = self._lines(max_lines, cap)
            plain = failed is None and ahead and ahead[-1][-1:] == b"\n"
            if plain and (got := plain_rows(ahead, limit, self._plain_fields)) is not None:
                return self._plain(chunk, ahead, got)
            ahead.reverse()
            if failed is not None:
                readline = _raises(failed)  # once the lines read before it are looked at
        try:
            while len(rows) + len(rejects) < max_lines:
                line = ahead.pop() if ahead else readline(cap)
                size = len(line)
                if not size or line[-1] != 10:  # the end, a line at the cap, or a last line
                    if size == cap:
                        size += self._skip_rest_of_line()  # never held whole: memory stays flat
                    elif expected is not None and offset + size < expected:
                        # A line cut short; the message says how long the file is now.
                        raise changed_under_run(expected, self._size_now(offset + size))
                    elif not size:
                        if self._changed is not None and (why := self._changed()) is not None:
                            raise rewritten_under_run(why)  # not the input the run began with
                        break
                number += 1
                start = offset
                offset += size
                if number == 1 and key_field is not None:
                    self._keyed(line)
                    assert self.keys is not None
                    overhead = self.keys.overhead
                    limit = self.max_row_bytes - ENVELOPE_BYTES - overhead
                if skip is not None and skip(number):
                    self.skipped += 1
                    # Rows done by earlier runs, for the check that every row is accounted for.
                    self.skipped_rows += bool(line.strip(WHITESPACE))
                    if self.key_from is not None:
                        self._note_done_key(line, number)
                    continue
                if size > len(line):
                    kept = f" (the rejects file keeps its first {_SLACK} bytes)"
                    why = too_long(size, self.max_row_bytes) + kept
                    rejects.append(Reject(number, start, offset, why, line[:_SLACK]))
                    continue
                raw = line.strip(WHITESPACE)
                if number == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM) :].strip(WHITESPACE)
                if not raw:
                    continue
                reason: str | None = None
                try:
                    value = loads(raw)
                except orjson.JSONDecodeError as exc:
                    reason = parse_error(exc)
                else:
                    # The common case is settled with C-level operations only.
                    common = (
                        type(value) is dict
                        and value
                        and RESERVED_FIELDS.isdisjoint(value)
                        and b'"source_record_' not in raw
                        and len(raw) <= limit
                        and (key_field is None or key_field not in value)
                    )
                    reason = (
                        None
                        if common
                        else check_value(value, raw, self.max_row_bytes, key_field, overhead)
                    )
                if reason is None and self.key_from is not None:
                    reason = self._natural_key(value, number, keys)
                if reason is None:
                    rows.append(raw)  # its key is spliced in below, with the chunk's others
                    lines.append(number)
                    ends.append(offset)
                    starts.append(start)
                    continue
                rejects.append(Reject(number, start, offset, reason, line.rstrip(b"\r\n")))
        except (OSError, EOFError, BrokenInput) as exc:
            error = SourceError(_why(exc), path=self.path, line=number or None)
            error.__cause__ = exc
            if not chunk:
                raise error from exc
            # Hand over the good rows read before the damage; the next call raises.
            self._error = error
        finally:
            self._line, self._offset = number, offset
        if key_field is not None and rows:
            assert self.keys is not None
            # In one pass over the chunk: made a row at a time, keys cost a third of the read.
            chunk.rows = self.keys.splice_all(rows, chunk.lines, keys)
        return chunk

    def _lines(self, max_lines: int, cap: int) -> tuple[list[bytes], Exception | None]:
        """Up to ``max_lines`` lines (the last lacks its newline at the end or at ``cap``),
        and the read error that ended them early, if one did."""
        readline = self._file.readline
        lines: list[bytes] = []
        append = lines.append
        try:
            for _ in range(max_lines):
                append(line := readline(cap))
                if line[-1:] != b"\n":
                    break
        except (OSError, EOFError, BrokenInput) as exc:
            return lines, exc
        return lines, None

    def _plain(self, chunk: Chunk, lines: list[bytes], rows: list[bytes]) -> Chunk:
        """``chunk`` of ``lines``, each one whole and a plain row (``rows``, their bytes)."""
        first, offsets = self._line + 1, list(accumulate(map(len, lines), initial=self._offset))
        chunk.lines, chunk.starts, chunk.ends = (
            list(range(first, first + len(rows))),
            offsets[:-1],
            offsets[1:],
        )
        chunk.rows = (
            rows if self.keys is None else self.keys.splice_all(rows, chunk.lines, chunk.keys)
        )
        self._line, self._offset = first + len(rows) - 1, offsets[-1]
        return chunk

    def _natural_key(self, value: Any, number: int, keys: list[str]) -> str | None:
        """Take the row's ``--key-from`` value as its key; why not, if it cannot be one."""
        assert self.key_from is not None
        key = natural_key(value.get(self.key_from))
        if key is None:
            found = value.get(self.key_from, "no such field")
            return (
                f"its --key-from field {self.key_from!r} must be a non-empty string or an "
                f"integer, found {str(found)[:60]!r}"
            )
        first = self._seen.setdefault(key, number)
        if first != number:
            return (
                f"repeats the --key-from value {key[:60]} of line {first}: a natural key must "
                "be unique in the input"
            )
        keys.append(key)
        return None

    def _note_done_key(self, line: bytes, number: int) -> None:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if isinstance(value, dict) and (key := natural_key(value.get(self.key_from))):
            self._seen.setdefault(key, number)

    def rows_before_start(self) -> int:
        """Rows (non-blank lines) before where this read began: the checkpoint's done prefix.

        Read again only when the reader seeked past them; call it from a thread.
        """
        if self._prefix_rows is None:
            count, filled = 0, False  # filled: the line being read holds a non-blank byte
            with open(self.path, "rb") as f:
                left = self._start_offset
                # In bounded pieces: a line of many MiB is never held whole.
                while left > 0 and (piece := f.readline(min(left, 1 << 20))):
                    left -= len(piece)
                    filled = filled or bool(piece.strip(WHITESPACE))
                    if piece.endswith(b"\n"):
                        count, filled = count + filled, False
            self._prefix_rows = count + filled
        return self._prefix_rows

    def _size_now(self, read: int) -> int:
        """The input's size now (the reader's buffer may hold bytes cut since), else ``read``."""
        try:
            return min(read, os.fstat(self._file.fileno()).st_size)
        except (OSError, ValueError):
            return read

    def _skip_rest_of_line(self) -> int:
        """Read past the rest of an over-long line in bounded steps; return its bytes."""
        skipped = 0
        while part := self._file.readline(1 << 20):
            skipped += len(part)
            if part.endswith(b"\n"):
                break
        return skipped

    @property
    def inline(self) -> bool:
        """Whether a chunk may be read in the event loop: a regular file, its opening done."""
        return self._regular and self._unready is None and self._error is None

    @property
    def position(self) -> tuple[int, int]:
        """The last line read and the byte offset after it."""
        return self._line, self._offset

    def close(self) -> None:
        """Close the input; stdin's reader is left alone, as a blocked read may hold it."""
        if self.path != "-":
            self._file.close()

    def __enter__(self) -> JsonlSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
