"""Scenarios (d) memory, (e) resume and (f) start-up; see run.py for knobs and targets."""

from __future__ import annotations

import shutil
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from harness import (
    Server,
    alternate,
    bare,
    env_int,
    ingest,
    journal_files,
    measure,
    median_row,
    reap,
    spawn,
    target,
    write_sample,
)


def memory(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(d) Peak RSS of ingest, at its defaults and at --concurrency 128, small and big files."""
    small_rows = env_int("BENCH_MEM_SMALL_ROWS", 200_000, 20_000)
    big_rows = env_int("BENCH_MEM_ROWS", 2_000_000, 200_000)
    server.calm()
    url = server.url
    table: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for flags in ((), ("--concurrency", "128")):
        by_size = {}
        for rows in (small_rows, big_rows):
            sample = write_sample(tmp / f"d{rows}.jsonl", rows)
            name = f"ingest {' '.join(flags) or '(defaults)'}, {rows:,} rows"
            runs = alternate(rounds, {name: lambda s=sample, n=rows, f=flags: measure(
                server, "ingest", ingest(s, url, tmp, *f), n)})  # fmt: skip
            sample.unlink()
            by_size[rows] = median_row(name, runs[name], None)
            table.append(by_size[rows])
        small, big = by_size[small_rows]["peak_rss_mib"], by_size[big_rows]["peak_rss_mib"]
        what = " ".join(flags) or "defaults"
        targets += [
            target(f"{what}: peak RSS MiB at {big_rows:,} rows", big, "≤ 100", big <= 100),
            target(f"{what}: peak RSS {big_rows:,} ÷ {small_rows:,} rows", big / small, "≤ 1.2",
                   big <= 1.2 * small),
        ]  # fmt: skip
    return {"title": "(d) memory: peak RSS, no latency, no limit", "table": table, "ratio": "",
            "targets": targets}  # fmt: skip


def _ninety_percent(server: Server, tmp: Path, rows: int) -> tuple[str, Path, Path]:
    """A journal of the whole input, 90% delivered and no batch in doubt.

    One request at a time, the server takes 90% of the rows, then answers 429 (nothing
    stored) until a SIGINT ends the run; the journal is then cut after its last `done`
    record, dropping the throttled batch's `sending` (which a resume would look up,
    although a 429 proves it was not stored): exactly a crash right after that batch.
    """
    sample = write_sample(tmp / f"e{rows}.jsonl", rows)
    dataset = server.dataset()
    done = rows * 9 // 10
    server.calm()
    server.faults(accept_rows=done)
    refused = server.get("/_fake/stats")["accept_refusals"]
    flags = ("--rate", "0", "--concurrency", "1")
    proc = spawn(ingest(sample, server.url, tmp, *flags)(dataset))
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and proc.poll() is None:
        stats = server.get("/_fake/stats")
        if stats["datasets"][dataset] >= done and stats["accept_refusals"] > refused:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    reap(proc)
    if proc.stderr:
        proc.stderr.close()
    server.calm()
    ckpt = tmp / f"{dataset.rstrip('=')}.ckpt"
    lines = ckpt.read_bytes().splitlines(keepends=True)
    last_done = max(i for i, line in enumerate(lines) if _kind(line) == "done")
    (tmp / f"e{rows}.saved").write_bytes(b"".join(lines[: last_done + 1]))
    return dataset, sample, ckpt


def _kind(line: bytes) -> object:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a torn line
    return record.get("t") if isinstance(record, dict) else None


def _first_post(server: Server, dataset: str, sample: Path, ckpt: Path, *, finish: bool) -> float:
    """Seconds from the resume's process start to its first POST examples, at the server."""
    shutil.copyfile(ckpt.parent / f"{sample.stem}.saved", ckpt)
    started = time.monotonic()  # the same CLOCK_MONOTONIC as the server's
    proc = spawn(ingest(sample, server.url, ckpt.parent)(dataset))
    first = None
    while first is None and proc.poll() is None:
        first = server.traffic(dataset, started)["first_append"]
        time.sleep(0.05)  # the arrival time is the server's: polling only decides when to stop
    if not finish:
        proc.kill()
    reap(proc)
    if proc.stderr:
        proc.stderr.close()
    if first is None:
        first = server.traffic(dataset, started)["first_append"]
    return float("nan") if first is None else first - started


def resume(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(e) Start to first new POST of a run 90% done, big vs small; journal bytes per row."""
    small_rows = env_int("BENCH_RESUME_SMALL_ROWS", 200_000, 20_000)
    big_rows = env_int("BENCH_RESUME_ROWS", 2_000_000, 200_000)
    found: dict[int, dict[str, Any]] = {}
    for rows in (small_rows, big_rows):
        dataset, sample, ckpt = _ninety_percent(server, tmp, rows)
        journal_at_90 = sum(p.stat().st_size for p in journal_files(ckpt))
        searches = server.get("/_fake/stats")["searches"]
        waits = [_first_post(server, dataset, sample, ckpt, finish=False)
                 for _ in range(max(1, rounds) - 1)]  # fmt: skip
        waits.append(_first_post(server, dataset, sample, ckpt, finish=True))
        journal = sum(p.stat().st_size for p in journal_files(ckpt))
        # Only the last resume ran to the end; the ones before were killed after their first
        # POST, so their rows are extra copies: the once-check counts distinct rows only.
        stats = server.get("/_fake/stats?unique=seq")
        spread = stats["unique"][dataset]
        found[rows] = {
            "rows": rows,
            "first_post_s": statistics.median(waits),
            "waits_s": waits,
            "journal_bytes_at_90": journal_at_90,
            "journal_bytes": journal,
            "journal_bytes_per_row": journal / rows,
            "all_rows_landed": spread["distinct"] == rows,
            "searches_per_resume": (stats["searches"] - searches) / len(waits),
        }
        server.drop(dataset)
        sample.unlink()
    ratio = found[big_rows]["first_post_s"] / found[small_rows]["first_post_s"]
    print("\n### (e) resume: a run 90% done, resumed with ingest's defaults\n")
    print("| rows | start → first new POST s | journal bytes | bytes/delivered row | searches | "
          "all landed |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---|")
    for f in found.values():
        landed = "yes" if f["all_rows_landed"] else "NO"
        print(
            f"| {f['rows']:,} | {f['first_post_s']:.3f} | {f['journal_bytes']:,} | "
            f"{f['journal_bytes_per_row']:.1f} | {f['searches_per_resume']:g} | {landed} |"
        )
    return {
        "title": "(e) resume",
        "resume": list(found.values()),
        "targets": [target(f"first new POST, {big_rows:,} ÷ {small_rows:,} rows", ratio, "≤ 1.5",
                           ratio <= 1.5)],
    }  # fmt: skip


def startup(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(f) A 10-row file: ingest's wall time against the ceiling's, alternating."""
    runs_each = env_int("BENCH_STARTUP_RUNS", 9, 5)
    sample = write_sample(tmp / "f.jsonl", 10)
    server.calm()
    url = server.url
    runs = alternate(runs_each, {
        "ceiling (bare.py)": lambda: measure(server, "bare", bare(sample, url), 10),
        "ingest (defaults)": lambda: measure(server, "ingest", ingest(sample, url, tmp), 10),
    })  # fmt: skip
    table = [median_row(name, r, None) for name, r in runs.items()]
    ratio = table[1]["wall_s"] / table[0]["wall_s"]
    for row in table:
        row["vs_ceiling"] = table[0]["wall_s"] / row["wall_s"]
    return {
        "ratio": "ceiling wall ÷ wall",
        "title": f"(f) start-up: 10 rows, median of {runs_each} alternating runs; "
        f"wall {table[0]['wall_s']:.3f} s (ceiling) vs {table[1]['wall_s']:.3f} s (ingest)",
        "table": table,
        "targets": [target("ingest wall ÷ ceiling wall", ratio, "≤ 1.2", ratio <= 1.2)],
    }
