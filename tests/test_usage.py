"""Usage as users meet it: bad flags and settings, library arguments, signals, stdin names."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from fakeproc import fake_process
from scripted import serving
from test_cli import DATASET, KEY, ingest_cmd, list_all, run_ingest, start_until_done, write_rows

import ingest
from ingest.checkpoint import read_journal


def test_a_bad_flag_value_still_prints_the_json_object(tmp_path: Path) -> None:
    """With --json, a flag argparse refuses gives exit 2 and one failed object on stdout."""
    cmd = ingest_cmd(tmp_path, "http://127.0.0.1:9", "--batch-rows", "abc", "--json")
    done = run_ingest(cmd)
    assert done.returncode == 2
    report = orjson.loads(done.stdout)
    assert (report["status"], report["exit_code"]) == ("failed", 2)
    assert "--batch-rows: invalid int value: 'abc'" in report["message"]


@pytest.mark.parametrize(
    ("flag", "friendly"),
    [
        ("--dataset-id", "dataset_id is required (--dataset-id ID)"),
        ("--input", "input is required (--input PATH, or - for stdin)"),
    ],
)
def test_a_missing_required_flag_is_named_in_plain_words(
    tmp_path: Path, flag: str, friendly: str
) -> None:
    """A missing --dataset-id or --input is said as the flag to give, not a Python signature."""
    cmd = ingest_cmd(tmp_path, "http://127.0.0.1:9")
    at = cmd.index(flag)
    del cmd[at : at + 2]
    done = run_ingest(cmd)
    assert done.returncode == 2
    assert friendly in done.stderr and "RunConfig" not in done.stderr


@pytest.mark.parametrize("size", ["9223372036854775807", "99999999999999999999G"])
def test_a_huge_batch_bytes_is_a_config_error_with_the_range(tmp_path: Path, size: str) -> None:
    """An absurd --batch-bytes exits 2 stating the allowed range, with no traceback."""
    write_rows(tmp_path / "rows.jsonl", 3)
    done = run_ingest(ingest_cmd(tmp_path, "http://127.0.0.1:9", "--batch-bytes", size))
    assert done.returncode == 2, done.stderr
    assert "batch_bytes must be 1024..268435456" in done.stderr
    assert "Traceback" not in done.stderr


async def test_library_takes_a_path_object(fake: Any, tmp_path: Path) -> None:
    """ingest.upload(input=pathlib.Path(...)) uploads like a str path and cleans up after."""
    write_rows(tmp_path / "rows.jsonl", 120)
    summary = await ingest.upload(
        api_key=fake.api_key,
        input=pathlib.Path(tmp_path / "rows.jsonl"),
        checkpoint=pathlib.Path(tmp_path / "run.ckpt"),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        rate=0,
    )
    assert (summary.status, summary.rows_delivered) == ("complete", 120)
    assert fake.state.example_count(fake.dataset_id) == 120


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"batch_rows": "10"}, "batch_rows must be int"),
        ({"rate": "fast"}, 'rate must be a number or "auto"'),
        ({"restart": 1}, "restart must be bool"),
        ({"no_such_setting": 1}, "unknown setting 'no_such_setting'"),
        ({"dataset_id": None}, "dataset_id is required"),
    ],
)
async def test_library_settings_are_checked_before_any_request(
    fake: Any, tmp_path: Path, bad: dict[str, Any], message: str
) -> None:
    """A wrongly typed, unknown or missing library setting is a ConfigError before any request."""
    write_rows(tmp_path / "rows.jsonl", 10)
    settings: dict[str, Any] = {
        "input": str(tmp_path / "rows.jsonl"),
        "dataset_id": fake.dataset_id,
        "base_url": fake.url,
        **bad,
    }
    with pytest.raises(ingest.ConfigError, match=message):
        await ingest.upload(api_key=fake.api_key, **settings)
    assert len(fake.state.requests) == 0
    assert [p.name async for p in anyio.Path(tmp_path).iterdir()] == ["rows.jsonl"]


def test_sighup_winds_down_like_sigterm(tmp_path: Path) -> None:
    """SIGHUP (an ssh disconnect) finishes requests in flight, exits 130 and resumes cleanly."""
    rows = 4000
    write_rows(tmp_path / "rows.jsonl", rows)
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.05") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "2", "--json")
        proc = start_until_done(cmd, tmp_path, batches=3)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert orjson.loads(out)["status"] == "interrupted"
        again = run_ingest(cmd)
        assert again.returncode == 0, again.stderr
        counts = Counter(ex["i"] for ex in list_all(url, DATASET))
    assert set(counts) == set(range(rows)) and set(counts.values()) == {1}


def test_second_ctrl_c_still_prints_one_json_object(tmp_path: Path) -> None:
    """With --json, the immediate exit on a second SIGINT still prints one object on stdout."""
    write_rows(tmp_path / "rows.jsonl", 5000)
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.3") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "4", "--json")
        proc = start_until_done(cmd, tmp_path, batches=4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "stopped at once" in err
    report = orjson.loads(out)
    assert (report["status"], report["exit_code"]) == ("interrupted", 130)


def test_dev_stdin_is_read_as_stdin_with_its_checkpoint_in_the_working_folder(
    tmp_path: Path,
) -> None:
    """`--input /dev/stdin` uploads like `-`, and its checkpoint goes to the cwd, not /dev."""
    write_rows(tmp_path / "rows.jsonl", 300)
    data = (tmp_path / "rows.jsonl").read_bytes()
    with fake_process("--api-key", KEY, "--dataset", DATASET) as (url, _):
        cmd = [sys.executable, "-m", "ingest", "run", "--input", "/dev/stdin"]
        cmd += ["--dataset-id", DATASET, "--base-url", url, "--rate", "0"]
        env = {**os.environ, "ARIZE_API_KEY": KEY}
        done = subprocess.run(
            cmd, input=data, env=env, cwd=tmp_path, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert len(list(list_all(url, DATASET))) == 300
    assert [p.name for p in tmp_path.glob("stdin.ingest-*.ckpt")], list(tmp_path.iterdir())


def test_a_terminal_hangup_winds_down_like_sighup(tmp_path: Path) -> None:
    """An ssh disconnect (the controlling terminal hangs up) lets requests in flight finish."""
    import pty

    write_rows(tmp_path / "rows.jsonl", 3000)
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.5") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "4")
        master, slave = pty.openpty()
        # setsid -c: a new session whose controlling terminal is the pty, as under sshd.
        proc = subprocess.Popen(
            ["setsid", "-c", *cmd],
            env={**os.environ, "ARIZE_API_KEY": KEY},
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        deadline = time.monotonic() + 60
        ckpt = str(tmp_path / "run.ckpt")
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(ckpt) and read_journal(ckpt).done_batches >= 2:
                break
            time.sleep(0.02)
        os.close(master)  # the hangup: SIGHUP, then EIO on every write to the terminal
        code = proc.wait(timeout=60)
        state = read_journal(ckpt)
    assert code == 130
    assert state.in_flight == []  # every request in flight finished and was journaled


def test_nohup_keeps_the_run_going_through_a_hangup(tmp_path: Path) -> None:
    """Under nohup (SIGHUP ignored) a SIGHUP does not stop the run: it completes."""
    write_rows(tmp_path / "rows.jsonl", 2000)
    with fake_process("--api-key", KEY, "--dataset", DATASET, "--latency", "0.05") as (url, _):
        cmd = ingest_cmd(tmp_path, url, "--batch-rows", "100", "--concurrency", "2")
        proc = subprocess.Popen(
            ["nohup", *cmd],
            env={**os.environ, "ARIZE_API_KEY": KEY},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            ckpt = tmp_path / "run.ckpt"
            if ckpt.exists() and read_journal(str(ckpt)).done_batches >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert len(list(list_all(url, DATASET))) == 2000


def test_an_abbreviated_flag_is_refused_not_guessed(tmp_path: Path) -> None:
    """`--jso` is an unknown flag (exit 2), not a silent --json that the usage path misses."""
    done = run_ingest(ingest_cmd(tmp_path, "http://127.0.0.1:9", "--jso"))
    assert done.returncode == 2
    assert "unrecognized arguments: --jso" in done.stderr


def test_a_device_as_checkpoint_is_a_clear_error_with_its_json_object(tmp_path: Path) -> None:
    """`--checkpoint /dev/null` exits 2: a checkpoint must be a file; --json gets its object."""
    write_rows(tmp_path / "rows.jsonl", 3)
    cmd = ingest_cmd(tmp_path, "http://127.0.0.1:9", "--json")
    cmd[cmd.index("--checkpoint") + 1] = "/dev/null"
    done = run_ingest(cmd)
    assert done.returncode == 2, done.stderr
    assert "must be a regular file" in orjson.loads(done.stdout)["message"]
    assert "Traceback" not in done.stderr


async def test_a_bare_404_points_at_the_base_url_too(tmp_path: Path) -> None:
    """A 404 that is not the API's problem+json says --base-url may be wrong, not only the id."""
    from aiohttp import web

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", not_found)
    write_rows(tmp_path / "rows.jsonl", 3)
    async with serving(app) as url:
        with pytest.raises(ingest.DatasetNotFoundError, match="or --base-url"):
            await ingest.upload(
                api_key=KEY,
                input=str(tmp_path / "rows.jsonl"),
                dataset_id=DATASET,
                base_url=f"{url}/api",
            )
