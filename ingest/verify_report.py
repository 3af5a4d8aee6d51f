"""The report of ``ingest verify``, and the question a repair asks before it changes anything.

Takes the counts ``ingest.verify`` makes; gives out the text a terminal shows,
the ``--json`` object a scheduler reads, and the repair's question.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

import orjson

SHOWN = 10  # lines and ids named in a report


@dataclass(frozen=True, slots=True, kw_only=True)
class RepairPlan:
    """What a repair is about to do: shown before the user is asked."""

    delete: int
    delete_ids: tuple[str, ...]  # the first few
    send: int
    send_lines: tuple[int, ...]  # the first few


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What the dataset holds of an input. ``exit_code`` is 0 when it balances, else 7."""

    expected: int  # rows of the input that should be in the dataset
    present_once: int
    missing: int
    duplicated: int  # keys held by more than one example
    extra_copies: int  # examples beyond the first of each such key
    not_from_input: int  # examples with this input's key tag, but no row of it
    other_rows: int | None  # examples of other inputs or with no key; None: not read
    rejected: int  # rows not expected: rejected by the source or the server
    rejects_known: bool  # whether a checkpoint or rejects file told the server's rejects
    examples_read: int
    read_by: str  # "range search" or "whole dataset"
    missing_lines: tuple[int, ...]
    duplicated_lines: tuple[int, ...]
    not_from_input_ids: tuple[str, ...]
    deleted: int = 0  # by --repair
    sent: int = 0  # by --repair
    repair: str = ""  # "", "declined", "done", "incomplete"
    balanced: bool
    exit_code: int
    message: str = ""

    def to_json(self) -> bytes:
        """The report as one JSON object (``--json``)."""
        return orjson.dumps(asdict(self))

    def to_text(self) -> str:
        """The report for a terminal."""
        lines = [
            f"rows expected:        {self.expected:,}"
            + (f" ({self.rejected:,} rejected rows not counted)" if self.rejected else ""),
            f"present once:         {self.present_once:,}",
            f"missing:              {self.missing:,}" + _first("lines", self.missing_lines),
            f"duplicated:           {self.duplicated:,} rows, {self.extra_copies:,} extra copies"
            + _first("lines", self.duplicated_lines),
            f"not from this input:  {self.not_from_input:,}"
            + _first("ids", self.not_from_input_ids),
            "other rows:           "
            + ("not read (range search)" if self.other_rows is None else f"{self.other_rows:,}"),
            f"examples read:        {self.examples_read:,} ({self.read_by})",
        ]
        if self.repair:
            lines.append(
                f"repair:               {self.repair}: deleted {self.deleted:,}, sent {self.sent:,}"
            )
        lines.append(f"balanced:             {'yes' if self.balanced else 'no'}")
        if self.message:
            lines.append(self.message)
        return "\n".join(lines)


def _first(what: str, items: tuple[Any, ...]) -> str:
    return f" (first {what}: {', '.join(map(str, items))})" if items else ""


def ask_on_terminal(plan: RepairPlan) -> bool:
    """Show what a repair will do and ask on the terminal; only "y" or "yes" goes ahead."""
    # On stderr: stdout is for the report (its --json object alone).
    if plan.delete:
        sys.stderr.write(
            f"will delete {plan.delete:,} extra copies (keeping the earliest of each row); "
            f"first ids: {', '.join(plan.delete_ids)}\n"
        )
    if plan.send:
        lines = ", ".join(map(str, plan.send_lines))
        sys.stderr.write(f"will send {plan.send:,} missing rows; first lines: {lines}\n")
    sys.stderr.write(f"Delete {plan.delete} extra copies and send {plan.send} missing rows? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")
