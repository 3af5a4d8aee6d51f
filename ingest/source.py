"""Source: reads JSONL (plain, ``.gz`` or ``-`` for stdin) a line at a time.

Takes a path; gives out chunks of ``Record`` (a valid row, its line number, its
byte span and its raw bytes) and ``Reject`` (a line that must not be sent, with
the reason). Memory is bounded by one chunk, whatever the size of the file.

A row is sent as the bytes the file holds, never re-serialized: a parse and
dump would turn ``12345678901234567890123`` into a float (orjson does) and may
change escapes. orjson only *validates* the line.
"""

from __future__ import annotations

import base64
import gzip
import io
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import orjson

from ingest.errors import SourceError

BOM = b"\xef\xbb\xbf"
RESERVED_FIELDS = frozenset({"id", "created_at", "updated_at", "time", "count"})
RESERVED_PREFIX = "source_record_"
# `{"examples":[` + `]}`: the envelope every batch body carries.
ENVELOPE_BYTES = 15
_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True, slots=True)
class Record:
    """A valid row: its raw JSON object bytes and where it sits in the input."""

    line: int
    start: int
    end: int
    raw: bytes


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


Item = Record | Reject


def check_row(raw: bytes, *, max_row_bytes: int) -> str | None:
    """Return why ``raw`` (a trimmed, non-empty line) cannot be sent, or None if it can."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            return "not valid UTF-8"
        return f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        return f"not a JSON object (found {type(value).__name__})"
    if not value:
        return "empty object (the API refuses examples with no fields)"
    for key in value:
        if key in RESERVED_FIELDS or key.startswith(RESERVED_PREFIX):
            return (
                f"reserved field {key!r} (the API refuses id, created_at, updated_at, "
                "time, count and source_record_*; rename it)"
            )
    if len(raw) + ENVELOPE_BYTES > max_row_bytes:
        return (
            f"row is {len(raw):,} bytes, larger than batch_bytes ({max_row_bytes:,}); "
            "raise batch_bytes or shrink the row"
        )
    return None


def open_input(path: str) -> IO[bytes]:
    """Open ``path`` for binary reading: ``-`` is stdin, ``*.gz`` is decompressed."""
    if path == "-":
        return sys.stdin.buffer
    try:
        if path.endswith(".gz"):
            return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
        return open(path, "rb", buffering=1 << 20)
    except OSError as exc:
        raise SourceError(f"cannot open input: {exc.strerror}", path=path) from exc


class JsonlSource:
    """Reads a JSONL input in chunks, from a given line and byte offset.

    ``skip(line)`` says a line is already done (a resumed run): it is read but
    neither checked nor sent. Reading is blocking; call ``read_chunk`` from a
    worker thread.

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
    ) -> None:
        self.path = path
        self.max_row_bytes = max_row_bytes
        self._file = open_input(path)
        self._line = start_line - 1
        self._offset = start_offset
        self._skip = skip
        self.skipped = 0
        self.blank = 0
        try:
            self._position(start_line, start_offset)
        except BaseException:
            self.close()
            raise

    def _position(self, start_line: int, start_offset: int) -> None:
        """Move to ``start_offset``: seek where the input allows it, read past otherwise."""
        if start_offset == 0:
            return
        if self._file.seekable() and not self.path.endswith(".gz"):
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
            self._line += 1
            self._offset += len(line)

    def read_chunk(self, max_lines: int = 2048) -> list[Item]:
        """Read until ``max_lines`` rows or rejects; an empty list means the input is exhausted."""
        items: list[Item] = []
        readline = self._file.readline
        skip = self._skip
        while len(items) < max_lines:
            try:
                line = readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise SourceError(
                    f"cannot read past this line: {exc}", path=self.path, line=self._line
                ) from exc
            if not line:
                break
            self._line += 1
            start = self._offset
            self._offset += len(line)
            if skip is not None and skip(self._line):
                self.skipped += 1
                continue
            raw = line.strip(_WHITESPACE)
            if self._line == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :].strip(_WHITESPACE)
            if not raw:
                self.blank += 1
                continue
            reason = check_row(raw, max_row_bytes=self.max_row_bytes)
            if reason is None:
                items.append(Record(self._line, start, self._offset, raw))
            else:
                items.append(Reject(self._line, start, self._offset, reason, line.rstrip(b"\r\n")))
        return items

    @property
    def position(self) -> tuple[int, int]:
        """The last line read and the byte offset after it."""
        return self._line, self._offset

    def close(self) -> None:
        """Close the input (never stdin)."""
        if self._file is not sys.stdin.buffer:
            self._file.close()

    def __enter__(self) -> JsonlSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
