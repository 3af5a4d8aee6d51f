"""A row the server cannot take never blocks a run; an outage never rejects rows."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from conftest import FakeService
from scripted import DATASET, KEY, Scripted, created, problem, scripted_server

import ingest
from ingest.checkpoint import read_journal

POISON = 37  # the row the server fails on


def write_rows(path: Path, n: int, *, deep: int | None = None) -> None:
    """``n`` rows ``{"i": i}``; row ``deep``, if given, nested 300 objects deep."""
    lines = [orjson.dumps({"i": i}) for i in range(n)]
    if deep is not None:
        lines[deep] = b'{"i":%d,"k":' % deep + b'{"k":' * 299 + b"1" + b"}" * 300
    path.write_bytes(b"\n".join(lines) + b"\n")


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def fails_on_poison(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
    """Store the rows, unless the poison row is among them: then a bare 500, as a crash gives."""
    if any(example["i"] == POISON for example in examples):
        return web.Response(status=500, text="Internal Server Error")
    return created(examples, server)


def always(status: int) -> Any:
    def answer(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
        return problem(status, "the server is down")

    return answer


def settings(url: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=DATASET,
        base_url=url,
        rejects=str(tmp_path / "rejects.jsonl"),
        batch_rows=16,
        concurrency=2,
        rate=0,
        max_attempts=3,
        backoff_base=0.01,
        backoff_max=0.02,
        settle_lag=0.01,
    )
    return {**base, **kw}


async def test_a_too_deep_row_is_refused_by_the_fake_and_rejected(
    fake: FakeService, tmp_path: Path
) -> None:
    """A row nested 300 deep is refused by the fake with a 422: it is rejected, the rest land."""
    write_rows(tmp_path / "rows.jsonl", 100, deep=POISON)
    run = settings(fake.url, tmp_path, dataset_id=fake.dataset_id)
    summary = await ingest.upload(api_key=fake.api_key, **run)
    assert (summary.exit_code, summary.rows_delivered, summary.rows_rejected) == (6, 99, 1)
    [entry] = rejects_of(tmp_path / "rejects.jsonl")
    assert entry["line"] == POISON + 1
    assert entry["reason"].startswith("refused by the server: HTTP 422")
    assert "nested 300 levels deep" in entry["reason"]
    stored = sorted(e["i"] for e in fake.state.examples(fake.dataset_id))
    assert stored == [i for i in range(100) if i != POISON]


async def test_a_row_answered_500_every_time_is_rejected_from_the_cli(tmp_path: Path) -> None:
    """A row the server 500s on every attempt goes to the rejects file; the CLI exits 6."""
    write_rows(tmp_path / "rows.jsonl", 100)
    config = tmp_path / "run.toml"
    config.write_text("backoff_base = 0.01\nbackoff_max = 0.02\nsettle_lag = 0.01\n")
    async with scripted_server(fails_on_poison) as server:
        cmd = [
            sys.executable, "-m", "ingest", "run", str(config),
            "--input", str(tmp_path / "rows.jsonl"), "--dataset-id", DATASET,
            "--base-url", server.url, "--rejects", str(tmp_path / "rejects.jsonl"),
            "--batch-rows", "16", "--rate", "0", "--max-attempts", "3", "--json",
        ]  # fmt: skip
        env = {**os.environ, "ARIZE_API_KEY": KEY}
        with anyio.fail_after(60):
            done = await anyio.run_process(cmd, env=env, check=False)
            posts = len(server.posts)
            again = await anyio.run_process(cmd, env=env, check=False)
    assert done.returncode == 6, done.stderr.decode()
    summary = orjson.loads(done.stdout)
    assert (summary["status"], summary["rows_delivered"]) == ("complete-with-rejects", 99)
    [entry] = rejects_of(tmp_path / "rejects.jsonl")
    assert entry["line"] == POISON + 1 and entry["raw"] == '{"i":37}'
    assert entry["reason"] == (
        "server error: HTTP 500: Internal Server Error, on every one of 3 attempts "
        "(it is not stored)"
    )
    assert sorted(row["i"] for row in server.stored) == [i for i in range(100) if i != POISON]
    # The rejected row is settled: the re-run sends nothing, the poison row included.
    assert again.returncode == 6 and len(server.posts) == posts


async def test_a_503_storm_ends_with_exit_5_and_rejects_nothing(tmp_path: Path) -> None:
    """A 503 on every POST (an outage or a proxy) never rejects a row: exit 5, rows kept."""
    write_rows(tmp_path / "rows.jsonl", 50)
    async with scripted_server(always(503)) as server:
        run = settings(server.url, tmp_path, batch_rows=1)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
    assert info.value.exit_code == 5
    assert rejects_of(tmp_path / "rejects.jsonl") == []
    state = read_journal(info.value.summary.checkpoint)
    assert state.rejected_rows == 0 and state.in_flight  # kept for the resume


async def test_a_500_on_every_row_stops_the_run_instead_of_rejecting_all(tmp_path: Path) -> None:
    """When row after row gets 500 with nothing delivered, the server is broken: exit 5."""
    write_rows(tmp_path / "rows.jsonl", 60)
    async with scripted_server(always(500)) as server:
        run = settings(server.url, tmp_path, batch_rows=4)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
    assert "server looks broken" in str(info.value)
    assert len(rejects_of(tmp_path / "rejects.jsonl")) <= 3
    state = read_journal(info.value.summary.checkpoint)
    assert state.delivered_rows == 0 and state.rejected_rows <= 3


async def test_re_runs_against_a_broken_server_reject_no_more_rows(tmp_path: Path) -> None:
    """The broken-server guard spans runs: a re-run against an always-500 server rejects nothing."""
    write_rows(tmp_path / "rows.jsonl", 60)
    async with scripted_server(always(500)) as server:
        run = settings(server.url, tmp_path, batch_rows=4, concurrency=1)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
        first = read_journal(info.value.summary.checkpoint)
        for _ in range(2):
            with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
                await ingest.upload(api_key=KEY, **run)
            assert info.value.exit_code == 5
            assert "3 rows in a row (3 of them by earlier runs)" in str(info.value)
    assert first.rejected_rows == first.server_error_streak == 3
    assert len(rejects_of(tmp_path / "rejects.jsonl")) == 3
    state = read_journal(info.value.summary.checkpoint)
    assert (state.rejected_rows, state.delivered_rows) == (3, 0)


async def test_a_delivery_ends_the_server_error_streak_a_journal_records(tmp_path: Path) -> None:
    """Rows delivered after server-error rejects reset the streak the next run starts from."""
    write_rows(tmp_path / "rows.jsonl", 60)
    async with scripted_server(always(500)) as server:
        run = settings(server.url, tmp_path, batch_rows=4, concurrency=1)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
    checkpoint = info.value.summary.checkpoint
    assert read_journal(checkpoint).server_error_streak == 3
    async with scripted_server(fails_on_poison) as server:
        run = settings(server.url, tmp_path, batch_rows=4, concurrency=1)
        summary = await ingest.upload(api_key=KEY, **run)
    assert summary.rows_rejected == 1  # the poison row, rejected though 3 came before it
    # Settled last (this server refuses search filters), the poison row is the whole streak:
    # the deliveries before it ended the 3 of the first run.
    assert read_journal(checkpoint).server_error_streak == 1
