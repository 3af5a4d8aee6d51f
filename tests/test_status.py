"""`ingest status`: which lines may be duplicated, counted as the run summary counts them."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from fakeproc import fake_process
from test_checkpoint import done, sending, write_records
from test_cli import DATASET, KEY, ingest_cmd, list_all, run_ingest, start_until_done, write_rows

from ingest.checkpoint import read_journal


def status(checkpoint: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ingest", "status", "--checkpoint", str(checkpoint), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


async def test_a_batch_in_flight_at_two_kills_is_one_range(tmp_path: Path) -> None:
    """Lines in flight at a kill, resent and in flight again at a second kill, count once."""
    path = tmp_path / "ck"
    await write_records(
        path,
        [
            {"t": "start"},
            sending(0, 1, 10),
            done(0, 1, 10),
            sending(1, 11, 20),  # killed in flight
            {"t": "start", "resent_in_flight": [[1, "", 11, 20]]},
            sending(2, 11, 20),  # the same lines, killed in flight again
            sending(3, 21, 30),
            {"t": "unknown", "seq": 3, "part": "", "cause": "HTTP 503"},
            {"t": "unknown", "seq": 3, "part": "", "cause": "HTTP 503"},
            done(3, 21, 30),  # two unknown outcomes, both resent by this run
        ],
    )
    state = read_journal(str(path))
    assert [r["lines"] for r in state.in_flight] == [[11, 20]]
    assert state.maybe_duplicated() == [(11, 30)]
    assert (state.unknown_outcomes, state.unknown_resent) == (2, 2)
    await write_records(
        path, [{"t": "start", "resent_in_flight": [[1, "", 11, 20], [2, "", 11, 20]]}]
    )
    state = read_journal(str(path))
    assert [(r.unknown_resent, r.in_flight_resent) for r in state.runs] == [(0, 0), (2, 1), (0, 1)]
    text = status(path).stdout
    assert "in flight at stop: 11-20\n" in text and "maybe duplicated:  11-30\n" in text


def test_status_agrees_with_the_summary_after_two_kills(tmp_path: Path) -> None:
    """After two kills and a resume, status names every duplicated line and the summary's counts."""
    rows = 12_000
    write_rows(tmp_path / "rows.jsonl", rows)
    server = ("--api-key", KEY, "--dataset", DATASET, "--latency", "0.01")
    faults = ("--fail-after-commit-rate", "0.15", "--seed", "5")
    with fake_process(*server, *faults) as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "4", "--json")
        for batches in (10, 40):
            proc = start_until_done(cmd, tmp_path, batches=batches)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        last = run_ingest(cmd)
        assert last.returncode == 0, last.stderr
        counts = Counter(ex["i"] for ex in list_all(url, DATASET))
    summary = orjson.loads(last.stdout)
    report: dict[str, Any] = orjson.loads(status(tmp_path / "run.ckpt", "--json").stdout)
    assert report["last_run"] == {
        "unknown_resent": summary["unknown_resent"],
        "in_flight_resent": summary["in_flight_resent"],
    }
    assert summary["unknown_resent"] > 0  # the seed makes 503s after commit in the last run
    spans = report["maybe_duplicated_lines"]
    assert all(a[1] + 1 < b[0] for a, b in zip(spans, spans[1:], strict=False))  # merged
    maybe = {n for a, b in spans for n in range(a, b + 1)}
    assert set(counts) == set(range(rows))
    assert {i + 1 for i, n in counts.items() if n > 1} <= maybe  # line = i + 1
    text = status(tmp_path / "run.ckpt").stdout
    assert f"({summary['unknown_resent']:,} by the last run)" in text
