"""Refusals: tells a refusal of the dataset from a refusal of some rows.

Takes, from the sender, each row the server refused (400/413/422, alone in its
batch after halving), each delivery, and the end of each batch as read;
gives back a ``DatasetRefusedError`` once every row of ``BATCHES_IN_A_ROW``
whole batches in a row was refused for the same reason with nothing delivered
between. Bad rows are rare and scattered: bisecting finds them and the good
rows around them are delivered. A schema the rows do not fit, or a locked or
read-only dataset, refuses every row alike, and bisecting the whole input into
the rejects file would only turn a message into a million rejects.

Reasons are compared without their row-specific parts: problem details often
quote the row's values or name its line or index ("row 17: field 'x' ..."),
so digits and quoted text are blanked out first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ingest.errors import DatasetRefusedError

# Whole batches whose every row was refused alike, in a row, that stop the run.
BATCHES_IN_A_ROW = 3
# How the reason of a row the server refused begins in the rejects file and the journal.
REFUSED_REASON = "refused by the server: "

_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`")
_NUMBER = re.compile(r"\d+")


def same_reason(problem: str) -> str:
    """``problem`` without the parts that differ from row to row (quoted values, numbers).

    The status in front (``HTTP 422: ``) is kept as it is: a 400 and a 422 differ.
    """
    status, sep, text = problem.partition(": ")
    return status + sep + _NUMBER.sub("#", _QUOTED.sub("…", text))


@dataclass(slots=True)
class _Refused:
    reason: str  # normalised
    rows: int = 0
    mixed: bool = False  # some row of the batch was refused for another reason


@dataclass(slots=True)
class RefusalStreak:
    """Whole batches refused alike since the last delivery, and when that is the dataset's doing.

    streak = RefusalStreak()
    streak.refused(seq=4, problem="HTTP 422: field 'x' is not in the schema")
    streak.delivered()              # any delivery: rows are not refused as a whole
    streak.finished(seq=4, rows=1000, name="batch 4")   # raises on the 3rd in a row
    """

    in_a_row: int = BATCHES_IN_A_ROW
    _batches: dict[int, _Refused] = field(default_factory=dict)  # by seq, still being sent
    _streak: int = 0
    _reason: str = ""
    _last: str = ""  # the last such refusal as the server wrote it
    _earlier: bool = False  # the streak began in an earlier run

    def resume(self, reason: str, rows: int) -> None:
        """Carry on an earlier run's streak: ``rows`` refused alike (``reason``, normalised).

        So many rows in a row with nothing delivered between is the stop the earlier run
        made (or was about to): this run stops at its first whole batch refused alike,
        rather than rejecting another few batches' worth of good rows each time it is re-run.
        """
        if rows >= self.in_a_row:
            self._streak, self._reason, self._earlier = self.in_a_row - 1, reason, True

    def refused(self, seq: int, problem: str) -> None:
        """Note a row of batch ``seq`` that the server refused with ``problem``."""
        reason = same_reason(problem)
        got = self._batches.setdefault(seq, _Refused(reason))
        got.mixed |= got.reason != reason
        got.rows += 1
        self._last = problem

    def delivered(self) -> None:
        """Note a delivery: whatever the server refuses, it is not every row."""
        self._streak, self._earlier = 0, False

    def finished(self, seq: int, rows: int, name: str) -> None:
        """Note that batch ``seq`` (of ``rows`` rows) is resolved; raise if that ends a streak."""
        got = self._batches.pop(seq, None)
        whole = got is not None and not got.mixed and got.rows == rows
        if got is not None and (not whole or got.reason != self._reason):
            self._streak, self._earlier = 0, False  # some rows delivered, or another reason
        if got is None or not whole:
            return
        self._streak += 1
        self._reason = got.reason
        if self._streak >= self.in_a_row:
            earlier = " (counting an earlier run's)" if self._earlier else ""
            raise DatasetRefusedError(
                f"{name}: every row of {self._streak} batches in a row{earlier} was refused "
                f"for the same reason, with nothing delivered between ({self._last}). "
                "That is about the dataset rather than the rows (a schema the rows do not fit, "
                "a locked or read-only dataset?), so the run stops instead of rejecting the "
                "whole input. "
                "Fix the dataset (or the input), then re-run the same command: it sends the "
                "rows not yet sent; the rows refused so far are in the rejects file, to send "
                "again from there"
            )
