"""A refusal of the dataset stops the run; a refusal of a few rows rejects just those."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from scripted import KEY, Scripted, created, problem, scripted_server
from test_row_server_errors import rejects_of, settings, write_rows

import ingest
from ingest.refusals import RefusalStreak, same_reason

ROWS, BATCH = 400, 16
POISON = {37, 210, 333}


def refuses_everything(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
    """A schema the rows do not fit: each row is refused, naming its index and its value."""
    index = 0 if len(examples) == 1 else 1
    value = examples[index]["i"]
    return problem(422, f"examples[{index}]: field 'i' = \"{value}\" is not in the schema")


def refuses_poison(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
    """Store the rows unless a poison row is among them: then a 422 naming that row."""
    bad = [n for n, e in enumerate(examples) if e["i"] in POISON]
    if bad:
        return problem(422, f"examples[{bad[0]}]: field 'i' is not in the schema")
    return created(examples, server)


async def test_every_row_refused_alike_stops_the_run_after_three_batches(tmp_path: Path) -> None:
    """A server refusing every row for one reason stops the run after about 3 batches' rejects."""
    write_rows(tmp_path / "rows.jsonl", ROWS)
    async with scripted_server(refuses_everything) as server:
        run = settings(server.url, tmp_path, batch_rows=BATCH, concurrency=2)
        with anyio.fail_after(30), pytest.raises(ingest.DatasetRefusedError) as info:
            await ingest.upload(api_key=KEY, **run)
    assert info.value.exit_code == 5
    message = str(info.value)
    assert "is not in the schema" in message and "about the dataset" in message
    assert "batches in a row" in message
    rejected = rejects_of(tmp_path / "rejects.jsonl")
    # Three whole batches, and what the other worker had refused by then: not the input.
    assert 3 * BATCH <= len(rejected) <= 5 * BATCH
    assert server.stored == []


async def test_a_few_poison_rows_are_still_bisected_and_rejected(tmp_path: Path) -> None:
    """Rows refused one here and there are rejected alone; every other row is delivered."""
    write_rows(tmp_path / "rows.jsonl", ROWS)
    async with scripted_server(refuses_poison) as server:
        run = settings(server.url, tmp_path, batch_rows=BATCH, concurrency=2)
        with anyio.fail_after(30):
            summary = await ingest.upload(api_key=KEY, **run)
    assert (summary.exit_code, summary.rows_rejected) == (6, len(POISON))
    assert sorted(r["line"] for r in rejects_of(tmp_path / "rejects.jsonl")) == sorted(
        i + 1 for i in POISON
    )
    assert sorted(e["i"] for e in server.stored) == [i for i in range(ROWS) if i not in POISON]


async def test_one_row_batches_of_poison_rows_in_a_row_stop_the_run(tmp_path: Path) -> None:
    """Three one-row batches in a row refused alike are the dataset's doing too."""
    write_rows(tmp_path / "rows.jsonl", 20)
    async with scripted_server(refuses_everything) as server:
        run = settings(server.url, tmp_path, batch_rows=1, concurrency=1)
        with anyio.fail_after(30), pytest.raises(ingest.DatasetRefusedError) as info:
            await ingest.upload(api_key=KEY, **run)
    assert [r["line"] for r in rejects_of(tmp_path / "rejects.jsonl")] == [1, 2, 3]
    assert (info.value.summary.rows_rejected, server.stored) == (3, [])


def test_a_reason_without_its_row_specific_parts() -> None:
    """Numbers and quoted values are blanked out, so one schema error reads the same on each row."""
    a = same_reason("HTTP 422: examples[3]: field 'x' = \"17\" is not in the schema")
    b = same_reason("HTTP 422: examples[0]: field 'y' = \"abc\" is not in the schema")
    assert a == b
    assert same_reason("HTTP 422: too deep") != same_reason("HTTP 400: too deep")


def test_a_delivery_or_another_reason_breaks_the_streak() -> None:
    """Whole batches refused alike stop the run only in a row, and only for one reason."""
    streak = RefusalStreak(in_a_row=2)

    def refuse_all(seq: int, reason: str, rows: int = 2) -> None:
        for _ in range(rows):
            streak.refused(seq, f"HTTP 422: {reason}")
        streak.finished(seq, rows, f"batch {seq}")

    refuse_all(1, "locked")
    streak.delivered()
    refuse_all(2, "locked")
    refuse_all(3, "schema")
    streak.refused(4, "HTTP 422: schema")  # half the batch refused, half delivered
    streak.finished(4, 2, "batch 4")
    refuse_all(5, "schema")
    with pytest.raises(ingest.DatasetRefusedError):
        refuse_all(6, "schema")


async def test_a_rerun_against_a_dataset_still_refusing_stops_at_its_first_batch(
    tmp_path: Path,
) -> None:
    """The streak spans runs: re-run unchanged, the run stops after one more batch, not three."""
    write_rows(tmp_path / "rows.jsonl", ROWS)
    async with scripted_server(refuses_everything) as server:
        run = settings(server.url, tmp_path, batch_rows=BATCH, concurrency=1)
        with anyio.fail_after(30), pytest.raises(ingest.DatasetRefusedError):
            await ingest.upload(api_key=KEY, **run)
        first = len(rejects_of(tmp_path / "rejects.jsonl"))
        with anyio.fail_after(30), pytest.raises(ingest.DatasetRefusedError) as info:
            await ingest.upload(api_key=KEY, **run)
    assert first == 3 * BATCH
    assert len(rejects_of(tmp_path / "rejects.jsonl")) == first + BATCH
    assert "counting an earlier run's" in str(info.value)
