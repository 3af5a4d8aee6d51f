"""Against a server that is Arize-compatible but not our fake: the client assumes nothing more.

This server makes other lawful choices than ``ingest.fake``: 200 instead of 201,
ids that are not UUIDs, no ``versions`` in the dataset, a 429 whose
``Retry-After`` is an HTTP date, and 502s with an HTML body from a "proxy".
"""

from __future__ import annotations

import email.utils
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

import ingest

KEY = "other-key"
DATASET = "b3RoZXI6c2VydmVyLzE="


class OtherServer:
    """Counts the rows it stores; fails in its own ways, on a fixed schedule."""

    def __init__(self) -> None:
        self.rows: Counter[int] = Counter()
        self.posts = itertools.count(1)
        self.ids = itertools.count(10_000)
        self.stored: list[dict[str, object]] = []

    async def get_dataset(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"id": request.match_info["id"], "name": "other"})

    async def append(self, request: web.Request) -> web.Response:
        n = next(self.posts)
        if n in (3, 4):
            later = email.utils.formatdate(time.time() + 1, usegmt=True)
            return web.Response(status=429, headers={"Retry-After": later})
        if n % 5 == 0:
            return web.Response(
                status=502, text="<html>Bad Gateway</html>", content_type="text/html"
            )
        examples = orjson.loads(await request.read())["examples"]
        self.rows.update(example["i"] for example in examples)
        ids = [f"ex-{next(self.ids)}" for _ in examples]
        self.stored += [{**e, "id": i} for e, i in zip(examples, ids, strict=True)]
        return web.json_response({"id": DATASET, "example_ids": ids}, status=200)

    async def search(self, request: web.Request) -> web.Response:
        """Lists what it stores, 500 at a time; refuses any filter, as some servers do."""
        body = orjson.loads(await request.read())
        if body.get("filter"):
            return web.json_response({"error": "filters are not supported"}, status=400)
        start = int(body.get("cursor") or 0)
        page = self.stored[start : start + 500]
        more = start + 500 < len(self.stored)
        pagination = {"has_more": more, "next_cursor": str(start + 500) if more else None}
        return web.json_response({"examples": page, "pagination": pagination})


@pytest.fixture
async def other() -> AsyncIterator[tuple[str, OtherServer]]:
    server = OtherServer()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/v2/datasets/{id}", server.get_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", server.append)
    app.router.add_post("/v2/datasets/{id}/examples/search", server.search)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        await runner.cleanup()


async def test_100k_rows_land_once_on_another_compatible_server(
    other: tuple[str, OtherServer], tmp_path: Path
) -> None:
    """100,000 rows land exactly once on a server that answers 200, 429 with a date, and 502s,
    and that refuses search filters (so the 502s are settled by one read of the dataset)."""
    url, server = other
    rows = 100_000
    (tmp_path / "rows.jsonl").write_bytes(
        b"".join(orjson.dumps({"i": i, "q": f"question {i}"}) + b"\n" for i in range(rows))
    )
    summary = await ingest.upload(
        api_key=KEY,
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=DATASET,
        base_url=url,
        batch_rows=1000,
        rate=0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_pending) == (0, rows, 0)
    assert summary.retries["429"] > 0 and summary.retries["5xx"] > 0
    assert summary.lookups > 0 and summary.rows_deleted == 0
    assert set(server.rows) == set(range(rows)) and set(server.rows.values()) == {1}


async def test_a_refused_preflight_is_a_delivery_error(tmp_path: Path) -> None:
    """A 422 to the preflight GET (say, a malformed id) exits 5 with the server's detail."""

    async def refuse(request: web.Request) -> web.Response:
        problem = {"status": 422, "title": "Unprocessable", "detail": "invalid dataset id"}
        return web.json_response(problem, status=422, content_type="application/problem+json")

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        (tmp_path / "rows.jsonl").write_bytes(b'{"a": 1}\n')
        with pytest.raises(ingest.DeliveryError, match="invalid dataset id") as info:
            await ingest.upload(
                api_key=KEY,
                input=str(tmp_path / "rows.jsonl"),
                dataset_id="bad id",
                base_url=f"http://127.0.0.1:{runner.addresses[0][1]}",
            )
        assert info.value.exit_code == 5
    finally:
        await runner.cleanup()
