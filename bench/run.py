"""`make bench`: ingest against a bare aiohttp+orjson uploader, side by side, in one run.

Starts the fake server in its own process, writes a sample (BENCH_ROWS rows,
default 200,000), then uploads it with each client in turn (each into a fresh
dataset), alternating for BENCH_ROUNDS rounds: the bare uploader, ingest with
row keys (the default) and ingest with `--no-key`. Prints rows/s, the ratio of
ingest to the bare uploader (and to the official SDK, when installed), of keys
to no keys, and each client's peak RSS; then peak RSS of ingest at 5x the rows,
to show memory stays flat. Ratios are what to quote: the machines are shared
and absolute times are noisy. Then the exactly-once scenarios of
`bench/exactly_once.py` (every fault and kills; the cost of settling);
BENCH_ONLY=throughput|faults|settle runs one part.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import exactly_once
import orjson

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def write_sample(path: Path, rows: int) -> None:
    with path.open("wb") as f:
        for i in range(rows):
            row = {
                "question": f"What is {i} + {i}? Explain the steps.",
                "answer": str(2 * i),
                "topic": ("arithmetic", "algebra", "geometry")[i % 3],
                "score": (i % 1000) / 1000,
                "metadata": {"row": i, "tags": ["bench", "synthetic"]},
            }
            f.write(orjson.dumps(row) + b"\n")


def start_server(datasets: list[str]) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "ingest", "fake-server", "--port", "0", "--api-key", KEY]
    for ds in datasets:
        args += ["--dataset", ds]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def timed(cmd: list[str]) -> tuple[float, int]:
    """Run ``cmd``; return its wall time and peak RSS in MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, "ARIZE_API_KEY": KEY}, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed with {status}")
    return elapsed, usage.ru_maxrss // 1024


def ingest_cmd(sample: Path, url: str, dataset: str, checkpoint: Path) -> list[str]:
    """`ingest run` as a user would type it, unthrottled."""
    return [
        sys.executable, "-m", "ingest", "run", "--input", str(sample), "--dataset-id", dataset,
        "--base-url", url, "--rate", "0", "-q", "--checkpoint", str(checkpoint),
    ]  # fmt: skip


CLIENTS = ("bare", "ingest", "no-key")


def held(url: str, dataset: str) -> int:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=30) as resp:
        return int(orjson.loads(resp.read())["datasets"].get(dataset, 0))


def main() -> None:
    only = os.environ.get("BENCH_ONLY", "")
    if only in ("", "throughput"):
        throughput()
    exactly_once.main()


def throughput() -> None:
    # Ids as Arize makes them (base64 of "Dataset:N:..."): the SDK tells ids from names so.
    datasets = [
        base64.b64encode(f"Dataset:{i}:bench".encode()).decode() for i in range(3 * ROUNDS + 2)
    ]
    server, url = start_server(datasets)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / "sample.jsonl"
            write_sample(sample, ROWS)
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in CLIENTS}
            for r in range(ROUNDS):
                bare_ds, ingest_ds, no_key_ds = datasets[3 * r : 3 * r + 3]
                results["bare"].append(
                    timed(
                        [sys.executable, str(ROOT / "bench" / "bare.py"), str(sample), url, bare_ds]
                    )
                )
                results["ingest"].append(
                    timed(ingest_cmd(sample, url, ingest_ds, Path(tmp) / f"r{r}.ckpt"))
                )
                results["no-key"].append(
                    timed(
                        [*ingest_cmd(sample, url, no_key_ds, Path(tmp) / f"n{r}.ckpt"), "--no-key"]
                    )
                )
                for ds in (bare_ds, ingest_ds, no_key_ds):
                    assert held(url, ds) == ROWS, f"{ds} holds {held(url, ds)} rows, not {ROWS}"
            print(f"{ROWS:,} rows, {ROUNDS} alternating rounds, fake server in its own process")
            best = {}
            for name, runs in results.items():
                best[name] = min(t for t, _ in runs)
                rss = max(m for _, m in runs)
                print(f"  {name:7} best {ROWS / best[name]:>10,.0f} rows/s   peak RSS {rss} MiB")
            print(f"  ingest / bare throughput: {best['bare'] / best['ingest']:.2f}")
            print(
                f"  ingest with keys / --no-key throughput: {best['no-key'] / best['ingest']:.2f}"
            )
            if importlib.util.find_spec("arize") is not None:
                sdk_ds = datasets[3 * ROUNDS]
                sdk_time, sdk_rss = timed(
                    [sys.executable, str(ROOT / "bench" / "sdk.py"), str(sample), url, sdk_ds]
                )
                assert held(url, sdk_ds) == ROWS
                print(
                    f"  arize SDK       {ROWS / sdk_time:>10,.0f} rows/s   peak RSS {sdk_rss} MiB"
                )
                print(f"  ingest / arize SDK throughput: {sdk_time / best['ingest']:.2f}")
            big = Path(tmp) / "big.jsonl"
            write_sample(big, 5 * ROWS)
            _, big_rss = timed(ingest_cmd(big, url, datasets[-1], Path(tmp) / "big.ckpt"))
            assert held(url, datasets[-1]) == 5 * ROWS
            small_rss = max(m for _, m in results["ingest"])
            print(
                f"  ingest peak RSS: {small_rss} MiB at {ROWS:,} rows, "
                f"{big_rss} MiB at {5 * ROWS:,} rows (x{big_rss / small_rss:.2f})"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
