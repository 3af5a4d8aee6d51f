"""The summary's counts add up, and a run whose counts do not add up says so with exit 7."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from test_pipeline import settings, upload_then_stop, write_rows

import ingest


async def test_a_complete_run_balances_read_delivered_rejected_and_pending(
    fake: Any, tmp_path: Path
) -> None:
    """rows_read = delivered + rejected + pending, and pending is 0 once the run completes."""
    lines = write_rows(tmp_path / "rows.jsonl", 300)
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join([*lines, b"not json", b""]) + b"\n")
    summary = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert summary.exit_code == 6
    assert (summary.rows_read, summary.rows_delivered, summary.rows_rejected) == (301, 300, 1)
    assert summary.rows_pending == 0
    assert b'"rows_pending":0' in summary.to_json()


async def test_an_interrupted_run_counts_its_queued_rows_as_pending(
    fake: Any, tmp_path: Path
) -> None:
    """Rows read but not sent when a stop comes are pending, so the counts still add up."""
    write_rows(tmp_path / "rows.jsonl", 4000)
    first = await upload_then_stop(fake, 200, 0.05, **settings(fake, tmp_path, batch_rows=50))
    assert first.exit_code == 130
    assert first.rows_pending > 0
    assert first.rows_read == first.rows_delivered + first.rows_rejected + first.rows_pending
    second = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=50))
    assert (second.exit_code, second.rows_pending) == (0, 0)
    assert second.rows_read + second.rows_skipped == 4000


async def test_a_checkpoint_that_overcounts_rows_ends_unbalanced_with_exit_7(
    fake: Any, tmp_path: Path
) -> None:
    """A journal whose done records claim more rows than the input holds is not 'complete'."""
    write_rows(tmp_path / "rows.jsonl", 100)
    run = settings(fake, tmp_path, checkpoint=str(tmp_path / "run.ckpt"), batch_rows=50)
    first = await ingest.upload(api_key=fake.api_key, **run)
    assert first.exit_code == 0
    journal = tmp_path / "run.ckpt"
    records = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    kept = [r for r in records if r["t"] != "finished"]
    for record in kept:
        if record["t"] == "done":
            record["rows"] += 1  # a double count, as a bug in an earlier version could leave
    journal.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))
    again = await ingest.upload(api_key=fake.api_key, **run)
    assert (again.status, again.exit_code) == ("unbalanced", 7)
    assert "holds 100 rows but the checkpoint accounts for 102" in again.message
    assert b'"t":"finished"' not in journal.read_bytes()
