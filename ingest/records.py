"""Records: the journal's schema, one frozen type per kind of record.

The sender, settling and the pipeline write these (``CheckpointJournal.write``);
``ingest.replay`` reads them back, checking the same fields. A batch's records,
in the order they can come:

    Sending   durable before its POST: the lines and bytes it covers
    Unknown   its answer hides whether it was stored (5xx, timeout, dropped connection)
    Split     refused whole (400/413/422): its halves ("0", "1") follow
    Present   looked up after an unknown outcome: the spans of its rows found stored
    Deleted   extra copies of its rows, deleted
    Done      stored (one id a row, checked, not kept), or 0 rows for a batch whose row was rejected
    Checked   the second look at rows sent after a look-up (``Done.recheck``) is made

``Start`` opens each run, ``Finished`` closes a run after which every line is dealt with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ingest.batcher import Batch


@dataclass(frozen=True, slots=True)
class Record:
    """A journal record; ``as_json`` is its line's object, ``t`` naming its kind."""

    KIND: ClassVar[str] = ""

    def as_json(self) -> dict[str, Any]:
        """The object the journal holds for this record (its fields, not copies of them)."""
        names: tuple[str, ...] = self.__slots__
        return {"t": self.KIND, **{name: getattr(self, name) for name in names}}


@dataclass(frozen=True, slots=True)
class Start(Record):
    """A run began: its process and batch settings, and the batches it found in flight."""

    KIND: ClassVar[str] = "start"
    pid: int
    batch_rows: int
    batch_bytes: int
    resent_in_flight: list[list[Any]]  # [seq, part, first line, last line]
    keys: str | None = None  # the field rows are looked up by; None: at-least-once


@dataclass(frozen=True, slots=True)
class Sending(Record):
    """A batch about to be POSTed."""

    KIND: ClassVar[str] = "sending"
    seq: int
    part: str
    lines: list[int]
    bytes: list[int]
    rows: int

    @classmethod
    def of(cls, batch: Batch) -> Sending:
        """The record of ``batch`` going out."""
        return cls(
            batch.seq,
            batch.part,
            [batch.first_line, batch.last_line],
            [batch.start, batch.end],
            len(batch.rows),
        )


@dataclass(frozen=True, slots=True)
class Done(Record):
    """A batch's lines are dealt with: ``rows`` stored (0 when its one row was rejected)."""

    KIND: ClassVar[str] = "done"
    seq: int
    part: str
    lines: list[int]
    bytes: list[int]
    rows: int
    # Rows sent after a look-up found them missing: a commit that was not visible yet
    # may have left a copy, so they are looked at once more (``Checked`` when done).
    recheck: bool = False

    @classmethod
    def of(cls, batch: Batch, rows: int, recheck: bool = False) -> Done:
        """The record of ``batch`` dealt with."""
        return cls(
            batch.seq,
            batch.part,
            [batch.first_line, batch.last_line],
            [batch.start, batch.end],
            rows,
            recheck,
        )


@dataclass(frozen=True, slots=True)
class Unknown(Record):
    """A batch's answer hid whether its rows were stored."""

    KIND: ClassVar[str] = "unknown"
    seq: int
    part: str
    cause: str


@dataclass(frozen=True, slots=True)
class Split(Record):
    """A batch refused whole, to be sent in halves."""

    KIND: ClassVar[str] = "split"
    seq: int
    part: str


@dataclass(frozen=True, slots=True)
class Present(Record):
    """Rows of a batch found stored by a look-up: their spans ``[first, last, start, end]``."""

    KIND: ClassVar[str] = "present"
    seq: int
    part: str
    spans: list[list[int]]
    rows: int


@dataclass(frozen=True, slots=True)
class Deleted(Record):
    """Extra copies of a batch's rows that settling deleted."""

    KIND: ClassVar[str] = "deleted"
    seq: int
    part: str
    ids: list[str]


@dataclass(frozen=True, slots=True)
class Checked(Record):
    """A batch's resent rows were looked at once more, and any copy deleted."""

    KIND: ClassVar[str] = "checked"
    seq: int
    part: str


@dataclass(frozen=True, slots=True)
class Finished(Record):
    """Every line of the input is dealt with; the exit code and totals of all runs."""

    KIND: ClassVar[str] = "finished"
    exit_code: int
    delivered: int
    rejected: int
