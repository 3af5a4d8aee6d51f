"""The "Done means" of issue 6, measured: exactly once under every fault and kills; settle cost.

`faults_and_kills`: BENCH_EO_ROWS rows (default 50,000) against a fake server in
its own process that injects every fault at once (503 before and after commit,
commit then a dropped connection, commit then a stall past the client's
timeout, 429 storms with HTTP-date Retry-After, 500 over a body size, an
outage window, no search filters); the client is SIGKILLed at random moments
BENCH_KILLS times (default 5), resumed each time, then left to finish. The
dataset is then read back: each row must be there exactly once.

`settle_cost`: a dataset already holds BENCH_PREFILL rows (default 100,000) of
another input; a small input is uploaded with a few commit-then-503s. Settling
them must read back a few thousand examples (searches on the key), not the
dataset; with search filters off it is one read of the dataset, for contrast.

Run alone with `python bench/exactly_once.py`; `make bench` runs it after the throughput.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

KEY = "bench-key"
ROWS = int(os.environ.get("BENCH_EO_ROWS", "50000"))
KILLS = int(os.environ.get("BENCH_KILLS", "5"))
PREFILL = int(os.environ.get("BENCH_PREFILL", "100000"))
SEED = int(os.environ.get("BENCH_SEED", "6"))
# Faster than the defaults (a bench, not production) yet each fault still bites:
# a stall outlasts the request timeout, the outage outlasts many retries.
FAST_TOML = "backoff_base = 0.05\nbackoff_max = 1.0\n"
RUN_FLAGS = [
    "--rate", "0", "--batch-rows", "200", "--request-timeout", "2",
    "--max-attempts", "30", "--settle-lag", "0.2", "--json", "-q",
]  # fmt: skip
EVERY_FAULT = [
    "--fail-rate", "0.05", "--fail-after-commit-rate", "0.03",
    "--drop-after-commit-rate", "0.03", "--stall-after-commit-rate", "0.01",
    "--stall-seconds", "4", "--throttle-storm", "1", "--retry-after-http-date",
    # 200 rows of the sample with their keys are 39-42 kB: most batches are halved.
    "--max-body-bytes", "41000", "--outage-seconds", "2", "--outage-after-requests", "40",
    "--no-search-filters",
]  # fmt: skip
FAULTS_OFF = {
    "fail_rate": 0.0,
    "fail_after_commit_rate": 0.0,
    "drop_after_commit_rate": 0.0,
    "stall_after_commit_rate": 0.0,
    "max_body_bytes": None,
    "search_filters": True,
}


def dataset_ids(n: int, label: str) -> list[str]:
    return [base64.b64encode(f"Dataset:{i}:{label}".encode()).decode() for i in range(n)]


def write_rows(path: Path, rows: int, *, tag: str = "q") -> None:
    with path.open("wb") as f:
        for i in range(rows):
            row = {
                "i": i,
                "question": f"{tag}: what is {i} + {i}? Explain the steps.",
                "answer": str(2 * i),
                "topic": ("arithmetic", "algebra", "geometry")[i % 3],
                "metadata": {"tags": ["bench", "synthetic"]},
            }
            f.write(orjson.dumps(row) + b"\n")


def start_server(datasets: list[str], *faults: str) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "ingest", "fake-server", "--port", "0", "--api-key", KEY]
    for ds in datasets:
        args += ["--dataset", ds]
    proc = subprocess.Popen([*args, *faults], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(timeout=90)  # a stalled request is cut short at shutdown


def http(url: str, method: str = "GET", body: object = None) -> Any:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {KEY}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as resp:
        return orjson.loads(resp.read())


def stats(url: str) -> dict[str, Any]:
    result: dict[str, Any] = http(f"{url}/_fake/stats")
    return result


def stored_rows(url: str, dataset: str) -> Counter[tuple[str, object]]:
    """How many times each (input, `i`) is in the dataset (read with the GET list)."""
    seen: Counter[tuple[str, object]] = Counter()
    cursor = ""
    path = f"{url}/v2/datasets/{quote(dataset, safe='')}/examples?limit=500"
    while True:
        page = http(path + (f"&cursor={quote(cursor)}" if cursor else ""))
        seen.update(
            (str(example.get("question")).split(":")[0], example.get("i"))
            for example in page["examples"]
        )
        if not page["pagination"]["has_more"]:
            return seen
        cursor = page["pagination"]["next_cursor"]


def ingest_run(config: Path, source: Path, url: str, dataset: str, ckpt: Path) -> list[str]:
    return [
        sys.executable, "-m", "ingest", "run", str(config), "--input", str(source),
        "--dataset-id", dataset, "--base-url", url, "--checkpoint", str(ckpt), *RUN_FLAGS,
    ]  # fmt: skip


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARIZE_API_KEY": KEY}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def finish(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` to its end; its JSON summary (exit code added)."""
    proc = spawn(cmd)
    out, _ = proc.communicate(timeout=1800)
    summary: dict[str, Any] = orjson.loads(out.splitlines()[-1]) if out.strip() else {}
    summary["exit"] = proc.returncode
    return summary


def balances(s: dict[str, Any], rows: int) -> bool:
    read, pending = s.get("rows_read", -1), s.get("rows_pending", -1)
    sent = s.get("rows_delivered", 0) + s.get("rows_rejected", 0) + pending
    return read == sent and pending == 0 and read + s.get("rows_skipped", 0) == rows


def faults_and_kills(tmp: Path) -> None:
    """50k rows, every fault at once, killed and resumed at random: each row exactly once."""
    rng = random.Random(SEED)
    [dataset] = dataset_ids(1, "faults")
    server, url = start_server([dataset], *EVERY_FAULT, "--seed", str(SEED))
    try:
        source, config, ckpt = tmp / "eo.jsonl", tmp / "fast.toml", tmp / "eo.ckpt"
        write_rows(source, ROWS)
        config.write_text(FAST_TOML)
        cmd = ingest_run(config, source, url, dataset, ckpt)
        started = time.perf_counter()
        moments: list[str] = []
        for _ in range(KILLS):
            # Storms and outages are spent once begun: arm them again for each run.
            begin = stats(url)["v2_requests"] + rng.randint(5, 60)
            http(
                f"{url}/_fake/faults",
                "PATCH",
                {"throttle_storm": 1, "outage_seconds": 2, "outage_after_requests": begin},
            )
            proc = spawn(cmd)
            try:
                proc.wait(timeout=rng.uniform(1.5, 8.0))  # a start takes about 1 s
                moments.append(f"ended first (exit {proc.returncode})")
                continue
            except subprocess.TimeoutExpired:
                pass
            at = stats(url)
            deadline = time.monotonic() + 2
            # A kill with appends on the wire is the case that matters: wait a moment for one.
            while at["posts_in_flight"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
                at = stats(url)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            moments.append(f"{at['posts_in_flight']} in flight/{at['stalled_now']} stalled")
        summary = finish(cmd)
        wall = time.perf_counter() - started
        http(f"{url}/_fake/faults", "PATCH", FAULTS_OFF)
        seen = stored_rows(url, dataset)
        counts = stats(url)
    finally:
        stop(server)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    missing = sum(1 for i in range(ROWS) if seen["q", i] == 0)
    foreign = sum(seen.values()) - sum(seen["q", i] for i in range(ROWS))
    ok = (duplicates, missing, foreign, summary["exit"]) == (0, 0, 0, 0) and balances(summary, ROWS)
    print(f"\nexactly once: {ROWS:,} rows, every fault at once, {KILLS} random SIGKILLs")
    print(f"  {'kills (server state at each)':32} {'; '.join(moments)}")
    print(f"  {'duplicates / missing / foreign':32} {duplicates} / {missing} / {foreign}")
    print(
        f"  {'last run':32} exit {summary['exit']}, read {summary.get('rows_read', 0):,} + "
        f"skipped {summary.get('rows_skipped', 0):,}, pending {summary.get('rows_pending')}, "
        f"balances: {balances(summary, ROWS)}"
    )
    print(
        f"  {'server saw':32} {counts['commits']:,} commits, {counts['drops']} drops, "
        f"{counts['stalls']} stalls, {counts['outage_refusals']} outage 503s, "
        f"{counts['storm_refusals']} storm 429s, {counts['searches']} searches, "
        f"{counts['deletes']} deletes"
    )
    print(f"  {'total wall time':32} {wall:.1f} s   {'OK' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit("exactly-once scenario failed")


def settle_cost(tmp: Path) -> None:
    """A few unknown batches in a dataset of 100k other rows: read back thousands, not 100k."""
    datasets = dataset_ids(2, "settle")
    server, url = start_server(datasets)
    config = tmp / "fast.toml"
    config.write_text(FAST_TOML)
    other, small = tmp / "other.jsonl", tmp / "small.jsonl"
    write_rows(other, PREFILL, tag="other")
    write_rows(small, 5000, tag="small")
    results = []
    try:
        for dataset, filters in zip(datasets, (True, False), strict=True):
            # This fake scans its whole dataset for a search, as a server without an index
            # would: slower than 2 s on a busy box, so the timeout is the default here.
            slow = ["--request-timeout", "60"]
            prefill = finish(
                [*ingest_run(config, other, url, dataset, tmp / f"p{filters}.ckpt"), *slow]
            )
            assert prefill["exit"] == 0, prefill
            http(
                f"{url}/_fake/faults",
                "PATCH",
                {"search_filters": filters, "fail_after_commit_rate": 0.4, "seed": SEED},
            )
            before = stats(url)
            run = finish(
                [
                    *ingest_run(config, small, url, dataset, tmp / f"s{filters}.ckpt"),
                    *slow,
                    "--batch-rows",
                    "500",
                ]
            )
            after = stats(url)
            http(f"{url}/_fake/faults", "PATCH", FAULTS_OFF)
            seen = stored_rows(url, dataset)
            expected = {("other", i) for i in range(PREFILL)} | {("small", i) for i in range(5000)}
            once = set(seen) == expected and set(seen.values()) == {1}
            results.append(
                (
                    "on" if filters else "off",
                    run["retries"].get("5xx", 0),
                    run["lookups"],
                    after["searches"] - before["searches"],
                    after["searched_examples"] - before["searched_examples"],
                    after["datasets"][dataset],
                    run["exit"] == 0 and once and balances(run, 5000),
                )
            )
    finally:
        stop(server)
    print(f"\nsettling: 5,000 rows in 10 batches into a dataset of {PREFILL:,} other rows")
    print(f"  {'filters':8} {'unknown':>8} {'look-ups':>9} {'searches':>9} {'read back':>10}"
          f" {'dataset':>9}  each once")  # fmt: skip
    for name, unknown, lookups, searches, read, size, ok in results:
        print(f"  {name:8} {unknown:>8} {lookups:>9} {searches:>9} {read:>10,} {size:>9,}  {ok}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        only = os.environ.get("BENCH_ONLY", "")
        if only in ("", "faults"):
            faults_and_kills(Path(tmp))
        if only in ("", "settle"):
            settle_cost(Path(tmp))


if __name__ == "__main__":
    main()
