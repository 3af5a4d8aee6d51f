"""A small API-compatible server whose append answers as a test scripts it.

The preflight GET answers a well-formed dataset; every POST to the examples
path is counted (with its arrival time) and answered by the test's ``answer``,
which gets the parsed examples. Its search lists what ``created`` stored and
refuses filters, so settling an unknown outcome reads the whole (small) dataset.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

KEY = "scripted-key"
DATASET = "c2NyaXB0ZWQ6MQ=="

Answer = Callable[[list[dict[str, Any]]], web.Response]


@dataclass
class Scripted:
    """The running server: its URL, the POST arrival times and the rows it stored."""

    url: str = ""
    posts: list[float] = field(default_factory=list)  # time.monotonic() at each arrival
    gets: list[float] = field(default_factory=list)  # ...and at each GET of the dataset
    stored: list[dict[str, Any]] = field(default_factory=list)


def created(examples: list[dict[str, Any]], server: Scripted) -> web.Response:
    """Store ``examples`` and answer 201 as the API does."""
    start = len(server.stored)
    ids = [f"ex-{i}" for i in itertools.islice(itertools.count(start), len(examples))]
    server.stored.extend({**e, "id": i} for e, i in zip(examples, ids, strict=True))
    return web.json_response({"id": DATASET, "name": "scripted", "example_ids": ids}, status=201)


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """A problem+json answer."""
    body = {"status": status, "title": "error", "detail": detail}
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yield its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    # A deep accept queue: a burst of connections must not wait for SYN retransmits.
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def scripted_server(
    answer: Callable[[list[dict[str, Any]], Scripted], web.Response],
) -> AsyncIterator[Scripted]:
    """Serve on 127.0.0.1 (a free port) until the block ends."""
    server = Scripted()

    async def get_dataset(request: web.Request) -> web.Response:
        server.gets.append(time.monotonic())
        return web.json_response({"id": DATASET, "name": "scripted", "space_id": "c3BhY2U="})

    async def append(request: web.Request) -> web.Response:
        server.posts.append(time.monotonic())
        examples = orjson.loads(await request.read())["examples"]
        return answer(examples, server)

    async def search(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"{}")
        if body.get("filter"):
            return problem(400, "filters are not supported here")
        start = int(body.get("cursor") or 0)
        more = start + 500 < len(server.stored)
        pagination = {"has_more": more, "next_cursor": str(start + 500) if more else None}
        return web.json_response(
            {"examples": server.stored[start : start + 500], "pagination": pagination}
        )

    app = web.Application(client_max_size=64 << 20)
    app.router.add_get("/v2/datasets/{id}", get_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    app.router.add_post("/v2/datasets/{id}/examples/search", search)
    async with serving(app) as url:
        server.url = url
        yield server
