"""`make demo`: a real upload of 10,000 rows into the embedded fake server.

Writes a seeded sample (once), starts ``ingest fake-server`` on a free
loopback port, runs ``ingest run configs/demo.toml`` against it, checks the
server holds every row, and stops the server.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "demo.toml"
SAMPLE = ROOT / "build" / "demo" / "sample.jsonl"
DATASET_ID = "RGF0YXNldDoxOmRlbW8vZGF0YXNldA=="
API_KEY = "demo-key"
ROWS = 10_000

TOPICS = {
    "arithmetic": ("What is {a} + {b}?", lambda a, b: str(a + b)),
    "multiplication": ("What is {a} × {b}?", lambda a, b: str(a * b)),
    "algebra": ("If {a}x = {c}, what is x?", lambda a, b: str(b)),
    "geometry": ("What is the area of a {a} by {b} rectangle?", lambda a, b: str(a * b)),
}
MODELS = ("gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-8b")


def make_sample(path: Path, rows: int, seed: int = 7) -> None:
    """Write ``rows`` question/answer records such as an eval dataset holds."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        for i in range(rows):
            topic = rng.choice(list(TOPICS))
            template, answer = TOPICS[topic]
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            row = {
                "question": template.format(a=a, b=b, c=a * b),
                "answer": answer(a, b),
                "topic": topic,
                "difficulty": rng.choice(["easy", "medium", "hard"]),
                "score": round(rng.random(), 3),
                "model": rng.choice(MODELS),
                "latency_ms": rng.randint(80, 2400),
                "tags": rng.sample(["eval", "golden", "v2", "reviewed", "synthetic"], k=2),
                "metadata": {"row": i, "reviewer": rng.choice(["ana", "bo", "chen", None])},
            }
            f.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)


def start_server() -> tuple[subprocess.Popen[str], str]:
    """Start the fake server on a free port; return it and its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest",
            "fake-server",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--dataset",
            DATASET_ID,
            # A server that stores some batches and then answers 503, as a flaky proxy
            # does: the run looks those rows up instead of sending them twice.
            "--fail-after-commit-rate",
            "0.1",
            "--seed",
            "4",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        sys.exit(f"demo: the fake server did not start (it said {line!r})")
    return proc, line.removeprefix("listening on ")


def main() -> int:
    if not SAMPLE.exists():
        make_sample(SAMPLE, ROWS)
        print(f"demo: wrote {ROWS:,} sample rows to {SAMPLE.relative_to(ROOT)}")
    # A fresh server holds nothing, so a checkpoint from an earlier demo must go.
    for stale in SAMPLE.parent.glob("demo.*"):
        stale.unlink()
    server, url = start_server()
    print(f"demo: fake Arize server on {url}")
    try:
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", "ingest", "run", str(CONFIG), "--base-url", url],
            env={**os.environ, "ARIZE_API_KEY": API_KEY},
        )
        with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as resp:
            stats = orjson.loads(resp.read())
        held = stats["datasets"].get(DATASET_ID, 0)
        once = "each once, " if held == ROWS else ""
        print(
            f"demo: the server holds {held:,} rows ({once}though it answered 503 after "
            f"storing some batches; {time.monotonic() - started:.1f}s)"
        )
        if code == 0 and held != ROWS:
            print(f"demo: expected {ROWS:,} rows on the server", file=sys.stderr)
            return 1
        return code
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
