"""Run the fake app on a real socket: `serve()` yields its base URL, then stops it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from ingest.fake.app import make_app
from ingest.fake.storage import FakeArize


@asynccontextmanager
async def serve(state: FakeArize, *, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `state` on host:port (0 picks a free port) and yield "http://host:port".

    >>> async with serve(FakeArize(api_key="k")) as url:  # doctest: +SKIP
    ...     print(url)
    http://127.0.0.1:54321
    """
    # No access log: at benchmark rates formatting it would cost more than the request.
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # A deep accept queue: aiohttp's default of 128 drops SYNs when more clients than
        # that connect at once (--concurrency goes to 256), and each retransmit costs 1 s.
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        await runner.cleanup()
