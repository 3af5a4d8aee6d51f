"""The read stage: a source's chunks into the pipeline's stream, its rejects journaled.

Takes a ``JsonlSource`` (read in the event loop when it is a regular file, in a
thread when its reads may stall, as stdin's do); gives out ``Chunk`` s of rows on a
bounded stream, so the reader waits for the batcher and memory stays flat.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ingest.errors import SourceError
from ingest.rows import Chunk
from ingest.source import JsonlSource

if TYPE_CHECKING:
    from anyio.abc import ObjectSendStream

    from ingest.checkpoint import CheckpointJournal
    from ingest.report import RunStats
    from ingest.shutdown import Shutdown

_INLINE_LINES = 1024  # rows a chunk read in the event loop holds: a few ms of the loop's time


async def read_stage(
    source: JsonlSource,
    out: ObjectSendStream[Chunk],
    *,
    shutdown: Shutdown,
    journal: CheckpointJournal,
    stats: RunStats,
    on_reject: Callable[[int, str], None],
) -> bool:
    """The source stage: read chunks, journal their rejects, send their rows on.

    Returns whether the input was read to its end. A damaged input is noted on
    ``shutdown`` (not a stop: the rows read before the damage are still sent).
    """
    async with out:
        while not shutdown.event.is_set():
            chunk: Chunk | None
            try:
                if source.inline:
                    # A regular file, opened: its reads do not stall, and a thread per chunk
                    # would stall the loop instead (each start waits on the reader's GIL).
                    chunk = source.read_chunk(_INLINE_LINES)
                else:
                    # A stalled stdin must not hold a stop: the read is abandoned.
                    chunk = await shutdown.race(source.read_chunk)
            except SourceError as exc:
                shutdown.note(exc)
                return False
            if chunk is None:
                return False  # a stop: nothing read is in flight, so leave at once
            if not chunk:
                return True
            for reject in chunk.rejects:
                on_reject(reject.line, reject.reason)
                # The last one waits for the disk, so bad lines cannot pile up in memory.
                await journal.reject(reject, durable=reject is chunk.rejects[-1])
            if journal.rejects_error is not None:
                # Its rejects are not recorded: a batch of its rows would cover them.
                return False
            stats.rows_read += len(chunk)
            if chunk.rows:
                try:
                    await out.send(chunk)
                except anyio.BrokenResourceError:
                    return False
    return False
