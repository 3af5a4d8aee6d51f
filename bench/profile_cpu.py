"""Client CPU per row and rows/s on a CPU-bound run: ingest against an honest bare uploader.

Usage: profile_cpu.py [ROWS] [ROUNDS]  (defaults 200,000 and 5)

Starts the fake server in its own process (pinned to CPU 1 where there are two),
writes deterministic rows of about 300 bytes (some non-ASCII, some nested), then
alternates, A B A B, a bare aiohttp + orjson uploader (streams the JSONL, parses
each row with orjson, batches 500, POSTs at concurrency 8: no checks, no keys, no
journal) and `ingest run --rate 0 --concurrency 8 --batch-rows 500 -q` (keys on),
each pinned to CPU 0. Client CPU is the child's rusage (user + system, every
thread). Prints the medians and ingest's ratios to the bare uploader. Set
PROFILE=pyspy to record a py-spy flame graph of one ingest run (to /tmp).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import orjson

KEY = "bench-key"
TWO_CORES = (os.cpu_count() or 1) >= 2


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if TWO_CORES else cmd


def write_rows(path: Path, rows: int) -> None:
    topics = ("arithmetic", "algèbre", "幾何学", "probability", "статистика")
    with path.open("wb") as f:
        for i in range(rows):
            row: dict[str, object] = {
                "question": f"What is {i} + {i * 7}? Explain each step — briefly, please.",
                "answer": f"The sum is {i + i * 7}; carry the digits from right to left.",
                "topic": topics[i % len(topics)],
                "score": (i % 1000) / 1000,
                "label": i % 3 == 0,
            }
            if i % 2:
                row["metadata"] = {"row": i, "tags": ["bench", "synthetic"], "src": {"n": i % 97}}
            else:
                row["notes"] = "ünïcödé ✓ " * 3 + str(i)
            f.write(orjson.dumps(row) + b"\n")


async def bare(path: str, url: str, dataset: str, rows: int = 500, concurrency: int = 8) -> None:
    """The ceiling: parse each row with orjson (so it knows it is JSON), batch, POST."""
    import aiohttp

    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency)
    headers = {
        "Authorization": f"Bearer {os.environ['ARIZE_API_KEY']}",
        "Content-Type": "application/json",
    }
    target = f"{url}/v2/datasets/{quote(dataset, safe='')}/examples"

    async def worker(session: aiohttp.ClientSession) -> None:
        while (body := await queue.get()) is not None:
            async with session.post(target, data=body, headers=headers) as resp:
                await resp.read()
                resp.raise_for_status()

    loads = orjson.loads
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        batch: list[bytes] = []
        with open(path, "rb") as f:  # noqa: ASYNC230 (bare on purpose)
            for line in f:
                loads(line)
                batch.append(line.rstrip(b"\n"))
                if len(batch) == rows:
                    await queue.put(b'{"examples":[' + b",".join(batch) + b"]}")
                    batch = []
        if batch:
            await queue.put(b'{"examples":[' + b",".join(batch) + b"]}")
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)


def start_server(datasets: list[str]) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "ingest", "fake-server", "--port", "0", "--api-key", KEY]
    for ds in datasets:
        args += ["--dataset", ds]
    proc = subprocess.Popen(pinned(1, args), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"fake server did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def held(url: str, dataset: str) -> int:
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=30) as resp:
        return int(orjson.loads(resp.read())["datasets"].get(dataset, 0))


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; its wall time and CPU seconds (user + system, all its threads)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env={**os.environ, "ARIZE_API_KEY": KEY}, stdout=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed with {status}")
    return wall, usage.ru_utime + usage.ru_stime


def ingest_cmd(sample: Path, url: str, dataset: str, checkpoint: Path) -> list[str]:
    return [
        sys.executable, "-m", "ingest", "run", "--input", str(sample), "--dataset-id", dataset,
        "--base-url", url, "--rate", "0", "--concurrency", "8", "--batch-rows", "500", "-q",
        "--checkpoint", str(checkpoint),
    ]  # fmt: skip


def main(rows: int, rounds: int) -> None:
    datasets = [f"ds{i}" for i in range(2 * rounds + 1)]
    server, url = start_server(datasets)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sample = Path(tmp) / "sample.jsonl"
            write_rows(sample, rows)
            size = sample.stat().st_size
            print(f"{rows:,} rows, {size / rows:.0f} B/row, {rounds} rounds A B A B")
            got: dict[str, list[tuple[float, float]]] = {"bare": [], "ingest": []}
            for r in range(rounds):
                ds_bare, ds_ingest = datasets[2 * r : 2 * r + 2]
                me = [sys.executable, __file__, "bare", str(sample), url, ds_bare]
                got["bare"].append(timed(pinned(0, me)))
                ckpt = Path(tmp) / f"r{r}.ckpt"
                got["ingest"].append(timed(pinned(0, ingest_cmd(sample, url, ds_ingest, ckpt))))
                for ds in (ds_bare, ds_ingest):
                    assert held(url, ds) == rows, f"{ds} holds {held(url, ds)}, not {rows}"
            med: dict[str, tuple[float, float]] = {}
            for name, runs in got.items():
                wall = statistics.median(w for w, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                med[name] = wall, cpu
                print(
                    f"  {name:7} {rows / wall:>9,.0f} rows/s  {cpu / rows * 1e6:6.2f} µs CPU/row"
                    f"  (walls {', '.join(f'{w:.2f}' for w, _ in runs)})"
                )
            print(
                f"  ingest/bare rows/s {med['bare'][0] / med['ingest'][0]:.2f}   "
                f"CPU/row {med['ingest'][1] / med['bare'][1]:.2f}"
            )
            if os.environ.get("PROFILE") == "pyspy":
                out = f"/tmp/ingest-profile-{int(time.time())}"
                cmd = ingest_cmd(sample, url, datasets[-1], Path(tmp) / "p.ckpt")
                spy = ["py-spy", "record", "--nonblocking", "-r", "250", "-o", out + ".svg"]
                timed(pinned(0, [*spy, "--", *cmd]))
                spy = [*spy[:-2], "-f", "raw", "-o", out + ".txt"]
                timed(pinned(0, [*spy, "--", *cmd[:-1], str(Path(tmp) / "p2.ckpt")]))
                print(f"  profile: {out}.svg, {out}.txt")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:2] == ["bare"]:
        asyncio.run(bare(*sys.argv[2:5]))
    else:
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 200_000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 5,
        )
