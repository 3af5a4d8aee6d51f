"""Keys: a stable key per row, spliced into the row's bytes, so a row can be found again.

Takes a row's raw bytes and its line; gives out the row with one more field,
``"ingest_key": "<input>-<line>-<row>"``, placed first, every other byte left
as written. The key is made of three parts:

- ``input``: 8 hex digits of a hash of the input's first line (of its first
  ``TAG_BYTES``, which every reader holds, whatever its batch_bytes, and a
  resumed gzip input that reads line 1 whole gets the same). Content, not the
  path (a moved, renamed or re-compressed file keeps its keys), and not the size
  (a file that grows at its end, like a daily-appended log, keeps its first line).
- ``line``: the row's line number, zero-padded to 12 digits, so the keys of one
  batch (lines a..b) are one range of strings: ``>= key(a)`` and ``< key(b + 1)``.
- ``row``: 8 hex digits of the CRC-32 of the row's own bytes, so two inputs that
  happen to share a first line still give different keys to different rows.

The same input always gives the same keys, on a resumed or repeated run, and
to ``ingest verify``. ``RowKeys.parse`` reads a key back into its parts.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat

import orjson

DEFAULT_KEY_FIELD = "ingest_key"
LINE_DIGITS = 12  # lines up to 10^12: far past any file a run can read
TAG_BYTES = 2048  # no more than the least any reader holds of a line (batch_bytes 1 KiB + slack)
_PAD = 10**LINE_DIGITS
_KEY = re.compile(r"([0-9a-f]{8})-([0-9]{12})-([0-9a-f]{8})\Z")
_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def input_tag(first_line: bytes) -> str:
    """The key part that names an input: a hash of its first line (BOM and whitespace aside)."""
    line = first_line[:TAG_BYTES].strip(_WHITESPACE)
    if line.startswith(_BOM):
        line = line[len(_BOM) :].strip(_WHITESPACE)
    return hashlib.blake2b(line, digest_size=4).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyParts:
    """A key read back: the input it names, the line, and the row's checksum."""

    tag: str
    line: int
    crc: str


@dataclass(frozen=True, slots=True)
class RowKeys:
    """Makes the keys of one input's rows and splices them in.

    keys = RowKeys(field="ingest_key", tag=input_tag(first_line))
    key = keys.key(7, raw)          # "3fa9c01b-000000000007-9ad3f00c"
    row = keys.splice(raw, key)     # b'{"ingest_key":"3fa9...",' + raw[1:]
    """

    field: str
    tag: str

    @property
    def head(self) -> bytes:
        """What a keyed row starts with, up to the key's value."""
        return b"{" + orjson.dumps(self.field) + b':"'

    @property
    def overhead(self) -> int:
        """Bytes the key adds to a row: the field, the key and its quotes, a comma."""
        return len(self.head) + 8 + 1 + LINE_DIGITS + 1 + 8 + 2

    def key(self, line: int, raw: bytes) -> str:
        """The key of the row ``raw`` on ``line``."""
        return f"{self.tag}-{line:0{LINE_DIGITS}d}-{zlib.crc32(raw):08x}"

    def splice(self, raw: bytes, key: str) -> bytes:
        """``raw`` (a JSON object's bytes, non-empty) with the key as its first field."""
        return self.head + key.encode("ascii") + b'",' + raw[1:]

    def splice_all(self, raws: list[bytes], lines: list[int], keys: list[str]) -> list[bytes]:
        """``splice`` of each of ``raws`` with its ``key`` (on its line of ``lines``); the keys
        are added to ``keys``.

        The same bytes as ``key`` and ``splice`` row by row, in passes that run in C:
        made one by one in Python, a row's key and splice cost a third of its read.
        """
        # 10**12 + line is "1" and the line's 12 digits: joined by "-", split at "-1".
        digits = "-".join(map(str, map(_PAD.__add__, lines)))[1:].split("-1")
        crcs = struct.pack(f">{len(raws)}I", *map(zlib.crc32, raws)).hex("-", 4).split("-")
        made = list(map("".join, zip(repeat(self.tag + "-"), digits, repeat("-"), crcs)))
        keys.extend(made)
        tails: Iterator[bytes] = map(bytes.__getitem__, raws, repeat(slice(1, None)))
        return list(
            map(b"".join, zip(repeat(self.head), map(str.encode, made), repeat(b'",'), tails))
        )

    def unspliced(self, row: bytes, key: str) -> bytes:
        """The row as the input holds it: ``row`` (made by ``splice``) without its key."""
        return b"{" + row[len(self.head) + len(key) + 2 :]

    def bounds(self, first_line: int, last_line: int) -> tuple[str, str]:
        """Keys ``lo``, ``hi``: a key of this input is on lines first..last iff lo <= key < hi."""
        return (
            f"{self.tag}-{first_line:0{LINE_DIGITS}d}",
            f"{self.tag}-{last_line + 1:0{LINE_DIGITS}d}",
        )

    @staticmethod
    def parse(value: object) -> KeyParts | None:
        """The parts of a key made by ``RowKeys``; None for anything else."""
        if not isinstance(value, str) or (m := _KEY.match(value)) is None:
            return None
        return KeyParts(m.group(1), int(m.group(2)), m.group(3))
