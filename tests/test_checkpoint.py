"""The checkpoint journal: durability, recovery, fingerprints and locking."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import settings as run_settings
from test_pipeline import write_rows

import ingest
from ingest.checkpoint import CheckpointJournal, LineRanges, fingerprint, read_journal
from ingest.errors import CheckpointError
from ingest.rows import Reject

FP = {"input": {"size": 1}, "dataset_id": "ds", "dataset_version_id": None}


def sending(seq: int, first: int, last: int) -> dict[str, Any]:
    return {
        "t": "sending",
        "seq": seq,
        "part": "",
        "lines": [first, last],
        "bytes": [first * 10, last * 10 + 10],
        "rows": last - first + 1,
    }


def done(seq: int, first: int, last: int) -> dict[str, Any]:
    return {
        "t": "done",
        "seq": seq,
        "part": "",
        "lines": [first, last],
        "bytes": [first * 10, last * 10 + 10],
        "rows": last - first + 1,
        "example_ids": [f"e{i}" for i in range(first, last + 1)],
    }


async def write_records(path: Path, records: list[dict[str, Any]], fp: dict[str, Any] = FP) -> None:
    journal, _ = CheckpointJournal.open(str(path), fp, rejects_path=str(path) + ".rej")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            for rec in records:
                await journal.write(rec)
            journal.close()
    finally:
        journal.release()


async def test_journal_reloads_done_and_in_flight(tmp_path: Path) -> None:
    """After a stop, the journal says which batches were done and which were in flight."""
    path = tmp_path / "ck"
    await write_records(
        path, [{"t": "start"}, sending(0, 1, 10), sending(1, 11, 20), done(0, 1, 10)]
    )
    state = read_journal(str(path))
    assert state.delivered_rows == 10
    assert state.next_seq == 2
    assert [r["seq"] for r in state.in_flight] == [1]
    assert state.covered.prefix() == (10, 110)


async def test_in_flight_is_what_the_last_run_left_open(tmp_path: Path) -> None:
    """A new run's start settles earlier runs' open batches: it sends their lines again."""
    path = tmp_path / "ck"
    await write_records(
        path,
        [
            {"t": "start"},
            sending(0, 1, 10),
            sending(1, 11, 20),  # killed in flight
            done(0, 1, 10),
            {"t": "start", "resent_in_flight": [[1, "", 11, 20]]},
            sending(2, 11, 20),
            done(2, 11, 20),
            sending(3, 21, 30),  # killed in flight again
        ],
    )
    state = read_journal(str(path))
    assert [r["seq"] for r in state.in_flight] == [3]
    assert state.delivered_rows == 20


async def test_in_flight_outlives_runs_that_do_not_settle_it(tmp_path: Path) -> None:
    """Batches in flight stay named through later runs until their lines are done."""
    path = tmp_path / "ck"
    await write_records(
        path,
        [
            {"t": "start"},
            sending(0, 1, 10),  # killed in flight
            {"t": "start"},  # refused at the preflight: re-sent nothing
            {"t": "start"},
            sending(1, 1, 20),
            {"t": "split", "seq": 1, "part": ""},  # halved after 500s (maybe committed)
            {**sending(1, 1, 10), "part": "0"},
            {**done(1, 1, 10), "part": "0"},  # the first half; the second never went (a stop)
        ],
    )
    state = read_journal(str(path))
    assert [(r["seq"], r["part"], r["lines"]) for r in state.in_flight] == [(1, "", [1, 20])]
    await write_records(path, [{"t": "start"}, sending(2, 11, 20), done(2, 11, 20)])
    assert read_journal(str(path)).in_flight == []


async def test_an_unopenable_rejects_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A rejects path that cannot be opened is a clear error and leaves the checkpoint free."""
    path, rejects = tmp_path / "ck", tmp_path / "rejects"
    await write_records(path, [{"t": "start"}])
    rejects.mkdir()
    with pytest.raises(CheckpointError, match="cannot open the rejects file"):
        CheckpointJournal.open(str(path), FP, rejects_path=str(rejects))
    journal, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(tmp_path / "r2"))
    journal.release()


async def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    """A half-written last record (a crash mid-write) is ignored and cut off on open."""
    path = tmp_path / "ck"
    await write_records(path, [{"t": "start"}, sending(0, 1, 10), done(0, 1, 10)])
    whole = path.read_bytes()
    path.write_bytes(whole + orjson.dumps(done(1, 11, 20))[:30])
    journal, state = CheckpointJournal.open(str(path), FP, rejects_path=str(tmp_path / "r"))
    journal.release()
    assert state.delivered_rows == 10
    assert path.read_bytes() == whole


async def test_corrupt_middle_line_is_refused(tmp_path: Path) -> None:
    """A damaged record that is not the last one is an error naming the line."""
    path = tmp_path / "ck"
    await write_records(path, [{"t": "start"}, done(0, 1, 10)])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"garbage\n" + b"".join(lines[1:]))
    with pytest.raises(CheckpointError, match=r"ck:2: checkpoint is corrupt"):
        CheckpointJournal.open(str(path), FP, rejects_path=str(tmp_path / "r"))


async def test_checkpoint_of_another_run_is_refused_unless_restart(tmp_path: Path) -> None:
    """Another dataset or input is refused with a clear message; --restart starts over."""
    path = tmp_path / "ck"
    await write_records(path, [{"t": "start"}, done(0, 1, 10)])
    other = {**FP, "dataset_id": "other"}
    with pytest.raises(CheckpointError, match="for dataset 'ds', not 'other'.*--restart"):
        CheckpointJournal.open(str(path), other, rejects_path=str(tmp_path / "r"))
    journal, state = CheckpointJournal.open(
        str(path), other, rejects_path=str(tmp_path / "r"), restart=True
    )
    journal.release()
    assert state.delivered_rows == 0
    assert (tmp_path / "ck.bak").exists()
    assert read_journal(str(path)).fingerprint == other


async def test_checkpoint_in_use_is_refused(tmp_path: Path) -> None:
    """A second run on a checkpoint that is held refuses to start."""
    path = tmp_path / "ck"
    first, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(tmp_path / "r"))
    try:
        with pytest.raises(CheckpointError, match="in use"):
            CheckpointJournal.open(str(path), FP, rejects_path=str(tmp_path / "r"))
    finally:
        first.release()


async def test_rejects_go_to_the_rejects_file_once(tmp_path: Path) -> None:
    """A rejected line lands in the rejects file, and a resumed run does not write it again."""
    path, rejects = tmp_path / "ck", tmp_path / "rejects.jsonl"
    bad = Reject(3, 20, 30, "bad", b"x")
    line = orjson.dumps({"line": 3, "offset": 20, "reason": "bad", "raw": "x"}) + b"\n"
    for _ in range(2):
        journal, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(rejects))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(journal.run)
                await journal.write({"t": "start"})
                await journal.reject(bad)
                journal.close()
        finally:
            journal.release()
    assert rejects.read_bytes() == line
    assert read_journal(str(path)).rejected_rows == 2  # both runs record it; the file has it once


def test_fingerprint_follows_content_not_path(tmp_path: Path) -> None:
    """The same bytes and mtime under another name match (as after `mv`); changed bytes do not."""
    (tmp_path / "a").write_bytes(b'{"a":1}\n' * 1000)
    (tmp_path / "b").write_bytes(b'{"a":1}\n' * 1000)
    (tmp_path / "c").write_bytes(b'{"a":2}\n' * 1000)
    mtime = (tmp_path / "a").stat().st_mtime_ns
    for name in "bc":
        os.utime(tmp_path / name, ns=(mtime, mtime))
    fa, fb, fc = (fingerprint(str(tmp_path / n), "ds", None) for n in "abc")
    assert fa == fb
    assert fa != fc


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=20))
def test_line_ranges_agree_with_a_plain_set(spans: list[tuple[int, int]]) -> None:
    """The prefix, the merged ranges and the skipper all match a naive set of lines."""
    ranges, lines = LineRanges(), set()
    for first, length in spans:
        ranges.add(first, first + length, first * 10, (first + length) * 10 + 10)
        lines.update(range(first, first + length + 1))
    prefix = 0
    while prefix + 1 in lines:
        prefix += 1
    assert ranges.prefix()[0] == prefix
    covered = ranges.skipper()
    assert {n for n in range(1, 80) if covered(n)} == lines
    assert {n for a, b in ranges.merged() for n in range(a, b + 1)} == lines


def poisoned_rows(path: Path, n: int, poison: int, invalid: bool = False) -> None:
    """Rows ``{"i": n}``; row ``poison`` is refused by the server, or not JSON if ``invalid``."""
    bad = b'{"i": %d, oops\n' if invalid else b'{"i": %d, "poison": true}\n'
    path.write_bytes(b"".join((bad if i == poison else b'{"i": %d}\n') % i for i in range(n)))


def rejects_run(fake: Any, tmp_path: Path, rejects: Path, *, batch_rows: int) -> ingest.RunConfig:
    """A run of tmp_path/rows.jsonl into the fake, with its rejects file at ``rejects``."""
    return ingest.RunConfig(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        checkpoint=str(tmp_path / "run.ckpt"),
        rejects=str(rejects),
        batch_rows=batch_rows,
        concurrency=2,
        rate=0,
    )


@pytest.mark.parametrize("refused_by", ["server", "reader"])
async def test_a_rejects_file_that_fails_mid_run_costs_no_done_record(
    fake: Any, tmp_path: Path, refused_by: str
) -> None:
    """Its folder gone mid-run: every 201 stays journaled, the error names the rejects file."""
    rows, bad = (3000, 2500) if refused_by == "server" else (30_000, 25_000)
    poisoned_rows(tmp_path / "rows.jsonl", rows, poison=bad, invalid=refused_by == "reader")
    folder = tmp_path / "rejects"
    folder.mkdir()
    rejects = folder / "rejects.jsonl"
    fake.state.faults.refuse_field = "poison"
    fake.state.faults.latency = 0.005
    config = rejects_run(fake, tmp_path, rejects, batch_rows=100)

    async def remove_folder_once_rows_land() -> None:
        while fake.state.example_count(fake.dataset_id) < 100:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        shutil.rmtree(folder)

    async with anyio.create_task_group() as tg:
        tg.start_soon(remove_folder_once_rows_land)
        with pytest.raises(ingest.RejectsFileError) as failed:
            await ingest.upload(config, api_key=fake.api_key)
        tg.cancel_scope.cancel()
    message = str(failed.value)
    assert f"{rejects}: cannot write the rejects file: No such file or directory" in message
    assert "checkpoint" not in message.split(";")[0]
    assert failed.value.exit_code != 0 and failed.value.summary.status == "failed"
    state = read_journal(config.checkpoint_path)
    stored = fake.state.example_count(fake.dataset_id)
    assert state.finished is None and state.rejected_rows == 0
    assert state.delivered_rows == stored > 100  # every row the server took is journaled done

    folder.mkdir()
    fake.state.faults.latency = 0.0
    resumed = await ingest.upload(config, api_key=fake.api_key)
    assert (resumed.exit_code, resumed.rows_delivered) == (6, rows - 1 - stored)
    ids = [ex["i"] for ex in fake.state.examples(fake.dataset_id)]
    assert sorted(ids) == [i for i in range(rows) if i != bad]  # no row sent twice
    assert [orjson.loads(line)["line"] for line in rejects.read_bytes().splitlines()] == [bad + 1]


async def test_a_rejects_file_moved_mid_run_stops_the_run_and_loses_no_reject(
    fake: Any, tmp_path: Path
) -> None:
    """Moved (or removed) after its first lines, the rejects file is not written blind."""
    lines = [b'{"i": %d}\n' % i if i % 200 else b"oops %d\n" % i for i in range(20_000)]
    (tmp_path / "rows.jsonl").write_bytes(b"".join(lines))
    bad = {i + 1 for i in range(20_000) if i % 200 == 0}
    rejects, moved = tmp_path / "rejects.jsonl", tmp_path / "moved.jsonl"
    fake.state.faults.latency = 0.01
    config = rejects_run(fake, tmp_path, rejects, batch_rows=50)

    async def move_once_written() -> None:
        while not rejects.exists() or not rejects.stat().st_size:  # noqa: ASYNC110
            await anyio.sleep(0.005)
        os.rename(rejects, moved)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(move_once_written)
            with pytest.raises(ingest.RejectsFileError, match="moved or removed during the run"):
                await ingest.upload(config, api_key=fake.api_key)
    first = {orjson.loads(line)["line"] for line in moved.read_bytes().splitlines()}
    journaled = read_journal(config.checkpoint_path)
    # Every line the journal has as rejected is in the file it was written to.
    assert journaled.rejected_rows == len(first) and first < bad
    fake.state.faults.latency = 0.0
    resumed = await ingest.upload(config, api_key=fake.api_key)
    assert resumed.exit_code == 6
    second = [orjson.loads(line)["line"] for line in rejects.read_bytes().splitlines()]
    assert sorted([*first, *second]) == sorted(bad)  # each bad line in one file, once


@pytest.mark.parametrize("where", ["missing/rejects.jsonl", "a-file/rejects.jsonl"])
async def test_an_unwritable_rejects_path_fails_before_the_first_request(
    fake: Any, tmp_path: Path, where: str
) -> None:
    """A rejects path in a missing folder, or under a file, is refused before any request."""
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 1}\n')
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(ingest.RejectsFileError, match="cannot open the rejects file: "):
        await ingest.upload(
            api_key=fake.api_key,
            input=str(tmp_path / "rows.jsonl"),
            dataset_id=fake.dataset_id,
            base_url=fake.url,
            rejects=str(tmp_path / where),
        )
    assert len(fake.state.requests) == 0
    assert not [n for n in os.listdir(tmp_path) if ".ingest-" in n]  # no checkpoint left


async def test_a_shared_rejects_file_keeps_every_runs_rejects(fake: Any, tmp_path: Path) -> None:
    """Three inputs with one rejects setting: each day's rejected line survives the next days."""
    rejects = tmp_path / "rejects.jsonl"
    for day in (1, 2, 3):
        day_input = tmp_path / f"day{day}.jsonl"
        day_input.write_bytes(b'{"i": 1}\nbad line of day %d\n' % day)
        summary = await ingest.upload(
            api_key=fake.api_key,
            input=str(day_input),
            dataset_id=fake.dataset_id,
            base_url=fake.url,
            rejects=str(rejects),
        )
        assert summary.exit_code == 6
    kept = {
        name: orjson.loads(rejects.with_name(name).read_bytes())["raw"]
        for name in ("rejects.jsonl", "rejects.jsonl.bak", "rejects.jsonl.1.bak")
    }
    assert kept == {
        "rejects.jsonl": "bad line of day 3",
        "rejects.jsonl.bak": "bad line of day 1",
        "rejects.jsonl.1.bak": "bad line of day 2",
    }


async def test_each_restart_keeps_the_checkpoint_it_discards(tmp_path: Path) -> None:
    """Two restarts leave two backups: the second does not overwrite the first."""
    path = tmp_path / "ck"
    await write_records(path, [{"t": "start"}, done(0, 1, 10)])
    first = path.read_bytes()
    for dataset in ("two", "three"):
        journal, _ = CheckpointJournal.open(
            str(path), {**FP, "dataset_id": dataset}, rejects_path=str(tmp_path / "r"), restart=True
        )
        journal.release()
    assert (tmp_path / "ck.bak").read_bytes() == first
    assert read_journal(str(tmp_path / "ck.1.bak")).fingerprint == {**FP, "dataset_id": "two"}


async def test_a_failed_rejects_write_keeps_a_delivered_batch_around_the_bad_line(
    tmp_path: Path,
) -> None:
    """After a failed rejects write, delivered batches stay and a refused row's batch goes."""
    path, folder = tmp_path / "ck", tmp_path / "rejects"
    folder.mkdir()
    journal, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(folder / "r.jsonl"))
    failures: list[Exception] = []
    journal.on_rejects_error = failures.append
    folder.rmdir()
    refused_alone = {**done(1, 11, 11), "rows": 0, "example_ids": []}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await journal.write({"t": "start"})
            await journal.reject(Reject(5, 40, 50, "not valid JSON", b"{"))
            await journal.write({**done(0, 1, 10), "rows": 9}, durable=False)
            await journal.reject(Reject(11, 100, 110, "refused by the server", b"{}"))
            await journal.write(refused_alone, durable=False)
            await journal.write({"t": "finished", "exit_code": 6})
            journal.close()
    finally:
        journal.release()
    [failure] = failures
    assert isinstance(failure, ingest.RejectsFileError) and "r.jsonl" in str(failure)
    state = read_journal(str(path))
    assert (state.delivered_rows, state.rejected_rows, state.finished) == (9, 0, None)
    # Rows delivered are never forgotten (the reader sends none past an unrecorded reject);
    # line 11, refused alone, is left for the resume to refuse again.
    assert state.covered.merged() == [(1, 10)]


async def test_a_delivered_row_costs_the_journal_under_a_byte(fake: Any, tmp_path: Path) -> None:
    """The journal keeps each batch's span, not its rows' example ids: a 100M-row run's
    journal stays under 100 MB, and a resume's replay does not grow with the ids."""
    write_rows(tmp_path / "rows.jsonl", 20_000)
    journal = tmp_path / "run.ckpt"
    run = run_settings(fake, tmp_path, checkpoint=str(journal), batch_rows=500)
    assert (await ingest.upload(api_key=fake.api_key, **run)).exit_code == 0
    assert fake.state.example_count(fake.dataset_id) == 20_000
    assert journal.stat().st_size < 20_000, f"{journal.stat().st_size / 20_000:.2f} bytes a row"


async def test_a_record_nothing_waits_on_shares_the_next_durable_ones_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A *done* waits (at most LAZY_COMMIT_SECONDS) for the next *sending*: one fsync for
    both, not one each; alone, it is on disk within that time, with no close."""
    import ingest.checkpoint as checkpoint

    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    path = tmp_path / "ck"
    journal, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(path) + ".rej")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await journal.write(sending(0, 1, 10))
            before = len(fsyncs)
            await journal.write(done(0, 1, 10), durable=False)
            await anyio.sleep(0.02)
            await journal.write(sending(1, 11, 20))
            assert len(fsyncs) - before == 1
            await journal.write(done(1, 11, 20), durable=False)
            await anyio.sleep(checkpoint.LAZY_COMMIT_SECONDS + 0.3)
            assert b'"seq":1' in path.read_bytes().splitlines()[-1]
            journal.close()
    finally:
        journal.release()


async def test_a_slow_disk_moves_the_commits_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits run in the loop while the disk is fast; one slower than
    INLINE_COMMIT_SECONDS sends the rest to a worker thread, where the loop cannot wait."""
    import threading
    import time

    import ingest.checkpoint as checkpoint

    threads: list[bool] = []
    slow = [False]
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        threads.append(threading.current_thread() is threading.main_thread())
        if slow[0]:
            time.sleep(checkpoint.INLINE_COMMIT_SECONDS * 3)
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    path = tmp_path / "ck"
    journal, _ = CheckpointJournal.open(str(path), FP, rejects_path=str(path) + ".rej")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            await journal.write(sending(0, 1, 10))
            assert threads[-1]  # fast: in the loop's own thread
            slow[0] = True
            await journal.write(sending(1, 11, 20))  # slow, still in the loop: the last one
            await journal.write(sending(2, 21, 30))
            await journal.write(sending(3, 31, 40))
            assert threads[-2:] == [False, False]
            journal.close()
    finally:
        journal.release()
    assert [r["seq"] for r in read_journal(str(path)).in_flight] == [0, 1, 2, 3]
