"""The ceiling: a minimal aiohttp + orjson uploader, with no checkpoint and no retries.

It streams the JSONL, parses each row with orjson (a client must at least know a row
is JSON) and sends its bytes as they are (dumping the parsed rows again would double
its CPU and flatter every ratio), batches them and POSTs at a fixed concurrency.
Nothing else: no validation beyond the parse, no keys, no journal, no retries; a
failed request ends it.

Usage: bare.py INPUT URL DATASET_ID [BATCH_ROWS] [CONCURRENCY]; key from ARIZE_API_KEY.
"""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import quote

import aiohttp
import orjson


async def main(path: str, url: str, dataset: str, rows: int, concurrency: int) -> None:
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=concurrency)
    headers = {
        "Authorization": f"Bearer {os.environ['ARIZE_API_KEY']}",
        "Content-Type": "application/json",
    }
    target = f"{url}/v2/datasets/{quote(dataset, safe='')}/examples"

    async def worker(session: aiohttp.ClientSession) -> None:
        while (body := await queue.get()) is not None:
            async with session.post(target, data=body, headers=headers) as resp:
                await resp.read()
                resp.raise_for_status()

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        batch: list[bytes] = []
        loads = orjson.loads
        with open(path, "rb") as f:  # noqa: ASYNC230 (bare on purpose: the simplest uploader)
            for line in f:
                loads(line)  # it is JSON; its bytes are sent as they are, not dumped again
                batch.append(line.rstrip(b"\n"))
                if len(batch) == rows:
                    await queue.put(b'{"examples":[' + b",".join(batch) + b"]}")
                    batch = []
        if batch:
            await queue.put(b'{"examples":[' + b",".join(batch) + b"]}")
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            args[0],
            args[1],
            args[2],
            int(args[3]) if len(args) > 3 else 500,
            int(args[4]) if len(args) > 4 else 8,
        )
    )
