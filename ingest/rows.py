"""Rows: what flows from a source to the batcher, and the API's rules for one row.

``Chunk`` is a stretch of input's rows (raw bytes, lines, offsets, keys, kept in
parallel lists: a Python object per row costs more than reading it) and its
``Reject`` s; ``check_value`` holds the API's rules for a row (a non-empty JSON
object, no reserved field, a size the body limit allows). Every source format
gives out these, so the batcher, the sender and the journal depend on this
module, never on one reader.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import orjson

BOM = b"\xef\xbb\xbf"
RESERVED_FIELDS = frozenset({"id", "created_at", "updated_at", "time", "count"})
RESERVED_PREFIX = "source_record_"
# `{"examples":[` + `]}`: the envelope every batch body carries.
ENVELOPE_BYTES = 15
WHITESPACE = b" \t\r\n"  # JSON's; a row's bytes are its line without them at either end


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


def plain_rows(lines: list[bytes], limit: int, fields: frozenset[str]) -> list[bytes] | None:
    """The rows of ``lines`` (one or more), if every line is a plain row; None if any is not.

    Plain: a non-empty JSON object, no field of ``fields`` (the reserved ones and the key
    field) at its top, no ``"source_record_`` anywhere in it, at most ``limit`` bytes. Each
    check is one pass in C over all the lines: a loop in Python over them costs more than
    their parse. When one line is not plain the caller looks at each, for its reason.
    """
    rows = list(map(bytes.strip, lines, repeat(WHITESPACE)))
    if (
        b"" in rows
        or max(map(len, rows)) > limit
        or any(map(bytes.__contains__, rows, repeat(b'"source_record_')))
    ):
        return None
    try:
        # Each value is dropped once checked: a chunk's values held together cost their
        # parse twice over (the memory they need, and the cyclic collector's passes).
        plain = all(map(_plain_value, map(orjson.loads, rows), repeat(fields)))
    except orjson.JSONDecodeError:
        return None
    return rows if plain else None


def _plain_value(value: Any, fields: frozenset[str]) -> bool:
    return type(value) is dict and bool(value) and fields.isdisjoint(value)


def natural_key(value: object) -> str | None:
    """A ``--key-from`` value as a key: its JSON text (a string and a number never collide)."""
    if (type(value) is str and value) or type(value) is int:
        return orjson.dumps(value).decode()
    return None


def parse_error(exc: orjson.JSONDecodeError) -> str:
    if "UTF-8" in str(exc):
        return "not valid UTF-8"
    # orjson counts lines within the row, always line 1: only the column helps.
    return f"not valid JSON: {exc.msg} at column {exc.colno}"


def check_value(
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
        return too_long(len(raw), max_row_bytes, overhead)
    return None


def too_long(size: int, max_row_bytes: int, overhead: int = 0) -> str:
    """Why a row of ``size`` bytes is not sent: it names the real limit, not batch_bytes."""
    key = f" and its key {overhead}" if overhead else ""
    return (
        f"row is {size:,} bytes; with batch_bytes {max_row_bytes:,} a row may hold at most "
        f"{max_row_bytes - ENVELOPE_BYTES - overhead:,} (the request envelope takes "
        f"{ENVELOPE_BYTES}{key}); raise batch_bytes or shrink the row"
    )
