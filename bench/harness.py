"""The benchmark's machinery: sample rows, the fake server, timed client runs, tables.

One fake server runs in its own process for the whole benchmark, pinned to CPU 1
while every client is pinned to CPU 0 (when the machine has two cores or more), so
the server's work never counts as the client's. Each run gets a fresh dataset;
what the run did is read from the server afterwards (`/_fake/stats`): requests,
429s and their spread in time by the server's clock, and whether every row landed
exactly once (each sample row carries a unique `seq`), then the dataset is deleted
to keep the server's memory flat. Client CPU is user + system time of the child
from `os.wait4`, peak RSS its `ru_maxrss`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
CLIENT_CPU = ["taskset", "-c", "0"] if PINNED else []
SERVER_CPU = ["taskset", "-c", "1"] if PINNED else []
UNIQUE = "seq"
POOL = 400  # datasets made at the server's start: ids as Arize makes them, for the SDK

_TOPICS = ("arithmetic", "géométrie", "統計学", "Ökonomie", "physics", "naïve Bayes", "história")
_SOURCES = ("support-chat", "docs", "forum", "e-mail", "survey")
_TAGS = (["bench"], ["bench", "synthetic"], ["qa", "long"], [], ["日本語", "multi"], ["édition"])
_WORDS = [
    "the",
    "of",
    "a",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "it",
    "be",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
]


def sample_row(i: int) -> dict[str, Any]:
    """Row `i` of the sample: 200-400 bytes, some non-ASCII, nested, fields vary by row."""
    words = " ".join(_WORDS[(i * 7 + k) % len(_WORDS)] for k in range(8 + i % 6))
    row: dict[str, Any] = {
        UNIQUE: i,
        "question": f"Q{i}: {words}?",
        "answer": f"{(i * 2654435761) % 100000} — {_TOPICS[i % 7]}",
        "topic": _TOPICS[(i // 7) % 7],
        "score": (i * 7919 % 1000) / 1000,
        "metadata": {
            "source": _SOURCES[i % 5],
            "tags": _TAGS[i % 6],
            "turns": [{"role": ("user", "assistant")[k % 2], "chars": 40 + (i + k) % 200}
                      for k in range(1 + i % 3)],
        },
    }  # fmt: skip
    if i % 4 == 0:
        row["context"] = {"doc_id": f"doc-{i % 997}", "span": [i % 50, i % 50 + 12]}
    if i % 5 == 1:
        row["label"] = None if i % 10 == 1 else bool(i % 3)
    if i % 6 == 2:
        row["note"] = "Zürich → København, 北京"
    return row


def write_sample(path: Path, rows: int) -> Path:
    with path.open("wb") as f:
        for i in range(rows):
            f.write(orjson.dumps(sample_row(i)) + b"\n")
    return path


class Server:
    """The fake server in its own process, and the datasets it was started with."""

    def __init__(self) -> None:
        ids = [base64.b64encode(f"Dataset:{i}:bench".encode()).decode() for i in range(1, POOL)]
        args = [*SERVER_CPU, sys.executable, "-m", "ingest", "fake-server", "--port", "0"]
        args += ["--api-key", KEY]
        for dataset in ids:
            args += ["--dataset", dataset]
        self._ids = iter(ids)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise SystemExit(f"fake server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def dataset(self) -> str:
        return next(self._ids)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=120) as resp:
            return orjson.loads(resp.read())

    def faults(self, **changes: Any) -> None:
        """Set the server's faults (latency, rate limit, ...) for the runs that follow."""
        request = urllib.request.Request(
            f"{self.url}/_fake/faults", data=orjson.dumps(changes), method="PATCH"
        )
        urllib.request.urlopen(request, timeout=30).close()

    def calm(self) -> None:
        self.faults(latency=0.0, rate_limit=None, accept_rows=None, send_retry_after=True)

    def traffic(self, dataset: str, since: float, *, timeline: bool = False) -> dict[str, Any]:
        stats = self.get(f"/_fake/stats?since={since}" + ("&timeline=1" if timeline else ""))
        empty = {"requests": 0, "throttled": 0, "first_append": None}
        return stats["traffic"].get(dataset, empty)  # type: ignore[no-any-return]

    def landed_once(self, dataset: str, rows: int) -> bool:
        """Every sample row 0..rows-1 is in `dataset` exactly once."""
        spread = self.get(f"/_fake/stats?unique={UNIQUE}")["unique"][dataset]
        return bool(
            spread["rows"] == spread["distinct"] == rows
            and (rows == 0 or (spread["min"], spread["max"]) == (0, rows - 1))
        )

    def drop(self, dataset: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/v2/datasets/{quote(dataset, safe='')}", method="DELETE"
        )
        request.add_header("Authorization", f"Bearer {KEY}")
        with contextlib.suppress(urllib.error.HTTPError):  # already gone
            urllib.request.urlopen(request, timeout=60).close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=90)


@dataclass(slots=True)
class Run:
    """One client run, as its process and the server saw it."""

    client: str
    rows: int
    wall: float
    cpu: float
    rss_mib: float
    exit_code: int
    requests: int = 0
    throttled: int = 0
    once: bool = False
    traffic: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "client": self.client, "rows": self.rows, "wall_s": round(self.wall, 4),
            "rows_per_s": round(self.rows / self.wall, 1), "cpu_s": round(self.cpu, 4),
            "cpu_us_per_row": round(1e6 * self.cpu / max(1, self.rows), 3),
            "peak_rss_mib": round(self.rss_mib, 1), "exit": self.exit_code,
            "requests": self.requests, "throttled": self.throttled, "exactly_once": self.once,
            "traffic": self.traffic,
        }  # fmt: skip


def spawn(cmd: Sequence[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARIZE_API_KEY": KEY}
    return subprocess.Popen(
        [*CLIENT_CPU, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def reap(proc: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    """Wait for `proc`; its exit code, CPU seconds and peak RSS in MiB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def timed(client: str, cmd: Sequence[str], rows: int) -> Run:
    started = time.perf_counter()
    proc = spawn(cmd)
    code, cpu, rss = reap(proc)
    wall = time.perf_counter() - started
    if code != 0:
        err = proc.stderr.read().decode(errors="replace")[-800:] if proc.stderr else ""
        print(f"  ! {client} exited {code}: {err.strip()}", file=sys.stderr)
    if proc.stderr:
        proc.stderr.close()
    return Run(client, rows, wall, cpu, rss, code)


def measure(
    server: Server, client: str, command: Callable[[str], list[str]], rows: int,
    *, timeline: bool = False,
) -> Run:  # fmt: skip
    """Run `command(dataset)` into a fresh dataset; fill in what the server saw; drop it."""
    dataset = server.dataset()
    since = time.monotonic()
    run = timed(client, command(dataset), rows)
    run.traffic = server.traffic(dataset, since, timeline=timeline)
    run.requests, run.throttled = run.traffic["requests"], run.traffic["throttled"]
    run.once = run.exit_code == 0 and server.landed_once(dataset, rows)
    server.drop(dataset)
    return run


def bare(sample: Path, url: str, batch: int = 500, concurrency: int = 8) -> Callable[..., Any]:
    script = str(ROOT / "bench" / "bare.py")
    return lambda ds: [sys.executable, script, str(sample), url, ds, str(batch), str(concurrency)]


def sdk(sample: Path, url: str) -> Callable[[str], list[str]]:
    return lambda ds: [sys.executable, str(ROOT / "bench" / "sdk.py"), str(sample), url, ds]


def ingest(sample: Path, url: str, ckpt_dir: Path, *flags: str) -> Callable[[str], list[str]]:
    """`ingest run` as a user types it: with no flags, its defaults (keys on)."""

    def command(ds: str) -> list[str]:
        ckpt = ckpt_dir / f"{ds.rstrip('=')}.ckpt"
        return [
            sys.executable, "-m", "ingest", "run", "--input", str(sample), "--dataset-id", ds,
            "--base-url", url, "--checkpoint", str(ckpt), "-q", *flags,
        ]  # fmt: skip

    return command


def alternate(rounds: int, runs: dict[str, Callable[[], Run]]) -> dict[str, list[Run]]:
    """Each client once per round, in turn (A B C A B C ...)."""
    out: dict[str, list[Run]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            out[name].append(run())
    return out


def median_row(name: str, runs: list[Run], ceiling: float | None) -> dict[str, Any]:
    """The medians of a client's runs, one table row."""
    rows = runs[0].rows
    rate = statistics.median(r.rows / r.wall for r in runs)
    return {
        "client": name,
        "rows": rows,
        "rows_per_s": rate,
        "wall_s": statistics.median(r.wall for r in runs),
        "cpu_us_per_row": statistics.median(1e6 * r.cpu / max(1, rows) for r in runs),
        "peak_rss_mib": max(r.rss_mib for r in runs),
        "requests": statistics.median(r.requests for r in runs),
        "throttled": statistics.median(r.throttled for r in runs),
        "exactly_once": all(r.once for r in runs),
        "vs_ceiling": rate / ceiling if ceiling else None,
        "runs": [r.json() for r in runs],
    }


EXTRA_COLUMNS = {
    "steady_accepted_per_s": ("steady 2xx/s", "{:.2f}"),
    "throttled_share": ("429 share", "{:.1%}"),
    "max_in_any_second": ("max in any 1 s", "{}"),
    "max_in_a_clock_second": ("max in a clock s", "{}"),
}


def print_table(title: str, rows: list[dict[str, Any]], ratio: str = "× ceiling") -> None:
    extra = [key for key in EXTRA_COLUMNS if key in rows[0]]
    print(f"\n### {title}\n")
    heads = ["client", "rows", "rows/s", "CPU µs/row", "peak RSS MiB", "requests", "429s",
             "once", ratio, *(EXTRA_COLUMNS[k][0] for k in extra)]  # fmt: skip
    print("| " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * 6 + "---|" + "---:|" * (1 + len(extra)))
    for r in rows:
        cells = [
            r["client"], f"{r['rows']:,}", f"{r['rows_per_s']:,.0f}",
            f"{r['cpu_us_per_row']:.2f}", f"{r['peak_rss_mib']:.0f}", f"{r['requests']:,.0f}",
            f"{r['throttled']:,.0f}", "yes" if r["exactly_once"] else "NO",
            "" if r.get("vs_ceiling") is None else f"{r['vs_ceiling']:.2f}",
            *(EXTRA_COLUMNS[k][1].format(r[k]) for k in extra),
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def print_targets(targets: list[dict[str, Any]]) -> None:
    for t in targets:
        mark = "met" if t["met"] else "NOT MET"
        print(f"- {t['name']}: {t['value']:.3g} (target {t['target']}) {mark}")


def target(name: str, value: float, goal: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "target": goal, "met": bool(met)}


def env_int(name: str, full: int, quick: int) -> int:
    return int(os.environ.get(name, quick if os.environ.get("BENCH_QUICK") else full))


def env_list(name: str, full: str, quick: str) -> list[float]:
    text = os.environ.get(name, quick if os.environ.get("BENCH_QUICK") else full)
    return [float(x) for x in text.split(",") if x]


def journal_files(ckpt: Path) -> Iterator[Path]:
    return (p for p in ckpt.parent.glob(ckpt.name + "*") if p.is_file())
