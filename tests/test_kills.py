"""SIGKILL a real `ingest run` again and again, at moments the fake server points out.

The fake server runs in its own process, so the client can be killed while the
server keeps its requests: a commit whose answer never left, requests still in
their latency, a search of a settling batch. Each kill waits for a counter of
`/_fake/stats` that proves the moment was reached, re-arms the faults with
`PATCH /_fake/faults`, and the same command resumes after each kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakeproc import fake_process
from test_cli import DATASET, KEY, ingest_cmd, list_all, run_ingest, write_rows

from ingest.checkpoint import read_journal

Stats = dict[str, Any]
STALL_AT = 5  # the commit, counted from a run's first, whose answer stalls
WAIT = 20.0  # seconds any one wait for the server may take, at most
# Test-mode retries: a stalled answer is killed, never waited out, so the timeout is loose.
TEST_MODE = "backoff_base = 0.01\nbackoff_max = 0.05\nrequest_timeout = 10.0\n"
QUIET = {
    "latency": 0.0,
    "fail_after_commit_rate": 0.0,
    "drop_after_commit_rate": 0.0,
    "stall_after_commit_at": [],
}


def stats(url: str) -> Stats:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as resp:
        return dict(orjson.loads(resp.read()))


def set_faults(url: str, **changes: Any) -> None:
    req = urllib.request.Request(f"{url}/_fake/faults", data=orjson.dumps(changes), method="PATCH")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def wait_until(
    url: str, done: Callable[[Stats], bool], proc: subprocess.Popen[bytes] | None = None
) -> Stats | None:
    """The first stats ``done`` accepts; None if ``proc`` ended or WAIT passed first."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        now = stats(url)
        if done(now):
            return now
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


def drained(s: Stats) -> bool:
    """No POST of a killed run is still on its way to a commit (a stalled one has committed).

    A commit that lands after the resumed run's look-up and its settle lag is a
    duplicate no look-up can prevent; the guarantee is about commits that show in time.
    """
    return bool(s["posts_in_flight"] <= s["stalled_now"])


@dataclass(frozen=True, slots=True)
class Moment:
    """Where to kill: the faults that lead there, and the stats that prove it was reached.

    ``steps`` are reached one after another, each judged against the stats at the
    step before (the first against the stats before the run started), so a kill
    can wait for a run to get going before it waits for the moment itself.
    """

    name: str
    faults: dict[str, Any]
    steps: tuple[Callable[[Stats, Stats], bool], ...]
    copies: bool = False  # first store extra copies of rows of batches left in flight


def posting(s: Stats) -> int:
    """POSTs on their way to a commit: in flight, less those stalled after theirs."""
    return int(s["posts_in_flight"] - s["stalled_now"])


MOMENTS = (
    # The preflight is held by the latency; a POST can only come after its answer.
    Moment(
        "before the first POST",
        {"latency": 1.0},
        (lambda b, s: s["v2_requests"] > b["v2_requests"],),
    ),
    Moment(
        "with requests in flight",
        {"latency": 0.05},
        (
            lambda b, s: s["commits"] >= b["commits"] + 4,
            lambda b, s: (
                s["post_examples_requests"] > b["post_examples_requests"] and posting(s) >= 2
            ),
        ),
    ),
    Moment(
        "between a commit and its answer",
        {"stall_after_commit_at": STALL_AT},  # counted from this run's first commit
        (lambda b, s: s["stalls"] > b["stalls"] and s["stalled_now"] > b["stalled_now"],),
    ),
    # The copies stand for commits that showed in a search only after a look-up's lag.
    Moment(
        "while deleting extra copies",
        {"latency": 0.1},
        (lambda b, s: s["deletes"] > b["deletes"],),
        copies=True,
    ),
    Moment(
        "while settling unknown batches",
        {"fail_after_commit_rate": 0.3, "drop_after_commit_rate": 0.2, "latency": 0.02},
        (
            lambda b, s: s["commits"] >= b["commits"] + 3,
            lambda b, s: s["searches"] > b["searches"],
        ),
    ),
)

# Without keys nothing is looked up: the last moment is an unknown outcome being resent.
UNKEYED = (
    *MOMENTS[:3],
    Moment(
        "after a commit whose connection was dropped",
        {"drop_after_commit_rate": 0.5, "latency": 0.02},
        (
            lambda b, s: s["commits"] >= b["commits"] + 3,
            lambda b, s: s["drops"] > b["drops"],
        ),
    ),
)


@pytest.fixture
def server() -> Iterator[str]:
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--seed", "6") as (url, _):
        yield url


def store_copies(url: str, checkpoint: Path) -> int:
    """POST a second copy of each stored row of the batches the journal has in flight."""
    state = read_journal(str(checkpoint))
    lines = {n for r in state.in_flight for n in range(r["lines"][0], r["lines"][1] + 1)}
    copies = [
        {k: v for k, v in ex.items() if k not in ("id", "created_at", "updated_at")}
        for ex in list_all(url, DATASET)
        if ex["i"] + 1 in lines  # line = i + 1
    ]
    if copies:
        req = urllib.request.Request(
            f"{url}/v2/datasets/{urllib.parse.quote(DATASET, safe='')}/examples",
            data=orjson.dumps({"examples": copies}),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status < 300
    return len(copies)


def kill_at(url: str, cmd: list[str], moment: Moment, tmp_path: Path) -> None:
    """Start ``cmd``, wait for ``moment``, SIGKILL it; fail if it ended first."""
    assert wait_until(url, drained) is not None, "a killed run's POST never reached its end"
    if moment.copies:
        assert store_copies(url, tmp_path / "run.ckpt") > 0, "no stored row is left in flight"
    before = stats(url)
    faults = {**QUIET, **moment.faults}
    if moment.faults.get("stall_after_commit_at"):
        faults["stall_after_commit_at"] = [before["commits"] + STALL_AT]
    set_faults(url, **faults)
    with (tmp_path / "runs.log").open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "ARIZE_API_KEY": KEY},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
        try:
            hit: Stats | None = before
            for step in moment.steps:
                if hit is not None:
                    hit = wait_until(url, lambda s, at=hit, step=step: step(at, s), proc)
        finally:
            proc.send_signal(signal.SIGKILL)  # only the process started here, by its PID
            proc.wait(timeout=WAIT)
    assert hit is not None, f"the run ended ({proc.returncode}) before {moment.name}"
    if moment.name == "before the first POST":
        assert stats(url)["post_examples_requests"] == before["post_examples_requests"]
    assert proc.returncode == -signal.SIGKILL
    set_faults(url, **QUIET)


def kill_and_resume(
    tmp_path: Path, url: str, rows: int, moments: tuple[Moment, ...], kills: int, *extra: str
) -> tuple[Counter[int], dict[str, Any]]:
    """Kill a run ``kills`` times, cycling through ``moments``; finish it; count rows by ``i``."""
    write_rows(tmp_path / "rows.jsonl", rows)
    (tmp_path / "test.toml").write_text(TEST_MODE)
    cmd = ingest_cmd(
        tmp_path,
        url,
        str(tmp_path / "test.toml"),
        "--batch-rows",
        "50",
        "--concurrency",
        "4",
        "--settle-lag",
        "0.05",
        "--json",
        *extra,
    )
    for k in range(kills):
        kill_at(url, cmd, moments[k % len(moments)], tmp_path)
    assert wait_until(url, drained) is not None
    done = run_ingest(cmd, timeout=60)
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    return Counter(ex["i"] for ex in list_all(url, DATASET)), summary


def test_ten_kills_with_keys_leave_every_row_exactly_once(server: str, tmp_path: Path) -> None:
    """Killed ten times, at each server-pointed moment in turn, and resumed: each row lands once."""
    rows = 3000
    counts, summary = kill_and_resume(tmp_path, server, rows, MOMENTS, 10)
    assert set(counts) == set(range(rows))
    assert {i: n for i, n in counts.items() if n > 1} == {}
    assert summary["rows_pending"] == 0
    assert summary["rows_read"] == summary["rows_delivered"] + summary["rows_rejected"]
    assert summary["rows_read"] + summary["rows_skipped"] == rows


def test_kills_without_keys_lose_nothing(server: str, tmp_path: Path) -> None:
    """With --no-key, killed at each moment and resumed, every row is stored at least once."""
    rows = 1000
    counts, summary = kill_and_resume(tmp_path, server, rows, UNKEYED, 4, "--no-key")
    assert set(counts) == set(range(rows))
    assert summary["rows_pending"] == 0
