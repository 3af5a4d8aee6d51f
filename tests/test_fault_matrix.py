"""The fault matrix: with row keys, each server fault alone and all at once, over seeds.

Each case uploads a small input in many small requests to the in-process fake
server with one fault (or every fault) armed, then proves the promise of
issue 6 for it: every input row is in the dataset exactly once (counted by the
row's own field `i`), nothing else is, the summary balances with nothing
pending, and the run exits 0. The 50k-row version of the last case, with
SIGKILLs, is in `make bench`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import ingest
from ingest.fake import Faults
from ingest.fake.injected import Counters

ROWS = 1500
SEEDS = (1, 2, 3)
# The client gives up on a request long before a stalled answer would come.
REQUEST_TIMEOUT = 0.5
STALL_SECONDS = 2.0
# Over half a batch (about 6 kB) and a search for 50 keys (about 2.5 kB), as a real
# limit is far above both: only whole batches are refused, and their halves pass.
BODY_LIMIT = 9000

CASES: dict[str, dict[str, Any]] = {
    "commit-then-503": {"fail_after_commit_rate": 0.15},
    "commit-then-drop": {"drop_after_commit_rate": 0.15},
    "commit-then-stall": {"stall_after_commit_rate": 0.1, "stall_seconds": STALL_SECONDS},
    "503-before-commit": {"fail_rate": 0.25},
    "429-storm-seconds": {"throttle_storm": 0.3},
    "429-storm-http-date": {"throttle_storm": 0.3, "retry_after_http_date": True},
    "500-over-body-size": {"max_body_bytes": BODY_LIMIT},
    "outage-mid-run": {"outage_seconds": 0.2, "outage_after_requests": 12},
    # Without filters only unknown outcomes make settling read the dataset, so some are armed.
    "search-filters-off": {"search_filters": False, "fail_after_commit_rate": 0.1},
}
CASES["all-at-once"] = {
    "fail_after_commit_rate": 0.05,
    "drop_after_commit_rate": 0.05,
    "stall_after_commit_rate": 0.03,
    "stall_seconds": STALL_SECONDS,
    "fail_rate": 0.1,
    "throttle_storm": 0.3,
    "retry_after_http_date": True,
    "max_body_bytes": BODY_LIMIT,
    "outage_seconds": 0.2,
    "outage_after_requests": 12,
    "search_filters": False,
}


# What shows that the fault struck in the run, so that no case passes by missing it.
STRUCK: dict[str, Callable[[Counters, ingest.Summary], bool]] = {
    "commit-then-503": lambda c, s: s.rows_present > 0,
    "commit-then-drop": lambda c, s: c.drops > 0 and s.rows_present > 0,
    "commit-then-stall": lambda c, s: c.stalls > 0 and s.retries.get("timeout", 0) > 0,
    "503-before-commit": lambda c, s: s.retries.get("5xx", 0) > 0,
    "429-storm-seconds": lambda c, s: c.storm_refusals > 0,
    "429-storm-http-date": lambda c, s: c.storm_refusals > 0,
    "500-over-body-size": lambda c, s: s.retries.get("split", 0) > 0,
    "outage-mid-run": lambda c, s: c.outage_refusals > 0,
    "search-filters-off": lambda c, s: s.rows_present > 0,
    "all-at-once": lambda c, s: c.storm_refusals * c.outage_refusals * s.rows_present > 0,
}


def write_input(path: Path, rows: int) -> None:
    """Rows of about 200 bytes, so a 50-row batch (about 10 kB) is over `max_body_bytes`."""
    text = "Explain, step by step, how to add two whole numbers. " * 3
    lines = (orjson.dumps({"i": i, "q": f"What is {i} + {i}? {text}"}) for i in range(rows))
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", list(CASES))
async def test_every_row_lands_exactly_once_under_the_fault(
    fake: Any, tmp_path: Path, case: str, seed: int
) -> None:
    """Under the fault, every row is stored exactly once and the summary balances, exit 0."""
    source = tmp_path / "rows.jsonl"
    write_input(source, ROWS)
    fake.state.faults = Faults(seed=seed, **CASES[case])
    summary = await ingest.upload(
        api_key=fake.api_key,
        input=str(source),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        batch_rows=50,
        concurrency=4,
        rate=0,
        max_attempts=20,
        backoff_base=0.01,
        backoff_max=0.05,
        settle_lag=0.02,
        request_timeout=REQUEST_TIMEOUT,
    )
    stored = Counter(example.get("i") for example in fake.state.examples(fake.dataset_id))
    missing = [i for i in range(ROWS) if stored[i] == 0]
    extra = {i: n for i, n in stored.items() if n != 1}
    assert (missing, extra) == ([], {}), f"{len(missing)} missing, {len(extra)} not once"
    assert sum(stored.values()) == ROWS
    assert (summary.status, summary.exit_code) == ("complete", 0), summary.message
    assert summary.rows_read == ROWS and summary.rows_pending == 0
    assert summary.rows_read == (
        summary.rows_delivered + summary.rows_rejected + summary.rows_pending
    )
    assert summary.rows_read + summary.rows_skipped == ROWS
    assert STRUCK[case](fake.state.counters, summary), f"the fault did not strike: {summary}"
