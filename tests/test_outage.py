"""An API gone for a while (503 for everything, the data kept) is ridden out by the run itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from fakeproc import fake_process
from test_cli import DATASET, KEY, ingest_cmd, list_all, run_ingest
from test_pipeline import by_row, settings, write_rows

import ingest
from ingest.retry import RetryPolicy

ROWS = 600
# Scaled down from the defaults (0.5, 30): the same 10 attempts wait at least
# 0.05 + 0.1 + 0.2 + 0.4 + 0.5 * 5 = 3.25 s in every draw, more than the outage.
BACKOFF = {"backoff_base": 0.05, "backoff_max": 1.0}
OUTAGE = 2.0


def test_the_scaled_settings_outlast_the_outage() -> None:
    """The test's own arithmetic: its backoff waits out the outage whatever the jitter draws."""
    policy = RetryPolicy(base=BACKOFF["backoff_base"], cap=BACKOFF["backoff_max"])
    assert policy.least_ridden_out() > OUTAGE


@pytest.mark.parametrize("no_key", [False, True], ids=["keys", "no-key"])
async def test_an_outage_mid_run_is_ridden_out(fake: Any, tmp_path: Path, no_key: bool) -> None:
    """A 2 s outage after a few batches: the run completes, exit 0, every row once."""
    write_rows(tmp_path / "rows.jsonl", ROWS)
    fake.state.faults.outage_seconds = OUTAGE
    fake.state.faults.outage_after_requests = 4  # the GET, then a few POSTs land first
    run = settings(fake, tmp_path, batch_rows=25, concurrency=4, no_key=no_key, **BACKOFF)
    with anyio.fail_after(60):
        summary = await ingest.upload(api_key=fake.api_key, **run)
    assert fake.state.counters.outage_refusals > 0, "the outage must hit the run"
    assert (summary.exit_code, summary.rows_delivered) == (0, ROWS)
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == list(range(ROWS)) and all(len(v) == 1 for v in rows.values())


def test_a_real_run_rides_out_an_outage_without_a_human(tmp_path: Path) -> None:
    """`ingest run` against a server that goes away for 2 s mid-run exits 0, every row once."""
    write_rows(tmp_path / "rows.jsonl", ROWS)
    args = ("--outage-seconds", str(OUTAGE), "--outage-after-requests", "4")
    with fake_process("--api-key", KEY, "--dataset", DATASET, *args) as (url, _):
        config = tmp_path / "run.toml"
        config.write_text("backoff_base = 0.05\nbackoff_max = 1.0\nsettle_lag = 0.02\n")
        cmd = ingest_cmd(tmp_path, url, str(config), "--batch-rows", "25", "--json")
        done = run_ingest(cmd)
        assert done.returncode == 0, done.stderr
        counts = Counter(ex["i"] for ex in list_all(url, DATASET))
    summary = orjson.loads(done.stdout)
    assert (summary["status"], summary["rows_delivered"]) == ("complete", ROWS)
    assert summary["retries"].get("5xx", 0) > 0, "the outage must hit the run"
    assert counts == Counter(range(ROWS))
