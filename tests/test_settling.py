"""Settling unknown outcomes against servers that search imperfectly: every row lands once."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from scripted import DATASET, KEY, problem, serving

import ingest
from ingest.fake.filters import compile_filter
from ingest.source import JsonlSource

VERSION = "djE="


@dataclass
class Searching:
    """A server that stores rows, searches them with filters, and deletes by id.

    ``answer(n)`` says what the n-th POST of examples does: "ok" (store, 201),
    "lost" (store, then 503). ``range_broken``: a range filter (``>=``) finds
    nothing, slowly, as a server that does not compare strings that way.
    ``repeat_pages``: a search pages one example at a time and shows the first
    match again on the second page, as an offset cursor under inserts does.
    ``filters=False``: a search with a filter gets 400. ``visible_after``: seconds
    before a stored example shows in a search.
    """

    answer: Callable[[int], str]
    range_broken: bool = False
    repeat_pages: bool = False
    filters: bool = True
    visible_after: float = 0.0
    stored: list[dict[str, Any]] = field(default_factory=list)
    posts: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    ids: itertools.count[int] = field(default_factory=itertools.count)
    times: list[float] = field(default_factory=list)  # when each example was stored

    def keys(self) -> list[str]:
        return [e["ingest_key"] for e in self.stored]

    async def get_dataset(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"id": DATASET, "name": "searching", "versions": [{"id": VERSION}]}
        )

    async def append(self, request: web.Request) -> web.Response:
        n = next(self.posts)
        examples = orjson.loads(await request.read())["examples"]
        if self.answer(n) == "lost":
            await asyncio.sleep(0.2)  # the commit happens; its answer is lost
        ids = [f"ex-{next(self.ids)}" for _ in examples]
        self.stored += [{**e, "id": i} for e, i in zip(examples, ids, strict=True)]
        self.times += [time.monotonic()] * len(ids)
        if self.answer(n) == "lost":
            return problem(503, "service unavailable")
        return web.json_response({"id": DATASET, "example_ids": ids}, status=201)

    async def search(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        text = body.get("filter")
        if text and not self.filters:
            return problem(400, "filters are not supported here")
        now = time.monotonic()
        shown = [
            e for e, t in zip(self.stored, self.times, strict=True) if now - t >= self.visible_after
        ]
        if text and ">=" in text and self.range_broken:
            await asyncio.sleep(0.3)
            matches: list[dict[str, Any]] = []
        else:
            keep = compile_filter(text) if text else (lambda _: True)
            matches = [e for e in shown if keep(e)]
        if not self.repeat_pages:
            return web.json_response({"examples": matches, "pagination": {"has_more": False}})
        page = int(body.get("cursor") or 0)
        shown = matches[page : page + 1] if page < len(matches) else []
        if page == 1 and matches:
            shown = matches[:1]  # the first match again: the cursor slid
        more = page + 1 < max(len(matches), 2) and bool(matches)
        pagination = {"has_more": more, "next_cursor": str(page + 1) if more else None}
        return web.json_response({"examples": shown, "pagination": pagination})

    async def delete(self, request: web.Request) -> web.Response:
        gone = set(orjson.loads(await request.read())["example_ids"])
        deleted = [e["id"] for e in self.stored if e["id"] in gone]
        kept = [(e, t) for e, t in zip(self.stored, self.times, strict=True) if e["id"] not in gone]
        self.stored, self.times = [e for e, _ in kept], [t for _, t in kept]
        return web.json_response({"deleted_example_ids": deleted})


@asynccontextmanager
async def searching(server: Searching) -> AsyncIterator[str]:
    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/v2/datasets/{id}", server.get_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", server.append)
    app.router.add_delete("/v2/datasets/{id}/examples", server.delete)
    app.router.add_post("/v2/datasets/{id}/examples/search", server.search)
    async with serving(app) as url:
        yield url


def run_settings(url: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    base = dict(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=DATASET,
        base_url=url,
        checkpoint=str(tmp_path / "ckpt"),
        rate=0,
        backoff_base=0.01,
        backoff_max=0.05,
        settle_lag=0.02,
    )
    return {**base, **kw}


def write_rows(path: Path, n: int) -> None:
    path.write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(n)))


async def test_workers_settling_at_once_wait_for_the_range_check(tmp_path: Path) -> None:
    """While the first range search is checked, other workers do not trust range searches
    (a miss would resend stored rows: copies that only the end-of-run look deletes)."""
    write_rows(tmp_path / "rows.jsonl", 5)
    # The first batch is stored (its keys check range searches); the next three lose
    # their answers at once, so three workers settle while the check is under way.
    server = Searching(answer=lambda n: "lost" if 2 <= n <= 4 else "ok", range_broken=True)
    async with searching(server) as url:
        summary = await ingest.upload(
            api_key=KEY,
            **run_settings(url, tmp_path, batch_rows=1, concurrency=4, settle_lag=0),
        )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_pending) == (0, 5, 0)
    assert (summary.rows_present, summary.rows_deleted) == (3, 0), "stored rows were resent"
    keys = server.keys()
    assert len(keys) == len(set(keys)) == 5, "a row stored twice"


async def test_an_example_a_search_shows_twice_is_not_deleted_as_its_own_copy(
    tmp_path: Path,
) -> None:
    """A search that pages the same example twice does not get that row's only copy deleted."""
    write_rows(tmp_path / "rows.jsonl", 1)
    server = Searching(answer=lambda n: "lost" if n == 1 else "ok", repeat_pages=True)
    async with searching(server) as url:
        summary = await ingest.upload(api_key=KEY, **run_settings(url, tmp_path, batch_rows=1))
    assert (summary.exit_code, summary.rows_delivered, summary.rows_deleted) == (0, 1, 0)
    assert [e["i"] for e in server.stored] == [0], "the row's only copy was deleted"


def test_a_gzip_input_resumed_keys_its_rows_as_the_first_run_did(tmp_path: Path) -> None:
    """Resumed past its first line, a gzip input (first line longer than a row may be)
    gives its rows the keys the first run gave them."""
    first = orjson.dumps({"note": "x" * 3000})  # too long to send: a rejected first line
    rows = [first] + [orjson.dumps({"i": i}) for i in range(4)]
    data = b"".join(r + b"\n" for r in rows)
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(data))

    def keys(start_line: int, start_offset: int, batch_bytes: int = 1024) -> list[str]:
        with JsonlSource(
            str(path),
            max_row_bytes=batch_bytes,
            start_line=start_line,
            start_offset=start_offset,
            key_field="ingest_key",
        ) as source:
            out: list[str] = []
            while chunk := source.read_chunk():
                out += chunk.keys
            return out

    fresh = keys(1, 0)
    assert len(fresh) == 4
    past_line_2 = len(rows[0]) + len(rows[1]) + 2
    assert keys(3, past_line_2) == fresh[1:]
    # A resume with another batch_bytes (which caps how much of a line is read) too.
    assert keys(3, past_line_2, batch_bytes=8192) == fresh[1:]
    path.write_bytes(data)  # the same input, plain: the same keys (line 1 is a row now)
    assert keys(1, 0, batch_bytes=8192)[1:] == fresh


async def test_a_batch_parked_for_the_read_of_the_dataset_waits_out_the_lag_first(
    tmp_path: Path,
) -> None:
    """Where filters are refused, the one read of the dataset waits settle_lag after the last
    unknown outcome: a commit not yet visible is not taken for a missing row and resent."""
    write_rows(tmp_path / "rows.jsonl", 3)
    server = Searching(answer=lambda n: "lost" if n == 1 else "ok", filters=False)
    server.visible_after = 0.3
    async with searching(server) as url:
        summary = await ingest.upload(
            api_key=KEY, **run_settings(url, tmp_path, batch_rows=3, settle_lag=0.6)
        )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_pending) == (0, 3, 0)
    assert (summary.rows_present, summary.rows_deleted) == (3, 0), "stored rows were resent"
    assert sorted(e["i"] for e in server.stored) == [0, 1, 2]


async def test_the_range_check_waits_until_the_keys_it_checks_can_show(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Range searches are not given up because the keys checking them were stored too
    recently to show in a search yet (within settle_lag)."""
    write_rows(tmp_path / "rows.jsonl", 3)
    server = Searching(answer=lambda n: "lost" if n == 2 else "ok", visible_after=0.5)
    caplog.set_level(logging.INFO, logger="ingest")
    async with searching(server) as url:
        summary = await ingest.upload(
            api_key=KEY,
            **run_settings(url, tmp_path, batch_rows=1, concurrency=1, settle_lag=0.6),
        )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_pending) == (0, 3, 0)
    assert (summary.rows_present, summary.rows_deleted) == (1, 0)
    assert "does not search by a range filter" not in caplog.text
    assert sorted(e["i"] for e in server.stored) == [0, 1, 2]
