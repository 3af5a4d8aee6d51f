"""`make bench`: ingest against the ceiling and the official SDK, side by side (issue 7).

One fake server runs in its own process (pinned to CPU 1, the clients to CPU 0,
when the machine has two cores); the sample rows are deterministic, 200-400
bytes, some non-ASCII, some nested, their fields varying by row, each carrying a
unique `seq`. Clients run in turn, A B C A B C ..., and the tables quote medians.
Every count in a table is the server's: requests, 429s, and "once" (every row
0..N-1 landed exactly once, from the spread of `seq` over the stored rows).
Client CPU is user + system time of the client process (`os.wait4`), per row
sent; peak RSS its `ru_maxrss`; rows/s is rows ÷ the process's wall time.

Scenarios (BENCH_ONLY=a,b,... picks some; default all, then faults and settle):
  a  CPU-bound: no latency, no limit, BENCH_ROWS rows (1,000,000; quick 100,000).
     The ceiling (bare.py: stream, orjson-parse each row, 500-row batches,
     concurrency 8, no checkpoint, no retries), ingest `--batch-rows 500
     --concurrency 8` otherwise at its defaults, the same with `--rate 0`, the SDK
     (if installed: `make install-arize`). Targets: ingest rows/s ÷ ceiling ≥ 0.85,
     CPU µs/row ÷ ceiling's ≤ 1.2, rows/s ÷ SDK's ≥ 10.
  b  latency-bound: BENCH_LATENCY_MS (150) on every request, no limit, 20-row
     batches. ingest `--concurrency N --rate 0 --batch-rows 20` for N = 1, 2, 4 ... 128,
     each on N×20/latency×BENCH_LATENCY_SECONDS rows (8; quick 3), against ingest
     `--batch-rows 20` (its defaults otherwise) on the largest file. Target: its
     rows/s ÷ the best fixed level's ≥ 0.8.
  c  rate-bound, limit unknown: the server allows R requests/s (BENCH_RATES, 5,20,50;
     quick 20), as a token bucket and as fixed one-second windows of its clock, with
     and without Retry-After; BENCH_RATE_SECONDS (30; quick 8) of work at R, 100-row
     batches. ingest with no --rate: steady accepted requests/s ÷ R ≥ 0.9 and 429s ≤ 5%
     of its requests (whole run); `--rate R`: no 429, steady ÷ R ≥ 0.97, and at most R
     requests in any sliding one-second window [t, t+1 s) of arrivals at the server.
     "Steady" is the server's timeline of 2xx answers per second (by arrival, 1 s bins
     from the run's first request) without its first 20% of bins (at least 2) and its
     last, partial bin. The timelines are in the JSON, for charts.
  d  memory: ingest at its defaults and at `--concurrency 128` on BENCH_MEM_SMALL_ROWS
     (200,000; quick 20,000) and BENCH_MEM_ROWS (2,000,000, ~570 MB; quick 200,000)
     rows, written to a temp dir and deleted after. Targets: peak RSS ≤ 100 MiB on the
     big file, and ≤ 1.2× the small file's.
  e  resume: a journal of the whole input 90% delivered (the server takes 90% of the
     rows, then answers 429, storing nothing, until a SIGINT ends the run), resumed with
     ingest's defaults; the time from the resume's process start to its first POST of
     examples at the server (one CLOCK_MONOTONIC for both), median over BENCH_ROUNDS
     resumes of the same journal, for BENCH_RESUME_ROWS (2,000,000; quick 200,000) and
     BENCH_RESUME_SMALL_ROWS (200,000; quick 20,000). Target: big ÷ small ≤ 1.5. Also
     the journal's bytes per delivered row after the last resume finished.
  f  start-up: a 10-row file, the ceiling and ingest's defaults alternating
     BENCH_STARTUP_RUNS times each (9; quick 5). Target: median wall ÷ ceiling's ≤ 1.2.
  faults, settle: the exactly-once scenarios of bench/exactly_once.py.

Knobs: BENCH_QUICK=1 takes every quick size (about a minute a scenario; any knob
set explicitly wins), BENCH_ROUNDS (3; quick 1) alternating rounds, BENCH_OUT the
JSON results file (bench/results.json). "ingest (defaults)" is `ingest run` with
only its input, dataset, base URL, checkpoint and -q: whatever the defaults are.
"""

from __future__ import annotations

import compileall
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import exactly_once
import lifecycle
import orjson
import throughput
from harness import PINNED, ROOT, Server, env_int, print_table, print_targets

Scenario = Callable[[Server, Path, int], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {
    "a": throughput.cpu_bound,
    "b": throughput.latency_bound,
    "c": throughput.rate_bound,
    "d": lifecycle.memory,
    "e": lifecycle.resume,
    "f": lifecycle.startup,
}


def show(result: dict[str, Any]) -> None:
    ratio = result.get("ratio", "× ceiling")
    if "table" in result:
        print_table(result["title"], result["table"], ratio)
    for sub in result.get("tables", []):
        print_table(f"{result['title']}: {sub['title']}", sub["table"], ratio)
    print()
    print_targets(result["targets"])


def main() -> None:
    only = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s]
    rounds = env_int("BENCH_ROUNDS", 3, 1)
    picked = [name for name in SCENARIOS if not only or name in only]
    out = Path(os.environ.get("BENCH_OUT", ROOT / "bench" / "results.json"))
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "pinned": PINNED,
        "rounds": rounds,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": {},
    }
    print(f"{results['machine']}; server pinned to CPU 1, clients to CPU 0: {PINNED}")
    # Bytecode for every client, as an installed package has it: with PYTHONDONTWRITEBYTECODE
    # set, each run would compile ingest's modules again and count it as start-up and CPU.
    compileall.compile_dir(ROOT / "ingest", quiet=1)
    compileall.compile_dir(ROOT / "bench", quiet=1)
    if picked:
        server = Server()
        try:
            with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
                for name in picked:
                    began = time.perf_counter()
                    result = SCENARIOS[name](server, Path(tmp), rounds)
                    result["seconds"] = round(time.perf_counter() - began, 1)
                    show(result)
                    results["scenarios"][name] = result
                    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
        finally:
            server.stop()
        print(f"\nresults written to {out}")
    for part in ("faults", "settle"):
        if not only or part in only:
            os.environ["BENCH_ONLY"] = part
            exactly_once.main()


if __name__ == "__main__":
    sys.exit(main())
