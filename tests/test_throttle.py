"""429 with ``Retry-After: 0``: throttled retries keep a floor, and a stop sends nothing new."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from scripted import DATASET, KEY, Scripted, created, problem, scripted_server

import ingest
from ingest.checkpoint import read_journal

CONCURRENCY = 4


def always_429_now(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
    """Throttle every append, asking for no wait at all."""
    return problem(429, "slow down", headers={"Retry-After": "0"})


def run_settings(url: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    (tmp_path / "rows.jsonl").write_bytes(
        b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(400))
    )
    base: dict[str, Any] = dict(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=DATASET,
        base_url=url,
        batch_rows=10,
        concurrency=CONCURRENCY,
        rate=0,
    )
    return {**base, **kw}


@pytest.mark.parametrize("base", [0.1, 0.0001], ids=["base", "tiny-base"])
async def test_retry_after_zero_is_not_a_hot_loop(tmp_path: Path, base: float) -> None:
    """Against 429 + Retry-After: 0 with no --rate, requests stay paced, however small the base."""
    async with scripted_server(always_429_now) as server:
        run = run_settings(server.url, tmp_path, backoff_base=base, max_retry_seconds=1.5)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError):
            await ingest.upload(api_key=KEY, **run)
    first = server.posts[0]
    in_first_second = [t for t in server.posts if t < first + 1.0]
    # A floor of 0.1 s shared by 4 workers allows about 40 a second; unpaced, it was hundreds.
    assert 0 < len(in_first_second) < 100


async def test_a_stop_sends_nothing_new_while_throttled(tmp_path: Path) -> None:
    """Once a stop is asked for under 429 + Retry-After: 0, only requests already sent arrive."""
    stop = anyio.Event()
    seen_at_stop: list[int] = []

    async def stop_when_busy(server: Scripted) -> None:
        while len(server.posts) < 20:  # noqa: ASYNC110 (polls the server)
            await anyio.sleep(0.005)
        seen_at_stop.append(len(server.posts))
        stop.set()

    async with scripted_server(always_429_now) as server:
        run = run_settings(
            server.url, tmp_path, backoff_base=0.01, max_retry_seconds=60, shutdown_grace=1.0
        )
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_busy, server)
                summary = await ingest.upload(api_key=KEY, stop=stop, **run)
    assert (summary.status, summary.exit_code) == ("interrupted", 130)
    # Each worker may have one request on the wire when the stop comes; nothing after it.
    assert len(server.posts) - seen_at_stop[0] <= CONCURRENCY


async def test_a_stop_leaves_workers_queued_on_the_rate_limiter(tmp_path: Path) -> None:
    """Workers waiting for a --rate slot when a stop comes give it up rather than send."""
    stop = anyio.Event()
    seen_at_stop: list[int] = []

    async def stop_after_first(server: Scripted) -> None:
        while not server.posts:  # noqa: ASYNC110 (polls the server)
            await anyio.sleep(0.005)
        seen_at_stop.append(len(server.posts))
        stop.set()

    async with scripted_server(created) as server:
        # One slot a second: during the 5 s grace, queued workers would get about five.
        run = run_settings(server.url, tmp_path, rate=1, shutdown_grace=5.0)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_after_first, server)
                summary = await ingest.upload(api_key=KEY, stop=stop, **run)
    assert (summary.status, summary.exit_code) == ("interrupted", 130)
    assert len(server.posts) - seen_at_stop[0] <= 1  # at most the one already on the wire
    # A worker that gave up its slot never journaled its batch as sending: none is in flight.
    assert read_journal(summary.checkpoint).in_flight == []


async def test_a_retry_after_beyond_the_budget_says_what_was_asked(tmp_path: Path) -> None:
    """A Retry-After over max_retry_seconds stops the run, naming the server's figure and a fix."""

    def later(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
        return problem(429, "slow down", headers={"Retry-After": "99999"})

    async with scripted_server(later) as server:
        run = run_settings(server.url, tmp_path, backoff_base=0.01, max_retry_seconds=5)
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
    message = str(info.value)
    assert "asked to wait 99999s (Retry-After)" in message, message
    assert "raise --max-retry-seconds, or re-run the same command later" in message
    assert "0 attempts" not in message and "3600" not in message
    assert info.value.exit_code == 5


async def test_a_run_of_only_429s_does_not_say_0_attempts(tmp_path: Path) -> None:
    """Retries that run out on 429s alone count the throttled requests, not "0 attempts"."""

    def bare_429(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
        return problem(429, "slow down")  # no Retry-After: the backoff decides

    async with scripted_server(bare_429) as server:
        run = run_settings(
            server.url, tmp_path, concurrency=1, backoff_base=0.1, backoff_max=1.0,
            max_retry_seconds=0.5,
        )  # fmt: skip
        with anyio.fail_after(30), pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(api_key=KEY, **run)
    message = str(info.value)
    assert "requests throttled (HTTP 429)" in message and "attempts" not in message, message


async def test_a_hard_rate_counts_the_preflight_too(tmp_path: Path) -> None:
    """--rate 2: the preflight GET waits its turn like the appends, so no second holds 3."""
    (tmp_path / "few.jsonl").write_bytes(b"".join(b'{"i": %d}\n' % i for i in range(30)))
    async with scripted_server(lambda examples, server: created(examples, server)) as server:
        run = run_settings(server.url, tmp_path, rate=2, input=str(tmp_path / "few.jsonl"))
        with anyio.fail_after(30):
            summary = await ingest.upload(api_key=KEY, **run)
    assert summary.rows_delivered == 30
    arrivals = sorted(server.gets + server.posts)
    assert len(arrivals) == 4
    assert max(sum(s <= t < s + 1.0 for t in arrivals) for s in arrivals) <= 2
