"""Run the fake Arize server as a subprocess, for tests that need a real process.

    with fake_process("--api-key", "k", "--dataset", "RGF0YXNldDoxOmFCY0Q=") as (url, proc):
        ...  # talk to url; the server is terminated on the way out

The arguments are passed through after `--port 0`, so the caller gives the
API key (`--api-key`, or ARIZE_API_KEY in the environment). The server
announces its URL on stdout; the helper waits for that line with a timeout and
stops the process by its PID on the way out.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTENING_PREFIX = "listening on "


def fake_server_command(*args: str) -> list[str]:
    """The argv that runs the fake server on a free port with `args`."""
    return [sys.executable, "-m", "ingest.fake", "--port", "0", *args]


def fake_server_env() -> dict[str, str]:
    """The environment for a child that must import `ingest` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@contextmanager
def fake_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 15.0
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start `ingest fake-server --port 0 ARGS`; yield (base URL, process); terminate it."""
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            fake_server_command(*args),
            cwd=REPO_ROOT,
            env=fake_server_env() if env is None else env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            line = _first_line(proc, timeout)
            if not line.startswith(LISTENING_PREFIX):
                proc.kill()
                proc.wait(timeout)
                stderr.seek(0)
                raise RuntimeError(f"fake server did not start: {line!r}\n{stderr.read()}")
            yield line.removeprefix(LISTENING_PREFIX).strip(), proc
        finally:
            _stop(proc, timeout)
            if proc.stdout is not None:
                proc.stdout.close()


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    # readline() cannot time out, so a thread reads and the caller waits on a queue.
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout)
    except queue.Empty:
        return f"<no line within {timeout}s>"


def _stop(proc: subprocess.Popen[str], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
