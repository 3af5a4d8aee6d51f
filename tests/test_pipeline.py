"""End to end through the library: every row once, rejects, retries, 429s, resume."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

import ingest
from ingest.checkpoint import CheckpointJournal, read_journal
from ingest.fake import FakeArize, serve


def write_rows(path: Path, n: int, *, extra: bytes = b"") -> list[bytes]:
    """Write ``n`` varied rows (plus ``extra`` lines at the end); return the row lines."""
    lines = []
    for i in range(n):
        row: dict[str, Any] = {"i": i, "question": f"What is {i} + {i}?", "answer": str(2 * i)}
        if i % 7 == 0:
            row["nested"] = {"tags": ["a", "b"], "score": i / 3, "ok": i % 2 == 0, "none": None}
        line = orjson.dumps(row)
        if i % 1000 == 1:
            line = b'{"i": %d, "big": 12345678901234567890123, "one": 1.0, "esc": "\\u00e9\\t"}' % i
        lines.append(line)
    path.write_bytes(b"\n".join(lines) + b"\n" + extra)
    return lines


KEY = "ingest_key"


def settings(fake: Any, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    base = dict(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        batch_rows=250,
        concurrency=4,
        rate=0,
        backoff_base=0.01,
        backoff_max=0.05,
        settle_lag=0.02,
    )
    return {**base, **kw}


async def upload_then_stop(fake: Any, rows: int, latency: float, **run: Any) -> Any:
    """Upload with ``latency`` on each request; ask a stop once the server holds ``rows`` rows."""
    fake.state.faults.latency = latency
    stop = anyio.Event()

    async def stop_soon() -> None:
        while fake.state.example_count(fake.dataset_id) < rows:  # noqa: ASYNC110 (polls)
            await anyio.sleep(0.01)
        stop.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_soon)
        summary = await ingest.upload(api_key=fake.api_key, stop=stop, **run)
    fake.state.faults.latency = 0.0
    return summary


def by_row(examples: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for ex in examples:
        user = {k: v for k, v in ex.items() if k not in ("id", "created_at", "updated_at", KEY)}
        out.setdefault(user["i"], []).append(user)
    return out


async def test_every_row_lands_once_as_written(fake: Any, tmp_path: Path) -> None:
    """10,500 rows land exactly once, each equal to its line: same keys, order and values."""
    lines = write_rows(tmp_path / "rows.jsonl", 10_500)
    summary = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert (summary.status, summary.exit_code) == ("complete", 0)
    assert summary.rows_delivered == 10_500
    stored = by_row(fake.state.examples(fake.dataset_id))
    assert len(stored) == 10_500
    for line in lines:
        # stdlib json keeps big integers exact and 1.0 a float, so this compares values as written
        expected = json.loads(line)
        [got] = stored[expected["i"]]
        assert list(got.items()) == list(expected.items())


async def test_finished_run_rerun_sends_nothing(fake: Any, tmp_path: Path) -> None:
    """Re-running a finished run sends no examples and ends as the first run did."""
    write_rows(tmp_path / "rows.jsonl", 600)
    first = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    posts = fake.state.post_examples_requests
    again = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert fake.state.post_examples_requests == posts
    assert (again.status, again.exit_code, again.total_delivered) == (
        "already-complete",
        first.exit_code,
        600,
    )
    assert fake.state.example_count(fake.dataset_id) == 600


async def test_bad_lines_are_rejected_and_good_rows_land(fake: Any, tmp_path: Path) -> None:
    """Bad lines go to the rejects file with their line numbers; every good row lands."""
    write_rows(tmp_path / "rows.jsonl", 1000, extra=b'oops\n{"id": 1}\n{}\n[1]\n')
    rejects = tmp_path / "rejects.jsonl"
    summary = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, rejects=str(rejects))
    )
    assert (summary.exit_code, summary.rows_rejected, summary.rows_delivered) == (6, 4, 1000)
    entries = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert [e["line"] for e in entries] == [1001, 1002, 1003, 1004]
    assert entries[0]["raw"] == "oops" and entries[0]["reason"].startswith("not valid JSON")
    assert fake.state.example_count(fake.dataset_id) == 1000


async def test_wrong_key_fails_after_one_request(fake: Any, tmp_path: Path) -> None:
    """A refused key stops the run after the preflight request, naming ARIZE_API_KEY."""
    write_rows(tmp_path / "rows.jsonl", 100)
    before = len(fake.state.requests)
    with pytest.raises(ingest.AuthError, match="ARIZE_API_KEY") as info:
        await ingest.upload(api_key="wrong", **settings(fake, tmp_path))
    assert info.value.exit_code == 3
    assert len(fake.state.requests) - before == 1


async def test_unknown_dataset_fails_after_one_request(fake: Any, tmp_path: Path) -> None:
    """A dataset id the server does not know stops the run, naming the id."""
    write_rows(tmp_path / "rows.jsonl", 100)
    before = len(fake.state.requests)
    with pytest.raises(ingest.DatasetNotFoundError, match="bm9wZQ==") as info:
        await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path, dataset_id="bm9wZQ=="))
    assert info.value.exit_code == 4
    assert len(fake.state.requests) - before == 1


@pytest.mark.parametrize("rate", [0, 25, "auto"])
async def test_a_rate_limited_server_gets_every_row_once(
    fake: Any, tmp_path: Path, rate: Any
) -> None:
    """429s with Retry-After, with or without --rate: every row lands once. (That no
    worker sends during the pause is tests/test_pacing.py's, on a fake clock.)"""
    write_rows(tmp_path / "rows.jsonl", 2000)
    fake.state.faults.rate_limit = 10.0
    fake.state.faults.retry_after = 0.4
    summary = await ingest.upload(
        api_key=fake.api_key,
        **settings(fake, tmp_path, batch_rows=100, concurrency=8, rate=rate),
    )
    fake.state.faults.rate_limit = None
    assert summary.exit_code == 0 and summary.retries.get("429", 0) > 0
    assert fake.state.example_count(fake.dataset_id) == 2000


async def test_5xx_is_retried_and_unknown_outcomes_are_counted(fake: Any, tmp_path: Path) -> None:
    """Without keys, 503s are retried; a 503 after commit is an unknown outcome, resent."""
    write_rows(tmp_path / "rows.jsonl", 2000)
    fake.state.faults.fail_rate = 0.2
    fake.state.faults.fail_after_commit_rate = 0.1
    fake.state.faults.seed = 3
    summary = await ingest.upload(
        api_key=fake.api_key,
        **settings(fake, tmp_path, batch_rows=50, max_attempts=20, no_key=True),
    )
    assert summary.exit_code == 0
    assert summary.retries.get("5xx", 0) > 0
    assert summary.unknown_resent == summary.retries["5xx"]
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == list(range(2000))  # at least once
    state = read_journal(summary.checkpoint)
    assert state.unknown_outcomes == summary.unknown_resent


async def test_with_keys_unknown_outcomes_are_looked_up_and_every_row_lands_once(
    fake: Any, tmp_path: Path
) -> None:
    """With keys, 503s before and after commit end with each row once, none blindly resent."""
    write_rows(tmp_path / "rows.jsonl", 2000)
    fake.state.faults.fail_rate = 0.2
    fake.state.faults.fail_after_commit_rate = 0.1
    fake.state.faults.seed = 3
    summary = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=50, max_attempts=20)
    )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_pending) == (0, 2000, 0)
    assert summary.unknown_resent == 0 and summary.lookups > 0 and summary.rows_present > 0
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == list(range(2000)) and all(len(v) == 1 for v in rows.values())
    assert read_journal(summary.checkpoint).in_flight == []


async def test_exhausted_retries_stop_and_a_rerun_resumes(fake: Any, tmp_path: Path) -> None:
    """When retries run out the run stops resumably; the re-run delivers the rest, once."""
    write_rows(tmp_path / "rows.jsonl", 1000)
    fake.state.faults.fail_rate = 1.0
    with pytest.raises(ingest.RetriesExhaustedError, match="(?i)re-run the same command") as info:
        await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path, max_attempts=2))
    assert info.value.exit_code == 5
    fake.state.faults.fail_rate = 0.0
    summary = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert summary.exit_code == 0
    assert sorted(by_row(fake.state.examples(fake.dataset_id))) == list(range(1000))
    assert all(len(v) == 1 for v in by_row(fake.state.examples(fake.dataset_id)).values())


async def test_stop_event_interrupts_and_the_rerun_finishes(fake: Any, tmp_path: Path) -> None:
    """A stop ends the run as interrupted (130); a re-run with other batch sizes finishes once."""
    write_rows(tmp_path / "rows.jsonl", 5000)
    first = await upload_then_stop(fake, 500, 0.02, **settings(fake, tmp_path, batch_rows=100))
    assert (first.status, first.exit_code) == ("interrupted", 130)
    assert first.rows_delivered < 5000
    started = time.monotonic()
    second = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=300))
    assert second.exit_code == 0, time.monotonic() - started
    assert second.rows_skipped == first.rows_delivered
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == list(range(5000))
    assert all(len(v) == 1 for v in rows.values())


async def test_bisection_isolates_a_poison_row(fake: Any, tmp_path: Path) -> None:
    """A row the server refuses is isolated by halving; every other row lands once."""
    lines = write_rows(tmp_path / "rows.jsonl", 1000)
    lines[637] = b'{"i": 637, "poison": true}'
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    fake.state.faults.refuse_field = "poison"
    rejects = tmp_path / "rejects.jsonl"
    summary = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=500, rejects=str(rejects))
    )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_rejected) == (6, 999, 1)
    [entry] = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    assert entry["line"] == 638 and entry["raw"] == '{"i": 637, "poison": true}'
    assert "field `poison` is refused" in entry["reason"]
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == [i for i in range(1000) if i != 637]
    assert all(len(v) == 1 for v in rows.values())
    assert summary.retries["split"] <= 2 * 9  # about log2(500) halvings per refusing batch
    assert read_journal(summary.checkpoint).in_flight == []  # halved wholes are not in flight


async def test_a_refused_row_is_rejected_at_its_own_line_offset(fake: Any, tmp_path: Path) -> None:
    """A server-refused row's reject offset is where its line starts, past blank and bad lines."""
    poison = b'{"i": 5, "poison": true}'
    data = b'{"i":0}\n\nnot json\n\n' + poison + b'\n{"i": 6}\n'
    (tmp_path / "rows.jsonl").write_bytes(data)
    fake.state.faults.refuse_field = "poison"
    rejects = tmp_path / "rejects.jsonl"
    summary = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=2, rejects=str(rejects))
    )
    assert (summary.rows_delivered, summary.rows_rejected) == (2, 2)
    entries = {e["line"]: e for e in map(orjson.loads, rejects.read_bytes().splitlines())}
    assert entries[3]["offset"] == data.index(b"not json")
    assert entries[5]["offset"] == data.index(poison) == 19
    assert entries[5]["raw"] == poison.decode()


async def test_500_on_large_bodies_halves_the_batch(fake: Any, tmp_path: Path) -> None:
    """Repeated HTTP 500s (Arize's answer to big bodies) halve the batch until it fits."""
    write_rows(tmp_path / "rows.jsonl", 2000)
    fake.state.faults.max_body_bytes = 20_000
    summary = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=1000))
    assert summary.exit_code == 0 and summary.retries["split"] > 0
    rows = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(rows) == list(range(2000)) and all(len(v) == 1 for v in rows.values())


async def test_unknown_version_fails_before_any_row_is_sent(fake: Any, tmp_path: Path) -> None:
    """A dataset_version_id the dataset does not have stops the run with exit code 4."""
    write_rows(tmp_path / "rows.jsonl", 10)
    with pytest.raises(ingest.DatasetNotFoundError, match="no version 'bm8='"):
        await ingest.upload(
            api_key=fake.api_key, **settings(fake, tmp_path, dataset_version_id="bm8=")
        )
    assert fake.state.post_examples_requests == 0


async def test_gzip_input_lands_every_row(fake: Any, tmp_path: Path) -> None:
    """A .gz input is read through and every row lands once."""
    write_rows(tmp_path / "rows.jsonl", 1200)
    with gzip.open(tmp_path / "rows.jsonl.gz", "wb") as f:
        f.write((tmp_path / "rows.jsonl").read_bytes())
    summary = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rows.jsonl.gz"))
    )
    assert summary.exit_code == 0
    assert sorted(by_row(fake.state.examples(fake.dataset_id))) == list(range(1200))


async def test_a_failed_run_keeps_every_done_record(
    fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When one batch fails for good, batches other workers delivered stay journaled as done."""
    lines = [orjson.dumps({"i": i, "q": f"row {i}"}) for i in range(6000)]
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    commit = CheckpointJournal._commit

    def slow_disk(self: CheckpointJournal, rejects: bytes, records: bytes) -> None:
        time.sleep(0.03)  # a busy disk widens the window where records wait in memory
        commit(self, rejects, records)

    async def outage_midway() -> None:
        while fake.state.example_count(fake.dataset_id) < 3000:  # noqa: ASYNC110 (polls)
            await anyio.sleep(0.005)
        fake.state.faults.fail_rate = 1.0  # every POST 503s from here on

    monkeypatch.setattr(CheckpointJournal, "_commit", slow_disk)
    run = settings(fake, tmp_path, batch_rows=20, concurrency=8, max_attempts=3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(outage_midway)
        with pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=fake.api_key, **run)
    state = read_journal(info.value.summary.checkpoint)
    assert state.delivered_rows == fake.state.example_count(fake.dataset_id)


async def test_stop_during_preflight_interrupts(fake: Any, tmp_path: Path) -> None:
    """A stop while the preflight is still retrying ends the run as interrupted, not failed."""
    write_rows(tmp_path / "rows.jsonl", 10)
    fake.state.faults.latency = 2.0  # every request times out
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_set_after, stop, 0.3)
        summary = await ingest.upload(
            api_key=fake.api_key,
            stop=stop,
            **settings(fake, tmp_path, request_timeout=0.2, max_attempts=50, shutdown_grace=0.5),
        )
    assert (summary.status, summary.exit_code) == ("interrupted", 130)
    assert fake.state.post_examples_requests == 0


async def _set_after(event: anyio.Event, seconds: float) -> None:
    await anyio.sleep(seconds)
    event.set()


async def test_restart_sets_the_old_rejects_aside(fake: Any, tmp_path: Path) -> None:
    """A fresh checkpoint starts a fresh rejects file; the old one is kept as .bak."""
    (tmp_path / "rows.jsonl").write_bytes(b'{"a":1}\nOLD-BAD\n')
    rejects = tmp_path / "rejects.jsonl"
    run = settings(fake, tmp_path, rejects=str(rejects))
    first = await ingest.upload(api_key=fake.api_key, **run)
    (tmp_path / "rows.jsonl").write_bytes(b'{"b":1}\nNEW-BAD\n{"b":3}\n')
    again = await ingest.upload(api_key=fake.api_key, restart=True, **run)
    assert (first.exit_code, again.exit_code) == (6, 6)
    assert [orjson.loads(x)["raw"] for x in rejects.read_bytes().splitlines()] == ["NEW-BAD"]
    assert b"OLD-BAD" in (tmp_path / "rejects.jsonl.bak").read_bytes()


def gz_rows(first: int, n: int) -> bytes:
    return b"".join(
        orjson.dumps({"i": i, "pad": "x" * 80}) + b"\n" for i in range(first, first + n)
    )


async def test_unreadable_input_fails_after_in_flight_rows_are_recorded(
    fake: Any, tmp_path: Path
) -> None:
    """A .gz whose second member is cut short: the first's rows land and are journaled as done."""
    first = gzip.compress(gz_rows(0, 5000))
    (tmp_path / "rows.jsonl.gz").write_bytes(first + gzip.compress(gz_rows(5000, 5000))[:-4000])
    with pytest.raises(ingest.SourceError, match=r"rows\.jsonl\.gz:5000: gzip member 2") as info:
        await ingest.upload(
            api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rows.jsonl.gz"))
        )
    assert info.value.exit_code == 2
    state = read_journal(info.value.summary.checkpoint)
    assert state.delivered_rows == fake.state.example_count(fake.dataset_id) == 5000
    assert state.finished is None


async def test_a_damaged_gzip_member_sends_none_of_its_rows(fake: Any, tmp_path: Path) -> None:
    """A flipped byte inside a one-member .gz: exit 2 naming it, and not one row is sent."""
    packed = bytearray(gzip.compress(gz_rows(0, 20_000)))
    packed[len(packed) // 2] ^= 0x04
    (tmp_path / "rows.jsonl.gz").write_bytes(packed)
    with pytest.raises(ingest.SourceError, match=r"rows\.jsonl\.gz: gzip member 1 .* damaged"):
        await ingest.upload(
            api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rows.jsonl.gz"))
        )
    assert fake.state.post_examples_requests == 0
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_rows_of_intact_members_land_before_a_damaged_one(fake: Any, tmp_path: Path) -> None:
    """With the second of two members damaged, exactly the first member's rows are stored."""
    second = bytearray(gzip.compress(gz_rows(3000, 3000)))
    second[len(second) // 2] ^= 0x04
    (tmp_path / "rows.jsonl.gz").write_bytes(gzip.compress(gz_rows(0, 3000)) + second)
    with pytest.raises(ingest.SourceError, match=r"gzip member 2 .* no row of it is sent") as info:
        await ingest.upload(
            api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rows.jsonl.gz"))
        )
    assert sorted(by_row(fake.state.examples(fake.dataset_id))) == list(range(3000))
    assert read_journal(info.value.summary.checkpoint).finished is None


async def test_the_advice_after_a_damaged_member_sends_the_rest_once(
    fake: Any, tmp_path: Path
) -> None:
    """Following the message (the tail of an intact copy) sends the rest, with no row twice."""
    head, tail = gzip.compress(gz_rows(0, 3000)), gzip.compress(gz_rows(3000, 3000))
    damaged = bytearray(tail)
    damaged[len(damaged) // 2] ^= 0x04
    (tmp_path / "rows.jsonl.gz").write_bytes(head + damaged)
    with pytest.raises(ingest.SourceError) as info:
        await ingest.upload(
            api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rows.jsonl.gz"))
        )
    advice = re.search(r"tail -c \+(\d+) INTACT\.gz", str(info.value))
    assert advice is not None, str(info.value)
    intact = head + tail
    (tmp_path / "rest.jsonl.gz").write_bytes(intact[int(advice.group(1)) - 1 :])  # tail -c +N
    rest = await ingest.upload(
        api_key=fake.api_key, **settings(fake, tmp_path, input=str(tmp_path / "rest.jsonl.gz"))
    )
    assert rest.exit_code == 0
    stored = by_row(fake.state.examples(fake.dataset_id))
    assert sorted(stored) == list(range(6000)) and {len(v) for v in stored.values()} == {1}


async def upload_changing_the_input(
    fake: Any, tmp_path: Path, change: Callable[[], object]
) -> object:
    """Upload rows.jsonl, ``change`` it once the first rows land; the summary or SourceError."""
    fake.state.faults.latency = 0.02  # the reader stays far behind the end of the file
    outcome: list[object] = []

    async def run() -> None:
        try:
            outcome.append(
                await ingest.upload(
                    api_key=fake.api_key, **settings(fake, tmp_path, batch_rows=100, concurrency=2)
                )
            )
        except ingest.SourceError as exc:
            outcome.append(exc)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            for _ in range(5000):  # poll until the first rows land
                if fake.state.example_count(fake.dataset_id):
                    break
                await anyio.sleep(0.01)
            change()
            fake.state.faults.latency = 0.0
    [result] = outcome
    return result


async def test_an_input_truncated_during_the_run_is_not_complete(fake: Any, tmp_path: Path) -> None:
    """A file cut short while the run reads it ends in a SourceError, never as complete."""
    path = tmp_path / "rows.jsonl"
    write_rows(path, 60_000)
    size = path.stat().st_size

    def truncate() -> None:
        with path.open("r+b") as f:
            f.truncate(size // 2)

    error = await upload_changing_the_input(fake, tmp_path, truncate)
    assert isinstance(error, ingest.SourceError), f"the run ended as {error}"
    assert f"it had {size:,} bytes when the run started, it ends at byte {size // 2:,}" in str(
        error
    )
    assert error.exit_code == 2 and error.summary.status == "failed"
    state = read_journal(error.summary.checkpoint)
    assert state.finished is None
    assert state.delivered_rows == fake.state.example_count(fake.dataset_id) < 60_000


async def test_an_input_rewritten_in_place_during_the_run_is_not_complete(
    fake: Any, tmp_path: Path
) -> None:
    """A file replaced in place mid-run (cp over it: same size again) is a SourceError."""
    path = tmp_path / "rows.jsonl"
    write_rows(path, 60_000)
    other = tmp_path / "other.jsonl"
    other.write_bytes(path.read_bytes().replace(b'"question"', b'"QUESTION"'))
    assert other.stat().st_size == path.stat().st_size
    # cp truncates, then writes the same size back
    error = await upload_changing_the_input(fake, tmp_path, lambda: shutil.copyfile(other, path))
    assert isinstance(error, ingest.SourceError), f"the run ended as {error}"
    assert "changed under the run: it was written to during the run" in str(error)
    assert read_journal(error.summary.checkpoint).finished is None


async def test_a_stop_abandons_batches_waiting_to_retry(fake: Any, tmp_path: Path) -> None:
    """A stop does not wait out the grace for batches that are only waiting to be retried."""
    write_rows(tmp_path / "rows.jsonl", 3000)
    fake.state.faults.fail_rate = 1.0  # every POST 503s: each worker sits in a long backoff
    run = settings(
        fake, tmp_path, batch_rows=100, max_attempts=100, backoff_base=20.0, backoff_max=20.0,
        shutdown_grace=60.0,
    )  # fmt: skip
    stop = anyio.Event()
    with anyio.fail_after(30):  # far below the 60 s grace the old code waited out
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_after, stop, 0.5)
            summary = await ingest.upload(api_key=fake.api_key, stop=stop, **run)
    assert (summary.status, summary.exit_code) == ("interrupted", 130)
    state = read_journal(summary.checkpoint)
    assert state.delivered_rows == 0 and len(state.in_flight) <= 4


async def test_unknown_outcomes_count_as_resent_only_when_resent(fake: Any, tmp_path: Path) -> None:
    """Without keys, a 503 after commit never retried is journaled unknown, not counted resent."""
    write_rows(tmp_path / "rows.jsonl", 100)
    fake.state.faults.fail_after_commit_rate = 1.0
    with pytest.raises(ingest.RetriesExhaustedError) as info:
        await ingest.upload(
            api_key=fake.api_key,
            **settings(fake, tmp_path, concurrency=1, max_attempts=1, no_key=True),
        )
    summary = info.value.summary
    assert (summary.unknown_resent, summary.retries) == (0, {})
    state = read_journal(summary.checkpoint)
    assert state.unknown_outcomes == 1 and [r["lines"] for r in state.in_flight] == [[1, 100]]


async def test_https_proxy_from_the_environment_is_used(
    fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP(S)_PROXY is honoured: rows for an unresolvable host arrive through the proxy."""
    write_rows(tmp_path / "rows.jsonl", 300)
    # The fake answers absolute-form proxy requests as if it were the API behind the proxy.
    monkeypatch.setenv("HTTP_PROXY", fake.url)
    monkeypatch.setenv("NO_PROXY", "")
    url = "http://api.arize.invalid"  # plain http beyond loopback: allowed only by asking
    summary = await ingest.upload(
        api_key=fake.api_key,
        **settings(fake, tmp_path, base_url=url, allow_insecure_http=True),
    )
    assert summary.exit_code == 0
    assert fake.state.example_count(fake.dataset_id) == 300


async def test_a_netrc_entry_for_the_host_does_not_clash_with_the_key(
    fake: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ~/.netrc with credentials for the API host does not break the bearer header."""
    write_rows(tmp_path / "rows.jsonl", 50)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    summary = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert summary.exit_code == 0


async def test_concurrency_over_100_never_waits_for_a_pooled_connection(tmp_path: Path) -> None:
    """At concurrency 200, a server taking 2 s meets no timeout of 3.5 s: no request queues."""
    state = FakeArize(api_key="pool-key")
    dataset_id = state.create_dataset(name="pool")
    state.faults.latency = 2.0  # a request that waited for a pooled one would take 4 s
    rows = 200
    (tmp_path / "rows.jsonl").write_bytes(b"".join(b'{"i": %d}\n' % i for i in range(rows)))
    # The fake's own server: its accept queue must hold 200 connections at once too.
    async with serve(state) as url:
        summary = await ingest.upload(
            api_key="pool-key",
            input=str(tmp_path / "rows.jsonl"),
            dataset_id=dataset_id,
            base_url=url,
            batch_rows=1,
            concurrency=rows,
            request_timeout=3.5,
            rate=0,
            backoff_base=0.01,
            backoff_max=0.05,
        )
    assert (summary.exit_code, summary.rows_delivered, summary.requests) == (0, rows, rows + 1)
    assert summary.unknown_resent == 0 and summary.retries.get("timeout", 0) == 0
    assert sorted(ex["i"] for ex in state.examples(dataset_id)) == list(range(rows))
