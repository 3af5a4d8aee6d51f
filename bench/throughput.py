"""Scenarios (a) CPU-bound, (b) latency-bound and (c) rate-bound, limit unknown.

Each returns a result dict (tables of median rows and the targets) for run.py to
print and save; see run.py for the knobs and how each target is computed.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
from pathlib import Path
from typing import Any

from harness import (
    Run,
    Server,
    alternate,
    bare,
    env_int,
    env_list,
    ingest,
    measure,
    median_row,
    sdk,
    target,
    write_sample,
)


def cpu_bound(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(a) No latency, no limit: the ceiling, the SDK and ingest side by side."""
    rows = env_int("BENCH_ROWS", 1_000_000, 100_000)
    sample = write_sample(tmp / "a.jsonl", rows)
    url = server.url
    server.calm()
    clients = {
        "ceiling (bare.py)": lambda: measure(server, "bare", bare(sample, url), rows),
        "ingest --batch-rows 500 --concurrency 8": lambda: measure(
            server, "ingest", ingest(sample, url, tmp, "--batch-rows", "500", "--concurrency", "8"),
            rows,
        ),
        "ingest ... --rate 0": lambda: measure(
            server, "ingest-r0",
            ingest(sample, url, tmp, "--batch-rows", "500", "--concurrency", "8", "--rate", "0"),
            rows,
        ),
    }  # fmt: skip
    if importlib.util.find_spec("arize") is not None:
        clients["arize SDK (1000-row calls)"] = lambda: measure(
            server, "sdk", sdk(sample, url), rows
        )
    runs = alternate(rounds, clients)
    sample.unlink()
    ceiling = median_row("ceiling", runs["ceiling (bare.py)"], None)
    table = [median_row(name, r, ceiling["rows_per_s"]) for name, r in runs.items()]
    ing = table[1]
    targets = [
        target("ingest rows/s ÷ ceiling", ing["vs_ceiling"], "≥ 0.85", ing["vs_ceiling"] >= 0.85),
        target(
            "ingest CPU/row ÷ ceiling",
            ing["cpu_us_per_row"] / ceiling["cpu_us_per_row"],
            "≤ 1.2",
            ing["cpu_us_per_row"] <= 1.2 * ceiling["cpu_us_per_row"],
        ),
        target("ceiling CPU µs/row", ceiling["cpu_us_per_row"], "≈ 3.6 (issue)", True),
    ]
    if len(table) > 3:
        vs_sdk = ing["rows_per_s"] / table[3]["rows_per_s"]
        targets.append(target("ingest rows/s ÷ SDK", vs_sdk, "≥ 10", vs_sdk >= 10))
    return {"title": f"(a) CPU-bound: {rows:,} rows, no latency, no limit", "table": table,
            "targets": targets}  # fmt: skip


def latency_bound(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(b) 150 ms on every request, 20-row batches: ingest defaults vs the best fixed level."""
    latency = env_int("BENCH_LATENCY_MS", 150, 150) / 1000
    seconds = env_int("BENCH_LATENCY_SECONDS", 8, 3)
    levels = [2**k for k in range(8)]  # 1 .. 128
    # Rows sized so that each fixed level, at its best (level x 20 rows per latency), lasts
    # `seconds`; the defaults get the biggest file, which the best level takes `seconds` on.
    sizes = {c: max(200, round(c * 20 / latency * seconds)) for c in levels}
    samples = {c: write_sample(tmp / f"b{c}.jsonl", n) for c, n in sizes.items()}
    server.calm()
    server.faults(latency=latency)
    url = server.url
    big = max(levels)

    def fixed(c: int) -> Run:
        flags = ("--concurrency", str(c), "--rate", "0", "--batch-rows", "20")
        return measure(server, f"c{c}", ingest(samples[c], url, tmp, *flags), sizes[c])

    clients = {
        "ingest --batch-rows 20 (defaults)": lambda: measure(
            server, "ingest", ingest(samples[big], url, tmp, "--batch-rows", "20"), sizes[big]
        )
    }
    clients |= {f"ingest --concurrency {c} --rate 0": (lambda c=c: fixed(c)) for c in levels}  # type: ignore[misc]
    runs = alternate(rounds, clients)
    server.calm()
    for sample in samples.values():
        sample.unlink()
    medians = {name: median_row(name, r, None) for name, r in runs.items()}
    best_name = max(list(medians)[1:], key=lambda n: medians[n]["rows_per_s"])
    best = medians[best_name]["rows_per_s"]
    table = [{**m, "vs_ceiling": m["rows_per_s"] / best} for m in medians.values()]
    ratio = table[0]["vs_ceiling"]
    return {
        "title": f"(b) latency-bound: {latency * 1000:.0f} ms per request, 20-row batches, "
        f"no limit; best fixed level: {best_name}",
        "ratio": "× best fixed",
        "table": table,
        "targets": [target("ingest defaults ÷ best fixed concurrency", ratio, "≥ 0.8",
                           ratio >= 0.8)],
    }  # fmt: skip


def steady_rate(per_second: list[int]) -> float:
    """Accepted requests/s over the steady part: the 1 s bins (by server arrival, from the
    run's first request) without the first 20% of them (at least 2) and the last, partial one."""
    skip = max(2, math.ceil(0.2 * len(per_second)))
    steady = per_second[skip:-1]
    return statistics.fmean(steady) if steady else 0.0


def rate_bound(server: Server, tmp: Path, rounds: int) -> dict[str, Any]:
    """(c) The server allows R requests/s: ingest with no rate set, and with --rate R."""
    rates = env_list("BENCH_RATES", "5,20,50", "20")
    seconds = env_int("BENCH_RATE_SECONDS", 30, 8)
    batch = 100
    url = server.url
    tables: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for rate in rates:
        rows = round(rate * seconds * batch)
        sample = write_sample(tmp / f"c{rate:g}.jsonl", rows)
        for mode in ("bucket", "window"):
            for retry_after in (True, False):
                server.calm()
                server.faults(rate_limit=rate, rate_limit_mode=mode, send_retry_after=retry_after)
                flags = ("--batch-rows", str(batch))
                capped = (*flags, "--rate", f"{rate:g}")
                runs = alternate(rounds, {
                    "ingest (no --rate)": lambda f=flags, s=sample, n=rows: measure(
                        server, "auto", ingest(s, url, tmp, *f), n, timeline=True),
                    f"ingest --rate {rate:g}": lambda f=capped, s=sample, n=rows: measure(
                        server, "capped", ingest(s, url, tmp, *f), n, timeline=True),
                })  # fmt: skip
                label = f"R={rate:g} {mode} {'Retry-After' if retry_after else 'no Retry-After'}"
                table = []
                for name, rr in runs.items():
                    row = median_row(name, rr, None)
                    row["steady_accepted_per_s"] = statistics.median(
                        steady_rate(r.traffic["accepted_per_second"]) for r in rr
                    )
                    row["vs_ceiling"] = row["steady_accepted_per_s"] / rate
                    row["throttled_share"] = statistics.median(
                        r.throttled / max(1, r.requests) for r in rr
                    )
                    row["max_in_any_second"] = max(r.traffic["max_in_any_second"] for r in rr)
                    row["max_in_a_clock_second"] = max(
                        r.traffic["max_in_a_clock_second"] for r in rr
                    )
                    table.append(row)
                auto, cap = table
                targets += [
                    target(f"{label}: auto accepted/s ÷ R", auto["vs_ceiling"], "≥ 0.9",
                           auto["vs_ceiling"] >= 0.9),
                    target(f"{label}: auto 429 share", auto["throttled_share"], "≤ 0.05",
                           auto["throttled_share"] <= 0.05),
                    target(f"{label}: --rate R accepted/s ÷ R", cap["vs_ceiling"], "≥ 0.97",
                           cap["vs_ceiling"] >= 0.97),
                    target(f"{label}: --rate R 429s", cap["throttled"], "0",
                           cap["throttled"] == 0),
                    target(f"{label}: --rate R max in any 1 s", cap["max_in_any_second"],
                           f"≤ {rate:g}", cap["max_in_any_second"] <= rate),
                ]  # fmt: skip
                tables.append({"title": label, "table": table})
        sample.unlink()
    server.calm()
    return {
        "title": f"(c) rate-bound, limit unknown: {seconds} s of work at R, {batch}-row batches",
        "ratio": "steady ÷ R",
        "tables": tables,
        "targets": targets,
    }
