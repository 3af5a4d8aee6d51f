"""The `ingest` command as users run it: real subprocesses, a fake server in its own process."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakeproc import fake_process

from ingest.checkpoint import CheckpointJournal, fingerprint, read_journal

KEY = "cli-test-key"
DATASET = "RGF0YXNldDoxOmNsaS90ZXN0Kz0="  # holds "/" and "+" once decoded: must be encoded


def write_rows(path: Path, n: int, extra: bytes = b"") -> None:
    path.write_bytes(
        b"".join(orjson.dumps({"i": i, "text": f"row {i} " + "x" * 40}) + b"\n" for i in range(n))
        + extra
    )


def ingest_cmd(tmp_path: Path, url: str, *args: str, dataset: str = DATASET) -> list[str]:
    """``ingest run`` of ``tmp_path/rows.jsonl`` into ``dataset`` at ``url``."""
    return [
        sys.executable,
        "-m",
        "ingest",
        "run",
        "--input",
        str(tmp_path / "rows.jsonl"),
        "--dataset-id",
        dataset,
        "--base-url",
        url,
        "--checkpoint",
        str(tmp_path / "run.ckpt"),
        "--rate",
        "0",
        "--settle-lag",  # a test-mode wait: the fake shows a commit in a search at once
        "0.05",
        *args,
    ]


def run_ingest(
    cmd: list[str], key: str = KEY, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ARIZE_API_KEY": key}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def list_all(url: str, dataset: str) -> Iterator[dict[str, Any]]:
    """Every example in the dataset, through the public list endpoint's pagination."""
    cursor = None
    path = f"{url}/v2/datasets/{urllib.parse.quote(dataset, safe='')}/examples"
    while True:
        query = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        req = urllib.request.Request(
            f"{path}?{urllib.parse.urlencode(query)}", headers={"Authorization": f"Bearer {KEY}"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = orjson.loads(resp.read())
        yield from page["examples"]
        if not page["pagination"]["has_more"]:
            return
        cursor = page["pagination"]["next_cursor"]


def start_until_done(
    cmd: list[str], tmp_path: Path, batches: int, stdin: bytes | None = None
) -> subprocess.Popen[str]:
    """Start ``cmd`` and return once its journal has ``batches`` done batches.

    ``stdin`` is written to the process's stdin, which is then left open.
    """
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "ARIZE_API_KEY": KEY},
        stdin=subprocess.PIPE if stdin is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.buffer.write(stdin)  # type: ignore[attr-defined]
        proc.stdin.flush()
    ckpt = tmp_path / "run.ckpt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and read_journal(str(ckpt)).done_batches >= batches:
            break
        time.sleep(0.02)
    return proc


@pytest.fixture
def server() -> Iterator[str]:
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.01") as (url, _):
        yield url


def test_sigkill_mid_run_then_rerun_loses_nothing(server: str, tmp_path: Path) -> None:
    """Killed and re-run, every row is there; only rows of batches journaled in flight repeat."""
    rows = 20_000
    write_rows(tmp_path / "rows.jsonl", rows)
    cmd = ingest_cmd(tmp_path, server, "--batch-rows", "200", "--concurrency", "4")
    proc = start_until_done(cmd, tmp_path, batches=10)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    state = read_journal(str(tmp_path / "run.ckpt"))
    assert 0 < state.delivered_rows < rows, "the kill must land mid-run"
    in_flight = {line for r in state.in_flight for line in range(r["lines"][0], r["lines"][1] + 1)}

    again = run_ingest(cmd)
    assert again.returncode == 0, again.stderr
    counts = Counter(ex["i"] for ex in list_all(server, DATASET))
    assert set(counts) == set(range(rows))
    duplicated = {i for i, n in counts.items() if n > 1}
    assert all(n == 2 for n in (counts[i] for i in duplicated))
    assert {i + 1 for i in duplicated} <= in_flight  # line = i + 1


def test_sigterm_finishes_in_flight_and_exits_130(server: str, tmp_path: Path) -> None:
    """SIGTERM lets requests finish and exits 130; the re-run completes every row once."""
    write_rows(tmp_path / "rows.jsonl", 20_000)
    cmd = ingest_cmd(tmp_path, server, "--batch-rows", "100", "--concurrency", "2", "--json")
    proc = start_until_done(cmd, tmp_path, batches=5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = orjson.loads(out)
    assert summary["status"] == "interrupted"
    assert read_journal(str(tmp_path / "run.ckpt")).in_flight == []  # in-flight ones finished

    again = run_ingest(cmd)
    assert again.returncode == 0, again.stderr
    counts = Counter(ex["i"] for ex in list_all(server, DATASET))
    assert set(counts) == set(range(20_000)) and set(counts.values()) == {1}


def test_exit_codes_name_the_problem(server: str, tmp_path: Path) -> None:
    """Missing input 2, refused key 3, unknown dataset 4, rejected rows 6: each says why."""
    missing = run_ingest(ingest_cmd(tmp_path, server))
    assert missing.returncode == 2 and "rows.jsonl: input file not found" in missing.stderr

    write_rows(tmp_path / "rows.jsonl", 50, extra=b'{"time": 1}\n')
    wrong_key = run_ingest(ingest_cmd(tmp_path, server), key="not-the-key")
    assert wrong_key.returncode == 3 and "ARIZE_API_KEY" in wrong_key.stderr
    assert "not-the-key" not in wrong_key.stderr + wrong_key.stdout

    other = ingest_cmd(tmp_path, server, "--checkpoint", str(tmp_path / "other.ckpt"))
    other[other.index("--dataset-id") + 1] = "bm8tc3VjaA=="
    not_found = run_ingest(other)
    assert not_found.returncode == 4 and "bm8tc3VjaA==" in not_found.stderr

    rejected = run_ingest(ingest_cmd(tmp_path, server, "--json"))
    assert rejected.returncode == 6, rejected.stderr
    summary = orjson.loads(rejected.stdout)
    assert (summary["rows_delivered"], summary["rows_rejected"]) == (50, 1)

    rerun = run_ingest(ingest_cmd(tmp_path, server, "--json"))
    assert rerun.returncode == 6
    assert orjson.loads(rerun.stdout)["status"] == "already-complete"


def test_checkpoint_in_use_and_of_another_input_are_refused(server: str, tmp_path: Path) -> None:
    """A held checkpoint, or one made for other input, exits 2 with what to do."""
    write_rows(tmp_path / "rows.jsonl", 10)
    fp = fingerprint(str(tmp_path / "rows.jsonl"), DATASET, None)
    held, _ = CheckpointJournal.open(str(tmp_path / "run.ckpt"), fp, rejects_path="unused")
    try:
        busy = run_ingest(ingest_cmd(tmp_path, server))
    finally:
        held.release()
    assert busy.returncode == 2 and "in use" in busy.stderr

    assert run_ingest(ingest_cmd(tmp_path, server)).returncode == 0
    (tmp_path / "rows.jsonl").write_bytes(b'{"other": 1}\n' * 11)  # not a mere growth
    changed = run_ingest(ingest_cmd(tmp_path, server))
    assert changed.returncode == 2 and "--restart" in changed.stderr
    restarted = run_ingest(ingest_cmd(tmp_path, server, "--restart"))
    assert restarted.returncode == 0, restarted.stderr


def test_status_reports_the_checkpoint(server: str, tmp_path: Path) -> None:
    """`ingest status` prints what a checkpoint has done, as text or JSON."""
    write_rows(tmp_path / "rows.jsonl", 300)
    assert run_ingest(ingest_cmd(tmp_path, server, "--batch-rows", "100")).returncode == 0
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest",
            "status",
            "--checkpoint",
            str(tmp_path / "run.ckpt"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = orjson.loads(status.stdout)
    assert (report["finished"], report["rows_delivered"], report["batches_done"]) == (True, 300, 3)
    assert report["lines_done"] == [[1, 300]]
    assert KEY not in (tmp_path / "run.ckpt").read_text()


def test_second_ctrl_c_exits_at_once_and_resume_still_works(tmp_path: Path) -> None:
    """A second SIGINT leaves at once with 130; the re-run still ends with every row present."""
    rows = 5000
    write_rows(tmp_path / "rows.jsonl", rows)
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.3") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "4")
        proc = start_until_done(cmd, tmp_path, batches=4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert "stopped at once" in err  # the immediate exit, not the graceful one
        state = read_journal(str(tmp_path / "run.ckpt"))
        in_flight = {n for r in state.in_flight for n in range(r["lines"][0], r["lines"][1] + 1)}

        again = run_ingest(ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "8"))
        assert again.returncode == 0, again.stderr
        counts = Counter(ex["i"] for ex in list_all(url, DATASET))
    assert set(counts) == set(range(rows))
    assert {i + 1 for i, n in counts.items() if n > 1} <= in_flight


def test_stdin_input_uploads_and_is_not_silently_resumed(server: str, tmp_path: Path) -> None:
    """`--input -` reads stdin; a second stdin run on its checkpoint is refused, not guessed."""
    write_rows(tmp_path / "rows.jsonl", 700)
    data = (tmp_path / "rows.jsonl").read_bytes()
    cmd = ingest_cmd(tmp_path, server)
    cmd[cmd.index("--input") + 1] = "-"
    env = {**os.environ, "ARIZE_API_KEY": KEY}
    first = subprocess.run(cmd, input=data, env=env, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cmd, input=data, env=env, capture_output=True, timeout=60)
    assert second.returncode == 2 and b"stdin" in second.stderr
    counts = Counter(ex["i"] for ex in list_all(server, DATASET))
    assert set(counts) == set(range(700)) and set(counts.values()) == {1}


def test_sigterm_ends_a_run_stalled_on_an_open_stdin(server: str, tmp_path: Path) -> None:
    """A producer that stops writing but keeps stdin open does not keep ingest from exiting."""
    cmd = ingest_cmd(tmp_path, server, "--batch-rows", "100")
    cmd[cmd.index("--input") + 1] = "-"
    rows = b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(5000))
    # stdin is left open, as `tail -f file | ingest run ... --input -` would leave it.
    proc = start_until_done(cmd, tmp_path, batches=40, stdin=rows)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)  # stdin still open: communicate() would close it
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert code == 130, err
    assert "interrupted" in out


def test_json_summary_and_key_hygiene_on_refusals(server: str, tmp_path: Path) -> None:
    """--json prints one object even for a refused run; a key's stray newline is not a problem."""
    missing = run_ingest(ingest_cmd(tmp_path, server, "--json"))
    assert missing.returncode == 2
    assert orjson.loads(missing.stdout) == {
        "status": "failed",
        "exit_code": 2,
        "message": f"{tmp_path / 'rows.jsonl'}: input file not found",
    }
    write_rows(tmp_path / "rows.jsonl", 10)
    assert run_ingest(ingest_cmd(tmp_path, server), key=KEY + "\r\n").returncode == 0
    bad = run_ingest(ingest_cmd(tmp_path, server, "--restart"), key="abc\ndef")
    assert bad.returncode == 2 and "control or non-ASCII" in bad.stderr and "def" not in bad.stderr


def test_a_refused_run_leaves_no_checkpoint_and_data_files_are_never_overwritten(
    server: str, tmp_path: Path
) -> None:
    """A run refused at the preflight leaves no checkpoint; a non-checkpoint file is kept."""
    write_rows(tmp_path / "rows.jsonl", 10)
    refused = run_ingest(ingest_cmd(tmp_path, server), key="wrong")
    assert refused.returncode == 3 and not (tmp_path / "run.ckpt").exists()
    (tmp_path / "run.ckpt").write_text("precious data\n")
    kept = run_ingest(ingest_cmd(tmp_path, server, "--restart"))
    assert kept.returncode == 2 and "not an ingest checkpoint" in kept.stderr
    assert (tmp_path / "run.ckpt").read_text() == "precious data\n"


def test_closed_stdin_is_a_clear_error(server: str, tmp_path: Path) -> None:
    """`--input -` with stdin closed says so (exit 2) instead of reading whatever fd 0 is."""
    cmd = ingest_cmd(tmp_path, server)
    cmd[cmd.index("--input") + 1] = "-"
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" 0<&-', "sh", *cmd],
        env={**os.environ, "ARIZE_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert closed.returncode == 2 and "stdin is closed" in closed.stderr


def test_gzip_on_stdin_is_refused_and_a_damaged_gz_sends_nothing(
    server: str, tmp_path: Path
) -> None:
    """Gzip on stdin cannot be checked first, so it is refused; a damaged .gz sends no row."""
    write_rows(tmp_path / "rows.jsonl", 2000)
    packed = bytearray(gzip.compress((tmp_path / "rows.jsonl").read_bytes()))
    cmd = ingest_cmd(tmp_path, server)
    cmd[cmd.index("--input") + 1] = "-"
    env = {**os.environ, "ARIZE_API_KEY": KEY}
    piped = subprocess.run(cmd, input=bytes(packed), env=env, capture_output=True, timeout=60)
    assert piped.returncode == 2
    assert b"stdin holds gzip data" in piped.stderr and b"--input" in piped.stderr
    assert not (tmp_path / "run.ckpt").exists()  # refused before a row: nothing to resume
    packed[len(packed) // 2] ^= 0x04
    (tmp_path / "rows.jsonl.GZ").write_bytes(packed)
    cmd = ingest_cmd(tmp_path, server, "--checkpoint", str(tmp_path / "gz.ckpt"))
    cmd[cmd.index("--input") + 1] = str(tmp_path / "rows.jsonl.GZ")
    damaged = run_ingest(cmd)
    assert damaged.returncode == 2
    assert "rows.jsonl.GZ: gzip member 1 (from compressed byte 0) is damaged" in damaged.stderr
    assert list(list_all(server, DATASET)) == []
    stdin = ingest_cmd(tmp_path, server)
    stdin[stdin.index("--input") + 1] = "-"
    plain = subprocess.run(stdin, input=(tmp_path / "rows.jsonl").read_bytes(), env=env, timeout=60)
    assert plain.returncode == 0  # the refused gzip left no checkpoint to refuse this run


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    show = "; import sys; print(' '.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code + show], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def test_the_cli_imports_nothing_only_other_subcommands_use() -> None:
    """``import ingest.cli`` (what ``ingest run`` starts with) loads no verify, status,
    pipeline or TOML parser: each subcommand imports its own when it runs."""
    loaded = _modules_after("import ingest.cli")
    unwanted = {"ingest.verify", "ingest.verify_report", "ingest.status", "ingest.pipeline"}
    assert not loaded & {*unwanted, "tomllib", "aiohttp"}
    assert not _modules_after("import ingest") & {*unwanted, "ingest.config", "aiohttp"}


def test_ingest_verify_stays_the_function_when_its_module_is_imported_first() -> None:
    """The module ``ingest.verify`` shares the function's name, and importing it first
    does not hide ``ingest.verify()`` (nor any other public name)."""
    code = (
        "import inspect, ingest.verify, ingest; "
        "assert inspect.iscoroutinefunction(ingest.verify), ingest.verify; "
        "assert all(getattr(ingest, name) is not None for name in ingest.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
