"""Conclude: how a run ended, from its own counters and what the journal had before it.

Takes the run's ``RunStats`` and the earlier runs' ``JournalState``; gives out
the ending (status, exit code, message), the check that the counts add up, and
the *finished* record a complete run leaves in the journal. The exit codes
that are not errors live here; errors carry their own (``ingest.errors``).
"""

from __future__ import annotations

from ingest.records import Finished
from ingest.replay import JournalState
from ingest.report import RunStats

EXIT_OK = 0
EXIT_REJECTS = 6
EXIT_UNBALANCED = 7
EXIT_INTERRUPTED = 130


def totals(stats: RunStats, state: JournalState) -> tuple[int, int]:
    """Rows delivered and rejected by every run of the checkpoint, this one included."""
    return (
        state.delivered_rows + stats.rows_delivered,
        state.rejected_rows + stats.rows_rejected,
    )


def unbalanced(stats: RunStats, state: JournalState, rows_in_input: int) -> str | None:
    """Why the counts of a run that read its whole input do not add up, if they do not.

    Every row read is delivered, rejected or pending; and the rows of the input are
    those read now and those earlier runs dealt with, each counted once by the journal.
    """
    if stats.rows_pending:
        return (
            f"{stats.rows_pending} rows read were neither delivered nor rejected; re-run the "
            "same command to send them"
        )
    counted = sum(totals(stats, state))
    if counted != rows_in_input:
        return (
            f"the input holds {rows_in_input:,} rows but the checkpoint accounts for "
            f"{counted:,} (delivered or rejected, in all runs); run `ingest verify` on the "
            "same arguments to compare the dataset with the input"
        )
    return None


def finished_record(stats: RunStats, state: JournalState) -> Finished:
    """The journal's last record for an input every row of which is dealt with."""
    delivered, rejected = totals(stats, state)
    return Finished(EXIT_REJECTS if rejected else EXIT_OK, delivered, rejected)


def ending(
    *,
    complete: bool,
    why_unbalanced: str | None,
    rejected: int,
    stdin: bool,
    rejects_path: str,
) -> tuple[str, int, str]:
    """The status, exit code and message of a run that did not fail."""
    if not complete:
        hint = (
            "stdin cannot be resumed: rows read but not delivered are lost"
            if stdin
            else "re-run the same command to resume"
        )
        return "interrupted", EXIT_INTERRUPTED, hint
    if why_unbalanced is not None:
        return "unbalanced", EXIT_UNBALANCED, why_unbalanced
    if rejected:
        return "complete-with-rejects", EXIT_REJECTS, f"see {rejects_path}"
    return "complete", EXIT_OK, ""
