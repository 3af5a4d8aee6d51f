"""Inputs: opening what a source reads: a file (plain or gzip, known by its bytes) or stdin.

Takes a path (``-`` for stdin); gives back a binary reader and, for gzip, the
checked stream under it. Other compressions (xz, bzip2, zstd, zip) are refused
with a hint, as is a closed stdin.
"""

from __future__ import annotations

import io
import sys
from typing import IO

from ingest.errors import SourceError
from ingest.gzipped import GZIP_MAGIC, GzipStream

# Leading bytes of the formats a JSONL input may arrive in by mistake.
_COMPRESSED = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}


def refuse_compressed(head: bytes, path: str) -> None:
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
            refuse_compressed(head, path)
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
