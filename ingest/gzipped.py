"""Gzip input for the source: no row of a member is read out before its CRC passes.

Takes the path of a gzip file (one member or several, as ``cat a.gz b.gz``
makes, with optional zero padding); gives out the decompressed bytes of every
intact member, then raises ``BrokenInput`` where the first damaged one begins.

A flipped byte in the middle of a member inflates to wrong but valid-looking
rows; only the CRC-32 and length in the member's trailer tell, and they come
after every row of it. Holding a member's rows until then would cost memory in
proportion to the member (most files are one member). So the stream first
inflates the whole file to nowhere, checking every member, and only then reads
it again for the rows: memory stays bounded by one step, and the cost is a
second inflate of the file before the first row is sent (measured in the
README). A resumed run verifies again.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

GZIP_MAGIC = b"\x1f\x8b"
_STEP = 1 << 16  # compressed bytes the check reads at a time
_OUT = 1 << 20  # most bytes the check inflates at a time: memory stays flat on any ratio
_READ_STEP = 1 << 13  # compressed bytes per read of rows: at most 8 MiB out, even at 1032:1


class BrokenInput(Exception):
    """Raised when the input is damaged or changed under the run; the message says where."""


def changed_under_run(had: int, ends: int) -> BrokenInput:
    """The input is shorter than it was when the run took its fingerprint."""
    return BrokenInput(
        f"the input changed under the run: it had {had:,} bytes when the run started, "
        f"it ends at byte {ends:,}; restore the original file and re-run to resume"
    )


def rewritten_under_run(why: str) -> BrokenInput:
    """The input was replaced or written to while the run read it."""
    return BrokenInput(
        f"the input changed under the run: {why}. Rows read since may be of the new "
        "content, so the run is not complete; restore the original file and re-run to "
        "resume, or start over with --restart (rows already sent would be sent again)"
    )


def _damaged(member: int, start: int, what: str) -> BrokenInput:
    if start == 0:
        then = (
            "no row of the file is sent: replace it with an intact copy and re-run with "
            "--restart (an intact copy is another input to the checkpoint)"
        )
    else:
        # An intact copy is another input to the checkpoint, and --restart would send the
        # members before this one again. Its tail from this member on is a gzip of its own.
        then = (
            f"no row of it is sent, while the {member - 1} member(s) before it are delivered. "
            "To send the rest without sending those again, upload the tail of an intact "
            f"copy as a new input: tail -c +{start + 1} INTACT.gz > rest.jsonl.gz"
        )
    return BrokenInput(f"gzip member {member} (from compressed byte {start:,}) {what}: {then}")


class GzipStream(io.RawIOBase):
    """A gzip file decompressed as a stream, once every member in it has been checked.

        stream = io.BufferedReader(GzipStream("rows.jsonl.gz", expected_size=n))
        for line in stream: ...   # raises BrokenInput where the damage begins

    ``expected_size``: the file's size when the run started; a file that ends
    before it changed under the run. The check runs at the first read, in the
    reader's thread, or at ``check()``.
    """

    def __init__(self, path: str, *, expected_size: int | None = None) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed in close())
        super().__init__()
        self._expected = expected_size
        self._good_end = -1  # where the intact members end; -1 until checked
        self._damage: BrokenInput | None = None
        self._consumed = 0
        self._inflate: Any = None  # the member being read; None between members
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def check(self) -> None:
        """Check every member (blocking: it inflates the whole file); the first read also does."""
        if self._good_end < 0:
            self._good_end, self._damage = self._check()
            self._file.seek(0)

    def readinto(self, buffer: Any) -> int:
        self.check()
        while not self._pending:
            if self._consumed == self._good_end:
                if self._damage is not None:
                    raise self._damage
                return 0
            self._step()
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _check(self) -> tuple[int, BrokenInput | None]:
        """Inflate the whole file to nowhere; return where its intact members end, and the damage.

        zlib checks each member's CRC-32 and length when it reaches the trailer.
        """
        read = self._file.read
        inflate: Any = None
        position = good_end = start = members = 0
        while data := read(_STEP):
            position += len(data)
            while data:
                if inflate is None:
                    data = data.lstrip(b"\0")  # padding between or after members
                    if not data:
                        break
                    start, inflate = position - len(data), zlib.decompressobj(wbits=31)
                try:
                    while True:
                        out = inflate.decompress(data, _OUT)
                        data = inflate.unconsumed_tail
                        if inflate.eof or (not data and len(out) < _OUT):
                            break
                except zlib.error as exc:
                    return good_end, _damaged(members + 1, start, f"is damaged ({exc})")
                if inflate.eof:
                    data, inflate = inflate.unused_data, None
                    members += 1
                    good_end = position - len(data)
        if self._expected is not None and position < self._expected:
            return good_end, changed_under_run(self._expected, position)
        if inflate is not None:
            what = f"is cut short: the file ends at byte {position:,}, inside it"
            return good_end, _damaged(members + 1, start, what)
        return good_end, None

    def _step(self) -> None:
        """Inflate the next stretch of the checked members."""
        data = self._file.read(min(_READ_STEP, self._good_end - self._consumed))
        if not data:  # the check saw more: the file was cut since
            raise changed_under_run(self._expected or self._good_end, self._consumed)
        self._consumed += len(data)
        out: list[bytes] = []
        try:
            while data:
                if self._inflate is None:
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                    self._inflate = zlib.decompressobj(wbits=31)
                out.append(self._inflate.decompress(data))
                data = b""
                if self._inflate.eof:
                    data, self._inflate = self._inflate.unused_data, None
        except zlib.error as exc:
            # The check passed these bytes: they were rewritten since.
            raise BrokenInput(
                f"the input changed under the run: checked at the start, it no longer "
                f"inflates near compressed byte {self._consumed:,} ({exc}); rows of that "
                "member may have been sent. Restore the original file and re-run to resume"
            ) from exc
        self._pending = memoryview(b"".join(out))

    def close(self) -> None:
        # A stream whose file failed to open is still finalized: it has nothing to close.
        if (file := getattr(self, "_file", None)) is not None:
            file.close()
        super().close()
