"""Replay: reads a checkpoint journal back into what the runs before this one did.

Takes a journal's bytes (``ingest.checkpoint`` describes its records); gives
out a ``JournalState``: the lines dealt with (delivered or rejected) as
``LineRanges``, the counts, and the batches left in flight. ``ingest run``
resumes from it; ``ingest status`` prints it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingest.errors import CheckpointError

JOURNAL_VERSION = 2  # 2: the input's mtime and sampled blocks join its identity
_READABLE_VERSIONS = (1, 2)


class LineRanges:
    """Lines already dealt with (delivered or rejected), as ranges with their byte spans."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, int, int]] = []
        self._merged: list[tuple[int, int]] | None = None

    def add(self, first: int, last: int, start: int, end: int) -> None:
        """Record that lines ``first..last`` (bytes ``start..end``) are dealt with."""
        self._ranges.append((first, last, start, end))
        self._merged = None

    def __len__(self) -> int:
        return len(self._ranges)

    def prefix(self) -> tuple[int, int]:
        """The last line of the unbroken run of dealt-with lines from line 1, and its end byte."""
        line, offset = 0, 0
        for first, last, _, end in sorted(self._ranges):
            if first > line + 1:
                break
            if last > line:
                line, offset = last, end
        return line, offset

    def covers(self, first: int, last: int) -> bool:
        """Whether every line of ``first..last`` is dealt with."""
        ranges = self.merged()
        i = bisect_right(ranges, (first, math.inf)) - 1
        return i >= 0 and ranges[i][0] <= first and last <= ranges[i][1]

    def merged(self) -> list[tuple[int, int]]:
        """The line ranges, sorted and merged."""
        if self._merged is None:
            out: list[tuple[int, int]] = []
            for first, last, _, _ in sorted(self._ranges):
                if out and first <= out[-1][1] + 1:
                    if last > out[-1][1]:
                        out[-1] = (out[-1][0], last)
                else:
                    out.append((first, last))
            self._merged = out
        return self._merged

    def skipper(self) -> Callable[[int], bool]:
        """A test ``line -> already dealt with``, for line numbers that only go up."""
        ranges = self.merged()
        index = 0

        def covered(line: int) -> bool:
            nonlocal index
            while index < len(ranges) and ranges[index][1] < line:
                index += 1
            return index < len(ranges) and ranges[index][0] <= line

        return covered


@dataclass(slots=True)
class JournalState:
    """What a journal says about the runs before this one."""

    fingerprint: dict[str, Any] | None = None
    covered: LineRanges = field(default_factory=LineRanges)
    delivered_rows: int = 0
    rejected_rows: int = 0
    done_batches: int = 0
    unknown_outcomes: int = 0
    next_seq: int = 0
    attempts: int = 0
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    finished: dict[str, Any] | None = None

    def apply(self, rec: dict[str, Any], sending: dict[tuple[int, str], dict[str, Any]]) -> None:
        """Fold one journal record into the state."""
        kind = rec.get("t")
        if kind == "header":
            self.fingerprint = rec.get("fingerprint")
        elif kind == "identity" and self.fingerprint is not None:
            self.fingerprint = {**self.fingerprint, "input": rec["input"]}
        elif kind == "start":
            self.attempts += 1
        elif kind == "rejected":
            line = rec["line"]
            start, end = rec["bytes"]
            self.covered.add(line, line, start, end)
            self.rejected_rows += 1
        elif kind == "sending":
            sending[(rec["seq"], rec["part"])] = rec
            self.next_seq = max(self.next_seq, rec["seq"] + 1)
        elif kind == "unknown":
            self.unknown_outcomes += 1
        elif kind == "done":
            sending.pop((rec["seq"], rec["part"]), None)
            (first, last), (start, end) = rec["lines"], rec["bytes"]
            self.covered.add(first, last, start, end)
            self.delivered_rows += rec["rows"]
            self.done_batches += 1
        elif kind == "finished":
            self.finished = rec


def parse_journal(data: bytes, path: str) -> tuple[JournalState, int]:
    """The state ``data`` records, and how many of its bytes are whole lines."""
    state = JournalState()
    sending: dict[tuple[int, str], dict[str, Any]] = {}
    good = data.rfind(b"\n") + 1  # past it lies a torn write: never acknowledged, dropped
    for number, line in enumerate(data[:good].splitlines(), start=1):
        try:
            rec = orjson.loads(line)
            if number == 1:
                _check_header(rec, path)
            state.apply(rec, sending)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if number == 1:
                raise CheckpointError(
                    f"{path} is not an ingest checkpoint; ingest will not overwrite it: "
                    "give --checkpoint another path"
                ) from exc
            raise CheckpointError(
                f"{path}:{number}: checkpoint is corrupt ({exc}); start over with "
                "`ingest run ... --restart` (the old file is kept as a .bak) or use another "
                "--checkpoint"
            ) from exc
    # In flight: sent (maybe committed) and not yet settled. A batch halved after a
    # refusal, or re-sent by a later run, is settled once its lines are done or rejected.
    settled = state.covered.covers
    state.in_flight = sorted(
        (r for r in sending.values() if not settled(*r["lines"])),
        key=lambda r: (r["seq"], r["part"]),
    )
    return state, good


def _check_header(rec: Any, path: str) -> None:
    if not isinstance(rec, dict) or rec.get("t") != "header":
        raise ValueError("first line is not an ingest checkpoint header")
    version = rec.get("v")
    if isinstance(version, int) and version > JOURNAL_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint was written by a newer ingest (journal version {version}); "
            "upgrade ingest or use another --checkpoint"
        )
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"unknown journal version {version!r}")


def read_journal(path: str) -> JournalState:
    """Read a journal without taking it (for ``ingest status``)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror}") from exc
    return parse_journal(data, path)[0]
