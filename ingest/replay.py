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
from typing import Any, TypeVar

import orjson

from ingest.errors import CheckpointError
from ingest.refusals import REFUSED_REASON, same_reason

# How a reject reason for a row the server failed on (HTTP 500 on every attempt) begins.
SERVER_ERROR_REASON = "server error: "
# 2: the input's mtime and sampled blocks join its identity; 3: settling (present, deleted)
JOURNAL_VERSION = 3
_READABLE_VERSIONS = (1, 2, 3)
T = TypeVar("T")


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
    unknown_outcomes: int = 0  # requests whose outcome was unknown (``unknown`` records)
    present_rows: int = 0  # found stored by a look-up (in ``delivered_rows`` too)
    deleted_copies: int = 0  # extra copies deleted by settling
    next_seq: int = 0
    attempts: int = 0
    in_flight: list[dict[str, Any]] = field(default_factory=list)
    # Rows rejected for server errors since the last delivery, across runs: the
    # sender's guard against a broken server starts from it, or every re-run of
    # a server that 500s on everything would reject a few more good rows.
    server_error_streak: int = 0
    # Rows the server refused for one reason (normalised) since the last delivery: the
    # sender's guard against a dataset that refuses everything starts from it likewise.
    refusal_streak: tuple[str, int] = ("", 0)
    finished: dict[str, Any] | None = None
    # Batches whose rows were sent after a look-up and not yet looked at again:
    # (seq, part) -> (first line, last line).
    recheck: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)
    version: int | None = None  # the header's
    # The last run's key field (None with --no-key); unrecorded before journal version 3's
    # start records carried it.
    key_field: str | None = None
    keys_recorded: bool = False
    # Per run, in order: unknown outcomes it resent, and batches it resent as in flight.
    runs: list[RunResends] = field(default_factory=list)
    unknown_lines: list[tuple[int, int]] = field(default_factory=list)
    resent_lines: list[tuple[int, int]] = field(default_factory=list)
    _resends: ResendTally = field(default_factory=lambda: ResendTally())

    @property
    def unknown_resent(self) -> int:
        """Unknown outcomes whose rows the run that met them sent again, in all runs."""
        return sum(r.unknown_resent for r in self.runs)

    @property
    def in_flight_resent(self) -> int:
        """Batches left in flight by a run that a later run sent again, in all runs."""
        return sum(r.in_flight_resent for r in self.runs)

    @property
    def settles(self) -> bool:
        """Whether the last run had row keys: then its batches in flight are looked up, not resent.

        A journal from before start records named the key field: keys if it is of
        version 3 (keys were on by default), none before.
        """
        if self.keys_recorded:
            return self.key_field is not None
        return isinstance(self.version, int) and self.version >= 3

    def maybe_duplicated(self) -> list[tuple[int, int]]:
        """Lines that may be stored twice: of batches with an unknown outcome or left in flight."""
        spans = self.unknown_lines + self.resent_lines
        spans += [(r["lines"][0], r["lines"][1]) for r in self.in_flight]
        return merge_spans(spans)

    def apply(self, rec: dict[str, Any], sending: dict[tuple[int, str], dict[str, Any]]) -> None:
        """Fold one journal record into the state."""
        kind = rec.get("t")
        if kind == "header":
            self.fingerprint = rec.get("fingerprint")
            self.version = rec.get("v")
        elif kind == "identity" and self.fingerprint is not None:
            before = self.fingerprint.get("input")
            if not isinstance(before, dict) or before.get("size") != rec["input"].get("size"):
                self.finished = None  # the input grew: its new lines are not done
            self.fingerprint = {**self.fingerprint, "input": rec["input"]}
        elif kind == "start":
            self.attempts += 1
            keys = rec.get("keys")
            self.keys_recorded, self.key_field = (
                "keys" in rec,
                keys if isinstance(keys, str) else None,
            )
            resent = outermost(rec.get("resent_in_flight") or [], lambda r: (r[2], r[3]))
            self.resent_lines += [(r[2], r[3]) for r in resent]
            self.runs.append(RunResends(in_flight_resent=len(resent)))
            self._resends = ResendTally()
        elif kind == "rejected":
            line = rec["line"]
            start, end = rec["bytes"]
            self.covered.add(line, line, start, end)
            self.rejected_rows += 1
            reason = str(rec.get("reason", ""))
            if reason.startswith(SERVER_ERROR_REASON):
                self.server_error_streak += 1
            elif reason.startswith(REFUSED_REASON):
                alike = same_reason(reason.removeprefix(REFUSED_REASON))
                before, rows = self.refusal_streak
                self.refusal_streak = (alike, rows + 1 if alike == before else 1)
        elif kind == "sending":
            sending[(rec["seq"], rec["part"])] = rec
            self.next_seq = max(self.next_seq, rec["seq"] + 1)
        elif kind == "unknown":
            self.unknown_outcomes += 1
            batch = sending.get((rec["seq"], rec["part"]))
            if batch is not None:
                self.unknown_lines.append((batch["lines"][0], batch["lines"][1]))
            self._count_resend(kind, rec)
        elif kind == "split":
            self._count_resend(kind, rec)
        elif kind == "done":
            self._count_resend(kind, rec)
            sending.pop((rec["seq"], rec["part"]), None)
            (first, last), (start, end) = rec["lines"], rec["bytes"]
            self.covered.add(first, last, start, end)
            self.delivered_rows += rec["rows"]
            self.done_batches += 1
            if rec["rows"] > 0:  # a reject's own done record has 0 rows
                self.server_error_streak, self.refusal_streak = 0, ("", 0)
            if rec.get("recheck") is True:
                self.recheck[(rec["seq"], rec["part"])] = (first, last)
        elif kind == "present":
            for first, last, start, end in rec["spans"]:
                self.covered.add(first, last, start, end)
            self.delivered_rows += rec["rows"]
            self.present_rows += rec["rows"]
            self.server_error_streak, self.refusal_streak = 0, ("", 0)
        elif kind == "checked":
            self.recheck.pop((rec["seq"], rec["part"]), None)
        elif kind == "deleted":
            self.deleted_copies += len(rec["ids"])
        elif kind == "finished":
            self.finished = rec

    def _count_resend(self, kind: str, rec: dict[str, Any]) -> None:
        if self._resends.note(kind, rec["seq"], rec["part"]):
            if not self.runs:  # records before any start: only a hand-made journal
                self.runs.append(RunResends())
            self.runs[-1].unknown_resent += 1


@dataclass(slots=True)
class RunResends:
    """What one run sent again: the meaning both the summary and ``ingest status`` use.

    ``unknown_resent``: requests whose outcome was unknown (5xx, timeout, dropped
    connection) and whose rows the same run then sent again (retried, or halved).
    One not resent (a stop, a kill, retries run out) is left in flight instead.
    ``in_flight_resent``: batches an earlier run left in flight (one counted once,
    however many runs left it) that this run sends again.
    """

    unknown_resent: int = 0
    in_flight_resent: int = 0


class ResendTally:
    """Counts unknown outcomes followed, in the same run, by another record of their batch.

    The journal writer keeps one for the running run (the summary's count), and
    replaying a journal keeps one per run (``ingest status``): one rule, both places.
    """

    def __init__(self) -> None:
        self.count = 0
        self._open: set[tuple[int, str]] = set()

    def note(self, kind: Any, seq: int, part: str) -> bool:
        """Fold in a record of batch ``(seq, part)``; True if it resends an unknown outcome."""
        key = (seq, part)
        resent = kind in ("unknown", "split", "done") and key in self._open
        if kind == "unknown":
            self._open.add(key)
        elif kind in ("split", "done"):
            self._open.discard(key)
        self.count += resent
        return resent


def outermost(items: list[T], lines: Callable[[T], tuple[int, int]]) -> list[T]:
    """``items`` less those whose lines lie within another's: a batch sent again is one."""
    kept: list[T] = []
    reach = 0
    for item in sorted(items, key=lambda i: (lines(i)[0], -lines(i)[1])):
        if kept and lines(item)[1] <= reach:
            continue
        kept.append(item)
        reach = max(reach, lines(item)[1])
    return kept


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Line spans sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def parse_journal(data: bytes, path: str) -> tuple[JournalState, int]:
    """The state ``data`` records, and how many of its bytes are whole lines."""
    state = JournalState()
    sending: dict[tuple[int, str], dict[str, Any]] = {}
    good = data.rfind(b"\n") + 1  # past it lies a torn write: never acknowledged, dropped
    # Only "\n" ends a line (as the writer ends them): "\r" is damage within one, and
    # counting it as a break too would name the wrong line in the message.
    for number, line in enumerate(data[:good].split(b"\n")[:-1], start=1):
        try:
            rec = orjson.loads(line)
            if number == 1:
                _check_header(rec, path)
            if (problem := _problem(rec)) is not None:
                raise ValueError(problem)
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
    # Resent by a later run and in flight again, the same lines are one batch, not two.
    settled = state.covered.covers
    unsettled = [r for r in sending.values() if not settled(*r["lines"])]
    state.in_flight = sorted(
        outermost(unsettled, lambda r: (r["lines"][0], r["lines"][1])),
        key=lambda r: (r["seq"], r["part"]),
    )
    return state, good


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_span(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "seq": _is_int,
    "part": _is_str,
    "line": _is_int,
    "rows": _is_int,
    "lines": _is_span,
    "bytes": _is_span,
    "fingerprint": lambda v: isinstance(v, dict) and isinstance(v.get("input"), dict),
    "input": lambda v: isinstance(v, dict),
    "spans": lambda v: (
        isinstance(v, list)
        and all(isinstance(s, list) and len(s) == 4 and all(_is_int(x) for x in s) for s in v)
    ),
    "ids": lambda v: isinstance(v, list),
}
_FIELDS = {
    "header": ("fingerprint",),
    "identity": ("input",),
    "rejected": ("line", "bytes"),
    "sending": ("seq", "part", "lines", "bytes", "rows"),
    "split": ("seq", "part"),
    "unknown": ("seq", "part"),
    "done": ("seq", "part", "lines", "bytes", "rows"),
    "present": ("seq", "part", "spans", "rows"),
    "deleted": ("seq", "part", "ids"),
    "checked": ("seq", "part"),
}


def _problem(rec: Any) -> str | None:
    """What is wrong with a record's shape, so that applying it cannot fail halfway."""
    if not isinstance(rec, dict):
        return "a record is not a JSON object"
    kind = rec.get("t")
    for name in _FIELDS.get(kind, ()) if isinstance(kind, str) else ():
        if name not in rec:
            return f"a {kind} record without {name!r}"
        if not _CHECKS[name](rec[name]):
            return f"a {kind} record with a bad {name!r}: {rec[name]!r}"[:200]
    if kind == "start":
        resent = rec.get("resent_in_flight") or []
        shape = (_is_int, _is_str, _is_int, _is_int)
        if not isinstance(resent, list) or not all(
            isinstance(r, list)
            and len(r) == 4
            and all(ok(v) for ok, v in zip(shape, r, strict=True))
            for r in resent
        ):
            return "a start record with a bad 'resent_in_flight'"
        if not isinstance(rec.get("keys"), str | None):
            return "a start record with a bad 'keys'"
    if kind == "finished" and not _is_int(rec.get("exit_code", 0)):
        return "a finished record with a bad 'exit_code'"
    return None


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
