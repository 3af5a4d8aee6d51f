"""Source: reads JSONL (plain, gzip or ``-`` for stdin) a line at a time.

Takes a path; gives out ``Chunk`` s: the valid rows of a stretch of lines (raw
bytes, line numbers, start and end offsets, kept in parallel lists because a Python
object per row costs more than reading and validating it) and the ``Reject`` s
among them (a line that must not be sent, with the reason). Memory is bounded
by one chunk, whatever the size of the file.

A row is sent as the bytes the file holds, never re-serialized: a parse and
dump would turn ``12345678901234567890123`` into a float (orjson does) and may
change escapes. orjson only *validates* the line.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from ingest.errors import SourceError
from ingest.gzipped import (
    GZIP_MAGIC,
    BrokenInput,
    GzipStream,
    changed_under_run,
    rewritten_under_run,
)
from ingest.keys import LINE_DIGITS, RowKeys, input_tag

BOM = b"\xef\xbb\xbf"
RESERVED_FIELDS = frozenset({"id", "created_at", "updated_at", "time", "count"})
RESERVED_PREFIX = "source_record_"
# `{"examples":[` + `]}`: the envelope every batch body carries.
ENVELOPE_BYTES = 15
_WHITESPACE = b" \t\r\n"
_SLACK = 1024  # bytes a line may hold beyond batch_bytes (whitespace, CRLF) and still be read


@dataclass(frozen=True, slots=True)
class Reject:
    """A line that is not sent, with the reason a user can act on."""

    line: int
    start: int
    end: int
    reason: str
    raw: bytes

    def to_json(self) -> bytes:
        """The rejects-file line: line number, reason and the raw line."""
        entry: dict[str, Any] = {"line": self.line, "offset": self.start, "reason": self.reason}
        try:
            entry["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(self.raw).decode("ascii")
        return orjson.dumps(entry) + b"\n"


@dataclass(slots=True)
class Chunk:
    """The rows of a stretch of input, in line order, and the lines rejected in it."""

    rows: list[bytes] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # each row's key (``ingest.keys``), if keyed

    def __len__(self) -> int:
        return len(self.rows) + len(self.rejects)


def _parse_error(exc: orjson.JSONDecodeError) -> str:
    if "UTF-8" in str(exc):
        return "not valid UTF-8"
    # orjson counts lines within the row, always line 1: only the column helps.
    return f"not valid JSON: {exc.msg} at column {exc.colno}"


def _check_value(
    value: object, raw: bytes, max_row_bytes: int, key_field: str | None = None, overhead: int = 0
) -> str | None:
    if not isinstance(value, dict):
        return f"not a JSON object (found {type(value).__name__})"
    if not value:
        return "empty object (the API refuses examples with no fields)"
    if key_field is not None and key_field in value:
        return (
            f"has a field {key_field!r}, which ingest adds to every row as its key: rename the "
            "field, or pass --key-field-name NAME for another key field"
        )
    for key in value:
        if key in RESERVED_FIELDS or key.startswith(RESERVED_PREFIX):
            return (
                f"reserved field {key!r} (the API refuses id, created_at, updated_at, "
                "time, count and source_record_*; rename it)"
            )
    if len(raw) + ENVELOPE_BYTES + overhead > max_row_bytes:
        return _too_long(len(raw), max_row_bytes, overhead)
    return None


def _too_long(size: int, max_row_bytes: int, overhead: int = 0) -> str:
    """Why a row of ``size`` bytes is not sent: it names the real limit, not batch_bytes."""
    key = f" and its key {overhead}" if overhead else ""
    return (
        f"row is {size:,} bytes; with batch_bytes {max_row_bytes:,} a row may hold at most "
        f"{max_row_bytes - ENVELOPE_BYTES - overhead:,} (the request envelope takes "
        f"{ENVELOPE_BYTES}{key}); raise batch_bytes or shrink the row"
    )


# Leading bytes of the formats a JSONL input may arrive in by mistake.
_COMPRESSED = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def _refuse_compressed(head: bytes, path: str) -> None:
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise SourceError(
                f"the input holds {kind} data; decompress it first (ingest reads JSONL, "
                "plain or gzip)",
                path=path,
            )


def open_input(
    path: str, *, expected_size: int | None = None
) -> tuple[IO[bytes], GzipStream | None]:
    """Open ``path`` for binary reading; return it and, for gzip, the stream under it.

    ``-`` is stdin. A file is gzip when it starts with gzip's magic bytes,
    whatever its name: a plain file named ``.gz`` is read as plain JSONL.
    """
    try:
        if path == "-":
            if sys.stdin is None:  # started with fd 0 closed: fd 0 may be any file now
                raise SourceError("stdin is closed; give --input a file", path=path)
            # Our own reader on stdin's fd, not sys.stdin.buffer: a read left blocked on a
            # stdin that never ends must not hold the lock the interpreter takes at exit.
            # What it holds is checked at the first read, which may block.
            return open(sys.stdin.fileno(), "rb", buffering=1 << 20, closefd=False), None
        file = io.BufferedReader(io.FileIO(path), buffer_size=1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot open input: {exc.strerror}", path=path) from exc
    try:
        head = file.peek(8)[:8]
        if not head.startswith(GZIP_MAGIC):
            _refuse_compressed(head, path)
            return file, None
        file.close()
        stream = GzipStream(path, expected_size=expected_size)
        return io.BufferedReader(stream, buffer_size=1 << 16), stream
    except OSError as exc:
        file.close()
        raise SourceError(f"cannot open input: {exc.strerror}", path=path) from exc
    except BaseException:
        file.close()
        raise


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
    ) -> None:
        self.path = path
        self.max_row_bytes = max_row_bytes
        # Rows get a key (``ingest.keys``) once the input's first line is known.
        self.key_field = key_field
        self.keys: RowKeys | None = None
        self._file, self._gzip = open_input(path, expected_size=expected_size)
        # The gzip stream checks its compressed size itself; offsets here count its output.
        self._size = None if self._gzip is not None else expected_size
        self._line = start_line - 1
        self._offset = start_offset
        self._skip = skip
        self._changed = changed
        self.skipped = 0
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
            _refuse_compressed(head, self.path)
        if self._gzip is not None:
            # Called on the stream itself, not through the buffer: a close() on a stop
            # must not wait for the buffer's lock while the whole file is checked.
            self._gzip.check()
        if start_offset == 0:
            return
        if self._file.seekable() and self._gzip is None:
            if self.key_field is not None:
                self._file.seek(0)
                self._keyed(self._file.readline(self.max_row_bytes + _SLACK))
            self._file.seek(start_offset)
            return
        self._line, self._offset = 0, 0
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
        readline, skip, loads = self._file.readline, self._skip, orjson.loads
        key_field = self.key_field
        overhead = self.keys.overhead if self.keys is not None else 0
        # The key's first part with its dash: a key is then built of plain str steps, with
        # no format spec (a row's key costs half what the f-string in RowKeys.key does).
        tag, head = (self.keys.tag + "-", self.keys.head) if self.keys is not None else ("", b"")
        crc32 = zlib.crc32
        limit = self.max_row_bytes - ENVELOPE_BYTES - overhead
        # No sendable row is longer; room is left for whitespace and a CRLF.
        cap = self.max_row_bytes + _SLACK
        number, offset, expected = self._line, self._offset, self._size
        try:
            while len(rows) + len(rejects) < max_lines:
                line = readline(cap)
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
                    overhead, tag, head = self.keys.overhead, self.keys.tag + "-", self.keys.head
                    limit = self.max_row_bytes - ENVELOPE_BYTES - overhead
                if skip is not None and skip(number):
                    self.skipped += 1
                    continue
                if size > len(line):
                    kept = f" (the rejects file keeps its first {_SLACK} bytes)"
                    why = _too_long(size, self.max_row_bytes) + kept
                    rejects.append(Reject(number, start, offset, why, line[:_SLACK]))
                    continue
                raw = line.strip(_WHITESPACE)
                if number == 1 and raw.startswith(BOM):
                    raw = raw[len(BOM) :].strip(_WHITESPACE)
                if not raw:
                    continue
                reason: str | None = None
                try:
                    value = loads(raw)
                except orjson.JSONDecodeError as exc:
                    reason = _parse_error(exc)
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
                        else _check_value(value, raw, self.max_row_bytes, key_field, overhead)
                    )
                if reason is None:
                    if key_field is not None:
                        # As RowKeys.key: "<tag>-<line, 12 digits>-<crc32, 8 hex digits>".
                        crc = crc32(raw).to_bytes(4, "big").hex()
                        key = f"{tag}{str(number).zfill(LINE_DIGITS)}-{crc}"
                        raw = b"".join((head, key.encode(), b'",', raw[1:]))
                        keys.append(key)
                    rows.append(raw)
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
        return chunk

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
