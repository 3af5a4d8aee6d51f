"""Status: ``ingest status``, what a checkpoint's journal says the runs before did.

Takes a checkpoint path; prints, as text or one JSON object, the rows delivered
and rejected, the unknown outcomes and what became of them, the batches left in
flight (to settle by looking their keys up, or, without keys, to resend), and
the lines done. It reads the journal only; it takes no lock and sends nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from ingest.checkpoint import read_journal
from ingest.errors import IngestError
from ingest.replay import RunResends


def status_command(args: argparse.Namespace) -> int:
    """``ingest status``: print what a checkpoint has done; return the exit code."""
    try:
        state = read_journal(args.checkpoint)
    except IngestError as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)  # noqa: T201
        return exc.exit_code
    fp = state.fingerprint or {}
    last = state.runs[-1] if state.runs else RunResends()
    maybe_twice = state.maybe_duplicated()
    report: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "dataset_id": fp.get("dataset_id"),
        "dataset_version_id": fp.get("dataset_version_id"),
        "input": fp.get("input"),
        "runs": state.attempts,
        "finished": state.finished is not None,
        "rows_delivered": state.delivered_rows,
        "rows_rejected": state.rejected_rows,
        "batches_done": state.done_batches,
        # The summary's unknown_resent and in_flight_resent, summed over runs; the
        # last run's equal its summary's.
        "unknown_outcomes": state.unknown_outcomes,
        "unknown_outcomes_resent": state.unknown_resent,
        "in_flight_resent": state.in_flight_resent,
        "last_run": {
            "unknown_resent": last.unknown_resent,
            "in_flight_resent": last.in_flight_resent,
        },
        "in_flight_at_last_stop": [
            {"seq": r["seq"], "part": r["part"], "lines": r["lines"]} for r in state.in_flight
        ],
        # With keys, the next run looks these up (and sends only their missing rows).
        "keys": state.key_field,
        "to_settle": [
            {"seq": r["seq"], "part": r["part"], "lines": r["lines"], "rows": r["rows"]}
            for r in state.in_flight
        ]
        if state.settles
        else [],
        "maybe_duplicated_lines": [list(r) for r in maybe_twice],
        "lines_done": [list(r) for r in state.covered.merged()],
    }
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
        return 0
    in_flight = _spans([(r["lines"][0], r["lines"][1]) for r in state.in_flight]) or "none"
    version = report["dataset_version_id"]
    print(  # noqa: T201
        f"checkpoint:        {args.checkpoint}\n"
        f"dataset:           {report['dataset_id']}"
        + (f" (version {version})" if version else "")
        + f"\nruns:              {state.attempts}"
        f"\nfinished:          {'yes' if state.finished else 'no'}"
        f"\nrows delivered:    {state.delivered_rows:,} in {state.done_batches:,} batches"
        f"\nrows rejected:     {state.rejected_rows:,}"
        f"\nunknown outcomes:  {state.unknown_outcomes:,}, of which {state.unknown_resent:,} "
        f"resent by the same run ({last.unknown_resent:,} by the last run)"
        f"\nin flight resent:  {state.in_flight_resent:,} batches left in flight by a run, "
        f"sent again by a later one ({last.in_flight_resent:,} by the last run)"
        f"\nin flight at stop: {in_flight}"
        + _settle_line(state.settles, report["to_settle"], len(state.in_flight))
        + (
            ""  # with keys, those batches were (or will be) looked up, not resent blindly
            if state.settles
            else f"\nmaybe duplicated:  {_spans(maybe_twice, limit=20) or 'none'}"
        )
        + f"\nlines done:        {_spans(state.covered.merged(), limit=10) or 'none'}"
    )
    return 0


def _settle_line(settles: bool, to_settle: list[dict[str, Any]], in_flight: int) -> str:
    """What the next run does with the batches in flight: look them up, or send them again."""
    if not settles:
        return (
            f"\nto resend:         {in_flight:,} batches; written without row keys (--no-key, "
            "or an older ingest): the next run sends them again, so their rows may be stored twice"
            if in_flight
            else ""
        )
    if not to_settle:
        return "\nto settle:         none"
    shown = ", ".join(map(_batch_name, to_settle[:10]))
    more = f" ... ({len(to_settle) - 10} more; --json lists all)" if len(to_settle) > 10 else ""
    rows = sum(b["rows"] for b in to_settle)
    return (
        f"\nto settle:         {len(to_settle):,} batches ({rows:,} rows): {shown}{more}; the "
        "next run looks their keys up and sends only the rows not stored (none twice)"
    )


def _batch_name(batch: dict[str, Any]) -> str:
    part = f" part {batch['part']}" if batch["part"] else ""
    first, last = batch["lines"]
    return f"seq {batch['seq']}{part} lines {first}-{last}"


def _spans(spans: list[tuple[int, int]], limit: int | None = None) -> str:
    shown = spans if limit is None else spans[:limit]
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in shown)
    return text + (
        f" ... ({len(spans) - len(shown)} more; --json lists all)"
        if len(shown) < len(spans)
        else ""
    )
