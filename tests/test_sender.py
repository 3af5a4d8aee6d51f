"""The sender on a scripted transport and a fake clock: halving, unknown outcomes, stops.

A real journal in ``tmp_path``, a fake ``append`` answering from a script, and
virtual time (``fakeclock.FakeClock``), so each decision is checked without a
server and without sleeping.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from fakeclock import FakeClock

from ingest.batcher import Batch
from ingest.caller import RetryingCaller
from ingest.checkpoint import CheckpointJournal
from ingest.client import Reply
from ingest.errors import DeliveryError
from ingest.identity import fingerprint
from ingest.pacing import FixedPacer
from ingest.report import RunStats
from ingest.retry import RetryPolicy
from ingest.sender import Sender

POLICY = RetryPolicy(max_attempts=4, max_seconds=600.0, base=0.5, cap=4.0, rng=lambda: 0.5)


def _batch(rows: int) -> Batch:
    data = tuple(orjson.dumps({"i": i}) for i in range(rows))
    ends, pos = [], 0
    for row in data:
        pos += len(row) + 1
        ends.append(pos)
    starts = (0, *ends[:-1])
    return Batch(1, 1, 0, data, tuple(range(1, rows + 1)), tuple(ends), starts)


def _ids(body: bytes) -> bytes:
    n = len(orjson.loads(body)["examples"])
    return orjson.dumps({"example_ids": [f"id-{body[:40]!r}-{i}" for i in range(n)]})


async def _deliver(
    tmp_path: Path, batch: Batch, answer: Callable[[bytes, int], int]
) -> tuple[list[dict[str, Any]], list[bytes], RunStats, list[DeliveryError]]:
    """Deliver ``batch`` with ``answer(body, n)`` giving each POST's status; the journal's
    records, the bodies sent, the counters and any failure."""
    source = tmp_path / "rows.jsonl"
    source.write_bytes(b"".join(r + b"\n" for r in batch.rows))
    journal, _ = CheckpointJournal.open(
        str(tmp_path / "c.ckpt"),
        fingerprint(str(source), "ds", None),
        rejects_path=str(tmp_path / "r.jsonl"),
    )
    clock = FakeClock()
    stats = RunStats(now=clock.now)
    caller = RetryingCaller(
        policy=POLICY,
        stats=stats,
        describe=lambda action, reply: reply.problem(),
        pacer=FixedPacer(rate=None, concurrency=1, policy=POLICY, clock=clock),
    )
    sent: list[bytes] = []

    async def append(body: bytes) -> Reply:
        sent.append(body)
        status = answer(body, len(sent))
        await clock.sleep(0.01)
        return Reply(status, _ids(body) if status < 300 else b'{"title":"no"}')

    failures: list[DeliveryError] = []
    sender = Sender(
        append=append,
        journal=journal,
        caller=caller,
        stats=stats,
        on_reject=lambda line, reason: None,
    )
    tx, rx = anyio.create_memory_object_stream[Batch](1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        tg.start_soon(clock.run)
        async with tx:
            await tx.send(batch)
        await sender.work(rx, failures.append)
        journal.close()
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    journal.release()
    lines = (tmp_path / "c.ckpt").read_bytes().splitlines()
    return [orjson.loads(line) for line in lines[1:]], sent, stats, failures


async def _pool(tmp_path: Path, batches: int, workers: int) -> tuple[int, int]:
    """Deliver ``batches`` one-row batches at concurrency ``workers`` through
    ``start_workers``, each append held until as many are in flight as can be; the
    workers started, and the batches still alive once all are delivered (the stream
    still open, the workers idle)."""
    mark = str(tmp_path).encode()  # this call's batches, among every other test's
    rows = [orjson.dumps({"i": i, "pool": mark.decode()}) for i in range(batches)]
    source = tmp_path / "rows.jsonl"
    source.write_bytes(b"".join(r + b"\n" for r in rows))
    journal, _ = CheckpointJournal.open(
        str(tmp_path / "c.ckpt"),
        fingerprint(str(source), "ds", None),
        rejects_path=str(tmp_path / "r.jsonl"),
    )
    stats = RunStats(now=lambda: 0.0)
    pacer = FixedPacer(rate=None, concurrency=workers, policy=POLICY)
    caller = RetryingCaller(
        policy=POLICY, stats=stats, describe=lambda action, reply: reply.problem(), pacer=pacer
    )
    in_flight, all_in = [0], anyio.Event()

    async def append(body: bytes) -> Reply:
        in_flight[0] += 1
        if in_flight[0] == min(batches, workers):
            all_in.set()
        await all_in.wait()  # a barrier: only as many at once as the pool allows get past
        return Reply(200, _ids(body))

    sender = Sender(
        append=append, journal=journal, caller=caller, stats=stats, on_reject=lambda *_: None
    )
    failures: list[DeliveryError] = []
    tx, rx = anyio.create_memory_object_stream[Batch](1)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(journal.run)
            async with anyio.create_task_group() as stages:
                async with rx:
                    sender.start_workers(stages, rx, workers=workers, on_failure=failures.append)
                async with tx:
                    end = 0
                    for seq, row in enumerate(rows):
                        start, end = end, end + len(row) + 1
                        batch = Batch(seq, seq + 1, start, (row,), (seq + 1,), (end,), (start,))
                        await tx.send(batch)
                    del batch
                    while sender.resolved < batches:  # noqa: ASYNC110 (polls the workers)
                        await anyio.sleep(0.01)
                    gc.collect()
                    alive = sum(
                        isinstance(o, Batch) and mark in o.rows[0] for o in gc.get_objects()
                    )
            journal.close()
    journal.release()
    assert not failures and sender.resolved == stats.rows_delivered == batches
    return sender.workers_started, alive


@pytest.mark.parametrize(("batches", "workers", "started"), [(1, 128, 2), (3, 128, 4), (12, 4, 4)])
async def test_workers_start_as_batches_are_taken_and_reach_the_concurrency(
    tmp_path: Path, batches: int, workers: int, started: int
) -> None:
    """Each worker starts the next as it takes a batch, up to the limit: a small input
    starts a worker or two, yet as many batches go at once as the concurrency allows."""
    assert (await _pool(tmp_path, batches, workers))[0] == started


async def test_an_idle_worker_holds_no_batch_it_has_delivered(tmp_path: Path) -> None:
    """Memory stays bounded by the bytes in flight: a worker waiting for its next batch
    does not keep its last one alive (at 128 workers that was 128 batches held)."""
    assert (await _pool(tmp_path, 12, 4))[1] == 0


async def test_two_500s_in_a_row_halve_the_batch_and_the_halves_are_done(tmp_path: Path) -> None:
    """HTTP 500 twice on the whole (too large a body, as Arize answers): split, and each
    half is delivered and journaled done, with no key to look anything up by."""
    batch = _batch(4)

    def answer(body: bytes, n: int) -> int:
        return 500 if len(orjson.loads(body)["examples"]) == 4 else 200

    records, sent, stats, failures = await _deliver(tmp_path, batch, answer)
    assert not failures
    kinds = [r["t"] for r in records]
    assert kinds.count("split") == 1
    done = [r for r in records if r["t"] == "done"]
    assert sorted(r["part"] for r in done) == ["0", "1"]
    assert stats.rows_delivered == 4 and len(sent) == 4


async def test_an_unknown_outcome_is_journaled_before_the_rows_go_again(tmp_path: Path) -> None:
    """Without keys, a 503 is journaled as unknown, then the batch is resent and done."""
    records, sent, stats, failures = await _deliver(
        tmp_path, _batch(3), lambda body, n: 503 if n == 1 else 200
    )
    kinds = [r["t"] for r in records]
    assert kinds.index("unknown") < kinds.index("done")
    assert len(sent) == 2 and stats.rows_delivered == 3 and not failures


async def test_a_refused_row_is_rejected_alone_and_the_rest_delivered(tmp_path: Path) -> None:
    """422 for any body holding row 2: halving isolates it; the other rows are done."""

    def answer(body: bytes, n: int) -> int:
        return 422 if b'{"i":2}' in body else 200

    records, _, stats, failures = await _deliver(tmp_path, _batch(4), answer)
    assert not failures
    assert stats.rows_delivered == 3
    rejects = (tmp_path / "r.jsonl").read_bytes().splitlines()
    assert len(rejects) == 1 and orjson.loads(rejects[0])["line"] == 3


@pytest.mark.parametrize("status", [401, 404])
async def test_a_refusal_retrying_cannot_fix_is_handed_over_after_one_request(
    tmp_path: Path, status: int
) -> None:
    """401/404: one POST, no retry, and the failure goes to the callback, not raised."""
    _, sent, _, failures = await _deliver(tmp_path, _batch(2), lambda body, n: status)
    assert len(sent) == 1 and len(failures) == 1
