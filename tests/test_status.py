"""`ingest status`: which lines may be duplicated, counted as the run summary counts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakeproc import fake_process
from hypothesis import given, settings
from hypothesis import strategies as st
from test_checkpoint import done, sending, write_records
from test_cli import DATASET, KEY, ingest_cmd, list_all, run_ingest, start_until_done, write_rows

import ingest
from ingest.checkpoint import parse_journal, read_journal
from ingest.errors import CheckpointError


def status(checkpoint: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ingest", "status", "--checkpoint", str(checkpoint), *flags]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


async def test_a_batch_in_flight_at_two_kills_is_one_range(tmp_path: Path) -> None:
    """Without keys, lines in flight at two kills, resent each time, count once."""
    path = tmp_path / "ck"
    await write_records(
        path,
        [
            {"t": "start", "keys": None},
            sending(0, 1, 10),
            done(0, 1, 10),
            sending(1, 11, 20),  # killed in flight
            {"t": "start", "keys": None, "resent_in_flight": [[1, "", 11, 20]]},
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
        path, [{"t": "start", "keys": None, "resent_in_flight": [[1, "", 11, 20], [2, "", 11, 20]]}]
    )
    state = read_journal(str(path))
    assert [(r.unknown_resent, r.in_flight_resent) for r in state.runs] == [(0, 0), (2, 1), (0, 1)]
    text = status(path).stdout
    assert "in flight at stop: 11-20\n" in text and "maybe duplicated:  11-30\n" in text


def test_status_agrees_with_the_summary_after_two_kills(tmp_path: Path) -> None:
    """Without keys, after two kills and a resume, status names every line maybe duplicated."""
    rows = 12_000
    write_rows(tmp_path / "rows.jsonl", rows)
    server = ("--api-key", KEY, "--dataset", DATASET, "--latency", "0.01")
    faults = ("--fail-after-commit-rate", "0.15", "--seed", "5")
    with fake_process(*server, *faults) as (url, _):
        cmd = ingest_cmd(
            tmp_path, url, "--batch-rows", "100", "--concurrency", "4", "--json", "--no-key"
        )
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


GOOD = [
    {"t": "header", "v": 2, "fingerprint": {"input": {"size": 1}, "dataset_id": "ds"}},
    {"t": "start", "resent_in_flight": []},
    {"t": "rejected", "line": 1, "bytes": [0, 5], "reason": "bad"},
    {**sending(0, 2, 10)},
    {"t": "unknown", "seq": 0, "part": "", "cause": "HTTP 503"},
    {"t": "split", "seq": 0, "part": ""},
    {**done(0, 2, 10)},
    {"t": "finished", "exit_code": 6, "delivered": 9, "rejected": 1},
]


def journal_bytes(records: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


@pytest.mark.parametrize(
    "damage",
    [
        lambda recs: journal_bytes(recs[:3]) + b"{not json\n" + journal_bytes(recs[3:]),
        lambda recs: journal_bytes([*recs[:6], {k: v for k, v in recs[6].items() if k != "rows"}]),
        lambda recs: journal_bytes([*recs[:3], {**recs[3], "lines": ["a", "b"]}]),
        lambda recs: journal_bytes([*recs[:3], {**recs[3], "seq": "0"}]),
        lambda recs: journal_bytes([*recs[:2], [1, 2]]),
        lambda recs: journal_bytes([{**recs[0], "fingerprint": 7}, *recs[1:]]),
        lambda recs: journal_bytes([*recs[:1], {"t": "start", "resent_in_flight": [[1]]}]),
    ],
    ids=[
        "bad-json",
        "missing-key",
        "wrong-type",
        "seq-as-text",
        "not-an-object",
        "header",
        "start",
    ],
)
def test_status_on_a_damaged_checkpoint_is_a_message(tmp_path: Path, damage: Any) -> None:
    """A hand-damaged checkpoint makes `ingest status` exit 2 with a message, no traceback."""
    path = tmp_path / "ck"
    path.write_bytes(damage(GOOD))
    for flags in ((), ("--json",)):
        result = status(path, *flags)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("ingest: error: ") and "Traceback" not in result.stderr
        assert "corrupt" in result.stderr or "not an ingest checkpoint" in result.stderr


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)


@settings(deadline=None, max_examples=300)
@given(st.integers(0, len(GOOD) - 1), st.text(min_size=1, max_size=8), _JSON)
def test_parsing_any_damage_raises_only_a_checkpoint_error(
    index: int, key: str, value: Any
) -> None:
    """Any field of any record set to any JSON value: parsed, or a CheckpointError; nothing else."""
    records = [dict(r) for r in GOOD]
    keys = [*records[index], key]
    records[index][keys[sum(map(ord, key)) % len(keys)]] = value
    try:
        state, _ = parse_journal(journal_bytes(records), "ck")
    except CheckpointError:
        return
    state.maybe_duplicated()  # and what status prints from it works too
    state.covered.merged()


def fake_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as reply:
        stats: dict[str, Any] = orjson.loads(reply.read())
    return stats


def test_status_lists_the_batches_a_killed_run_left_to_settle(tmp_path: Path) -> None:
    """Killed while a committed batch's answer stalls: status lists it to settle; a re-run does."""
    rows = 2_000
    write_rows(tmp_path / "rows.jsonl", rows)
    server = ("--api-key", KEY, "--dataset", DATASET, "--latency", "0.01")
    with fake_process(*server, "--stall-after-commit-at", "5", "--stall-seconds", "60") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "1")
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "ARIZE_API_KEY": KEY},
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not fake_stats(url)["stalled_now"]:
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=30)
        report: dict[str, Any] = orjson.loads(status(tmp_path / "run.ckpt", "--json").stdout)
        assert report["keys"] == "ingest_key"
        assert [(b["seq"], b["lines"], b["rows"]) for b in report["to_settle"]] == [
            (4, [401, 500], 100)
        ]
        text = status(tmp_path / "run.ckpt").stdout
        assert "to settle:         1 batches (100 rows): seq 4 lines 401-500; the next run " in text
        assert "looks their keys up" in text
        again = run_ingest([*cmd, "--settle-lag", "0.02"])
        assert again.returncode == 0, again.stderr
        counts = Counter(ex["i"] for ex in list_all(url, DATASET))
    assert counts == Counter(range(rows))  # the stalled batch was committed: found, not resent
    after: dict[str, Any] = orjson.loads(status(tmp_path / "run.ckpt", "--json").stdout)
    assert after["to_settle"] == []
    assert "to settle:         none\n" in status(tmp_path / "run.ckpt").stdout


async def test_status_of_a_journal_without_keys_says_its_batches_are_resent(
    tmp_path: Path,
) -> None:
    """A run with --no-key left a batch in flight: status lists none to settle, and says why."""
    path = tmp_path / "ck"
    await write_records(path, [{"t": "start", "keys": None}, sending(0, 1, 10)])
    report: dict[str, Any] = orjson.loads(status(path, "--json").stdout)
    assert (report["keys"], report["to_settle"]) == (None, [])
    assert report["in_flight_at_last_stop"] == [{"seq": 0, "part": "", "lines": [1, 10]}]
    text = status(path).stdout
    assert "to resend:         1 batches; written without row keys (--no-key" in text
    assert "to settle" not in text


async def test_the_start_record_names_the_key_field(fake: Any, tmp_path: Path) -> None:
    """Each run's start record carries its key field, or null with --no-key."""
    write_rows(tmp_path / "rows.jsonl", 10)
    base = dict(input=str(tmp_path / "rows.jsonl"), dataset_id=fake.dataset_id, rate=0)
    keys = {"keyed.ckpt": {"key_field_name": "row_key"}, "plain.ckpt": {"no_key": True}}
    for name, flags in keys.items():
        run = {**base, "base_url": fake.url, "checkpoint": str(tmp_path / name), **flags}
        await ingest.upload(api_key=fake.api_key, **run)
    starts = {
        name: [
            r["keys"]
            for r in map(orjson.loads, (tmp_path / name).read_bytes().splitlines())
            if r["t"] == "start"
        ]
        for name in keys
    }
    assert starts == {"keyed.ckpt": ["row_key"], "plain.ckpt": [None]}
