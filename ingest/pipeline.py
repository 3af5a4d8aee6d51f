"""Pipeline: wires the stages of one upload and runs them in one task group.

    input ──► source ───Chunk────────► batcher ──Batch──► sender × N ──► journal
    (JSONL,   (thread:   bounded        (rows &    bounded   (limiter,      (writer task:
     .gz, -)  read and  stream, 4       bytes      stream    429 gate,      group commit,
              validate) chunks)         limits)              retries,       fsync off-loop)
                 │                                            halving)
                 └──► rejects (through the journal writer) ◄──┘

Before any input is read, the checkpoint is taken (locked, fingerprint
checked) and a preflight GET checks the key and the dataset. The source then
seeks past the lines the checkpoint has as done. Every stream is bounded, so
a slow API holds the reader back and memory stays flat. On a stop request
(Ctrl-C, SIGTERM) the source stops, workers finish the request they are in
(for at most ``shutdown_grace`` seconds), and the journal is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import anyio
from aiolimiter import AsyncLimiter
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ingest.batcher import Batch, Batcher
from ingest.checkpoint import CheckpointJournal, JournalState
from ingest.client import DatasetsClient, Reply
from ingest.config import API_KEY_ENV, RunConfig
from ingest.errors import (
    BaseUrlError,
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    DeliveryError,
    IngestError,
    SourceError,
)
from ingest.identity import fingerprint, matching_checkpoints
from ingest.redact import RedactFilter
from ingest.report import Progress, RunStats, Summary, summarize
from ingest.retry import Action, RetryPolicy, classify
from ingest.sender import Sender
from ingest.source import Chunk, JsonlSource, Reject

log = logging.getLogger("ingest")
T = TypeVar("T")

EXIT_OK = 0
EXIT_REJECTS = 6
EXIT_INTERRUPTED = 130
_REJECTS_SHOWN = 5  # bad lines named on stderr; all of them go to the rejects file


async def upload(
    config: RunConfig | None = None,
    /,
    *,
    api_key: str | None = None,
    stop: anyio.Event | None = None,
    progress: bool = False,
    **settings: Any,
) -> Summary:
    """Upload a JSONL file into an Arize dataset; resumable, every row once or rejected.

    Pass a ``RunConfig`` or its settings as keywords. The key defaults to
    ``$ARIZE_API_KEY``. Setting ``stop`` asks the run to wind down (what the
    CLI does on Ctrl-C); the summary then says ``interrupted``. Raises an
    ``IngestError`` when the run cannot finish; its ``summary`` attribute
    holds the counts so far, when there are any.

        summary = await ingest.upload(input="rows.jsonl", dataset_id="RGF0YXNldDox")
    """
    if config is None:
        config = RunConfig.from_settings(settings)
    elif settings:
        config = config.replace(**settings)
    # Surrounding whitespace (a newline from `$(cat key)`, a CR from a CRLF .env) is
    # not part of a key; anything else unprintable is refused before it reaches a header.
    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip()
    if not key:
        raise ConfigError(f"set {API_KEY_ENV} to your Arize API key")
    if not key.isascii() or not key.isprintable():
        raise ConfigError(f"{API_KEY_ENV} holds a control or non-ASCII character; check its value")
    opened, journal, state = await anyio.to_thread.run_sync(_open_checkpoint, config)
    run = _Run(opened, key, journal, state, stop or anyio.Event(), progress)
    redacting = RedactFilter(key)  # on the logger: before any handler sees a record
    log.addFilter(redacting)
    try:
        return await run.execute()
    finally:
        log.removeFilter(redacting)
        if state.attempts == 0 and not run.passed_preflight:
            # A run refused before reading anything leaves no checkpoint behind
            # (unlinked while the lock is held, so no other run can have taken it).
            with contextlib.suppress(OSError):
                os.unlink(opened.checkpoint_path)
        journal.release()


def _open_checkpoint(config: RunConfig) -> tuple[RunConfig, CheckpointJournal, JournalState]:
    """Fingerprint the input and take its checkpoint (blocking: run in a thread).

    The config comes back with the checkpoint found, if it is not the default one.
    """
    if config.input != "-" and not os.path.isfile(config.input):
        what = "is not a file" if os.path.exists(config.input) else "input file not found"
        raise ConfigError(f"{config.input}: {what}")
    fp = fingerprint(config.input, config.dataset_id, config.dataset_version_id)
    found = _renamed_input_checkpoint(config, fp)
    journal, state = CheckpointJournal.open(
        found.checkpoint_path,
        fp,
        rejects_path=found.rejects_path,
        restart=found.restart,
        input_path=found.input,
    )
    if found is not config:
        # Renamed after the input (under the lock), the checkpoint is found by name from
        # now on, so an edit of the renamed input is refused rather than started afresh.
        try:
            journal.move_to(config.checkpoint_path, config.rejects_path)
        except OSError as exc:
            log.warning("could not rename %s after its input: %s", found.checkpoint_path, exc)
            return found, journal, state
        log.info("%s is renamed %s", found.checkpoint_path, config.checkpoint_path)
    return config, journal, state


def _renamed_input_checkpoint(config: RunConfig, fp: dict[str, Any]) -> RunConfig:
    """The config with the checkpoint of this input under an earlier name, if there is one.

    Only when the default checkpoint does not exist: the input's folder is searched
    for default checkpoints of this dataset whose header holds this input's identity.
    """
    if config.checkpoint or config.input == "-" or os.path.exists(config.checkpoint_path):
        return config
    folder = os.path.dirname(config.input) or "."
    found = matching_checkpoints(folder, config.checkpoint_suffix, fp)
    if not found:
        return config
    if len(found) > 1:
        raise CheckpointError(
            f"several checkpoints in {folder} are for this input's content: "
            f"{', '.join(found)}; pass --checkpoint with the one to resume"
        )
    earlier = os.path.basename(found[0]).removesuffix(config.checkpoint_suffix)
    log.info("resuming from %s: %s is %s renamed (same content)", found[0], config.input, earlier)
    # The rejects file belongs with the checkpoint: it moves along unless given.
    return config.replace(checkpoint=found[0])


class _Run:
    """One execution of the pipeline against an open journal."""

    def __init__(
        self,
        config: RunConfig,
        api_key: str,
        journal: CheckpointJournal,
        state: JournalState,
        stop: anyio.Event,
        progress: bool,
    ) -> None:
        self.config = config
        self.api_key = api_key
        self.journal = journal
        # A rejects file that cannot be written ends the run as a failure, after the
        # requests in flight; the journal keeps their done records.
        journal.on_rejects_error = self._fail
        self.state = state
        self.requested_stop = stop  # the caller's; ours below is also set by a failure
        self.stop = anyio.Event()
        self.failure: IngestError | None = None
        self.passed_preflight = False
        self.progress = progress
        self.stats = RunStats(rows_skipped=state.delivered_rows + state.rejected_rows)
        self.exhausted = False
        self.complete = False

    def summary(self, status: str, exit_code: int, message: str = "") -> Summary:
        # Counted by the journal, by the rule `ingest status` applies to it (RunResends).
        self.stats.unknown_resent = self.journal.unknown_resent
        totals = (
            self.state.delivered_rows + self.stats.rows_delivered,
            self.state.rejected_rows + self.stats.rows_rejected,
        )
        return summarize(
            self.stats,
            status=status,
            exit_code=exit_code,
            totals=totals,
            in_flight_resent=len(self.state.in_flight),
            checkpoint=self.config.checkpoint_path,
            rejects=self.config.rejects_path,
            message=message,
        )

    async def execute(self) -> Summary:
        finished = self.state.finished
        if finished is not None:
            code = int(finished.get("exit_code", EXIT_OK))
            log.info("every line of this input is already done: nothing to send")
            return self.summary("already-complete", code, "every line was done by an earlier run")
        if self.state.in_flight:
            spans = ", ".join(f"{r['lines'][0]}-{r['lines'][1]}" for r in self.state.in_flight)
            log.warning(
                "resuming: %d batches were in flight when the last run stopped (lines %s); "
                "they are sent again and may be duplicated",
                len(self.state.in_flight),
                spans,
            )
        failure: BaseException | None = None
        # Proxies come from the environment once per run (see client.env_proxy);
        # SSL_CERT_FILE is honoured by OpenSSL's default verify paths.
        # One connection per worker: in a smaller pool (aiohttp's default holds 100) a
        # request would wait for one, and the wait counts against request_timeout.
        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            client = DatasetsClient(
                session,
                base_url=self.config.base_url,
                api_key=self.api_key,
                dataset_id=self.config.dataset_id,
                dataset_version_id=self.config.dataset_version_id,
                timeout=self.config.request_timeout,
            )
            try:
                async with anyio.create_task_group() as outer:
                    outer.start_soon(self.journal.run)
                    # Errors are caught in here, not outside: leaving the group with one
                    # would cancel the writer before it commits what is buffered.
                    try:
                        await self.journal.write(self._start_record())
                        if await self._until_stop(lambda: self._preflight(client), grace=0.0):
                            self.passed_preflight = True
                            await self._stages(client)
                        if self.failure is not None:
                            raise self.failure
                    except Exception as exc:
                        failure = _first_ingest_error(exc)
                    finally:
                        self.journal.close()
            except Exception as exc:  # the writer failed: the checkpoint cannot be trusted
                failure = failure or _first_ingest_error(exc)
        if failure is not None:
            if isinstance(failure, IngestError):
                failure.summary = self.summary("failed", failure.exit_code, str(failure))
            raise failure
        if not self.complete:
            hint = (
                "stdin cannot be resumed: rows read but not delivered are lost"
                if self.config.input == "-"
                else "re-run the same command to resume"
            )
            return self.summary("interrupted", EXIT_INTERRUPTED, hint)
        rejected = self.state.rejected_rows + self.stats.rows_rejected
        if rejected:
            return self.summary(
                "complete-with-rejects", EXIT_REJECTS, f"see {self.config.rejects_path}"
            )
        return self.summary("complete", EXIT_OK)

    def _start_record(self) -> dict[str, Any]:
        c = self.config
        return {
            "t": "start",
            "pid": os.getpid(),
            "batch_rows": c.batch_rows,
            "batch_bytes": c.batch_bytes,
            "resent_in_flight": [[r["seq"], r["part"], *r["lines"]] for r in self.state.in_flight],
        }

    def _policy(self) -> RetryPolicy:
        c = self.config
        return RetryPolicy(
            max_attempts=c.max_attempts,
            max_seconds=c.max_retry_seconds,
            base=c.backoff_base,
            cap=c.backoff_max,
        )

    def _sender(
        self, append: Any, limiter: AsyncLimiter | None, stopping: anyio.Event | None = None
    ) -> Sender:
        return Sender(
            append=append,
            journal=self.journal,
            policy=self._policy(),
            stats=self.stats,
            describe=self._describe,
            on_reject=self._note_reject,
            limiter=limiter,
            stopping=stopping,
        )

    def _describe(self, action: Action, reply: Reply) -> str:
        c = self.config
        if action is Action.AUTH:
            return (
                f"the API refused the key in {API_KEY_ENV} ({reply.problem()}); check that it "
                "is a valid Arize API key with access to this dataset's space"
            )
        if action is Action.NOT_FOUND:
            version = f" (version {c.dataset_version_id!r})" if c.dataset_version_id else ""
            return (
                f"dataset {c.dataset_id!r}{version} was not found at {c.base_url} "
                f"({reply.problem()}); check --dataset-id"
            )
        return f"the API refused the request ({reply.problem()})"

    async def _preflight(self, client: DatasetsClient) -> None:
        """One GET before reading anything: a wrong key or dataset fails here, after 1 request."""
        reply = await self._sender(client.append, None).call(
            client.get_dataset, "the preflight GET of the dataset"
        )
        if classify(reply.status) is not Action.DELIVERED:  # a 400/422: nothing can fix it
            raise DeliveryError(
                f"the API refused the preflight GET of the dataset ({reply.problem()})"
            )
        doc = reply.json()
        if not (isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]):
            # A web front end answers 200 to anything: only the dataset itself passes.
            raise BaseUrlError(
                "the preflight GET of the dataset: "
                + reply.not_the_api('the dataset as a JSON object with its "id"')
            )
        if self.config.dataset_version_id:
            versions = doc.get("versions")
            if isinstance(versions, list):
                ids = {v.get("id") for v in versions if isinstance(v, dict)}
                if self.config.dataset_version_id not in ids:
                    raise DatasetNotFoundError(
                        f"dataset {self.config.dataset_id!r} has no version "
                        f"{self.config.dataset_version_id!r}; check --dataset-version-id"
                    )

    async def _stages(self, client: DatasetsClient) -> None:
        c = self.config
        start_line, start_offset = self.state.covered.prefix()
        source = await anyio.to_thread.run_sync(
            lambda: JsonlSource(
                c.input,
                max_row_bytes=c.batch_bytes,
                start_line=start_line + 1,
                start_offset=start_offset,
                skip=self.state.covered.skipper() if len(self.state.covered) else None,
                expected_size=_fingerprinted_size(self.state.fingerprint),
            )
        )
        limiter = AsyncLimiter(1, 1 / c.rate) if c.rate else None
        sender = self._sender(client.append, limiter, self.stop)
        chunks_tx, chunks_rx = anyio.create_memory_object_stream[Chunk](4)
        batches_tx, batches_rx = anyio.create_memory_object_stream[Batch](1)
        batcher = Batcher(
            batch_rows=c.batch_rows,
            batch_bytes=c.batch_bytes,
            first_seq=self.state.next_seq,
            first_line=start_line + 1,
            start=start_offset,
        )

        async def run_stages() -> None:
            async with anyio.create_task_group() as stages:
                stages.start_soon(self._read, source, chunks_tx)
                stages.start_soon(self._batch, batcher, chunks_rx, batches_tx)
                async with batches_rx:
                    for _ in range(c.concurrency):
                        stages.start_soon(sender.work, batches_rx.clone(), self._fail)

        try:
            async with anyio.create_task_group() as side:
                if self.progress:
                    side.start_soon(Progress(self.stats).run)
                await self._until_stop(run_stages, grace=c.shutdown_grace)
                side.cancel_scope.cancel()
        finally:
            source.close()
        self.complete = (
            self.exhausted and batcher.pending == 0 and sender.resolved == batcher.produced
        )
        if self.complete:
            await self.journal.write(
                {
                    "t": "finished",
                    "exit_code": EXIT_REJECTS
                    if self.state.rejected_rows + self.stats.rows_rejected
                    else EXIT_OK,
                    "delivered": self.state.delivered_rows + self.stats.rows_delivered,
                    "rejected": self.state.rejected_rows + self.stats.rows_rejected,
                }
            )

    async def _until_stop(self, work: Callable[[], Awaitable[None]], *, grace: float) -> bool:
        """Run ``work``; after a stop request give it ``grace`` seconds, then cancel it.

        Returns False when ``work`` was cut short.
        """
        cut = False
        async with anyio.create_task_group() as tg:

            async def forward() -> None:
                await self.requested_stop.wait()
                self.stop.set()

            async def watch() -> None:
                nonlocal cut
                await self.stop.wait()
                if grace:
                    why = "after an error" if self.failure else "as asked"
                    log.warning(
                        "stopping %s: nothing new is sent; requests in flight get up to %.0fs",
                        why,
                        grace,
                    )
                    await anyio.sleep(grace)
                cut = True
                tg.cancel_scope.cancel()

            tg.start_soon(forward)
            tg.start_soon(watch)
            await work()
            tg.cancel_scope.cancel()
        return not cut

    def _fail(self, exc: IngestError) -> None:
        """Record the run's failure and wind down as for a stop: in-flight requests finish."""
        if self.failure is None:
            self.failure = exc
        self.stop.set()

    async def _read(self, source: JsonlSource, out: ObjectSendStream[Chunk]) -> None:
        async with out:
            while not self.stop.is_set():
                try:
                    chunk = await self._next_chunk(source)
                except SourceError as exc:
                    # Not a stop: what was read before the damage is still delivered.
                    self.failure = self.failure or exc
                    return
                if chunk is None:
                    return  # a stop: nothing read is in flight, so leave at once
                if not chunk:
                    self.exhausted = True
                    return
                for reject in chunk.rejects:
                    # The last one waits for the disk, so bad lines cannot pile up in memory.
                    await self._reject(reject, durable=reject is chunk.rejects[-1])
                if self.journal.rejects_error is not None:
                    # Its rejects are not recorded: a batch of its rows would cover them.
                    return
                self.stats.rows_read += len(chunk)
                if chunk.rows:
                    try:
                        await out.send(chunk)
                    except anyio.BrokenResourceError:
                        return

    async def _next_chunk(self, source: JsonlSource) -> Chunk | None:
        """The next chunk, or None if a stop comes first (a stalled stdin must not hold it)."""
        got: list[Chunk] = []
        failed: list[SourceError] = []
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                try:
                    got.append(await _in_daemon_thread(source.read_chunk))
                except SourceError as exc:
                    failed.append(exc)
                tg.cancel_scope.cancel()

            async def stop() -> None:
                await self.stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(read)
            tg.start_soon(stop)
        if failed:
            raise failed[0]
        return got[0] if got else None

    def _note_reject(self, line: int, reason: str) -> None:
        """Count a rejected line; name the first few on stderr."""
        self.stats.rows_rejected += 1
        if self.stats.rows_rejected <= _REJECTS_SHOWN:
            log.warning("%s:%d: rejected: %s", self.config.input, line, reason)
            if self.stats.rows_rejected == _REJECTS_SHOWN:
                log.warning("further rejects go only to %s", self.config.rejects_path)

    async def _reject(self, item: Reject, *, durable: bool) -> None:
        self._note_reject(item.line, item.reason)
        await self.journal.reject(item, durable=durable)

    async def _batch(
        self,
        batcher: Batcher,
        chunks: ObjectReceiveStream[Chunk],
        out: ObjectSendStream[Batch],
    ) -> None:
        try:
            async with chunks, out:
                async for chunk in chunks:
                    if self.stop.is_set():
                        return
                    for batch in batcher.extend(chunk.rows, chunk.lines, chunk.ends, chunk.starts):
                        await out.send(batch)
                if not self.stop.is_set() and (last := batcher.flush()) is not None:
                    await out.send(last)
        except anyio.BrokenResourceError:
            pass  # the workers stopped (a stop request): queued rows stay unsent


async def _in_daemon_thread(work: Callable[[], T]) -> T:
    """Run blocking ``work`` in a daemon thread.

    Unlike ``anyio.to_thread``'s workers, a daemon thread left blocked (a read
    from a stdin that never ends, abandoned on a stop) does not keep the
    process from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # abandoned: nobody waits any more
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="ingest-reader", daemon=True).start()
    return await future


def _fingerprinted_size(fp: dict[str, Any] | None) -> int | None:
    """The input's size when its checkpoint was taken: reading must get that far."""
    size = (fp or {}).get("input", {}).get("size")
    return size if isinstance(size, int) else None


def _first_ingest_error(exc: BaseException) -> BaseException:
    """The error to report out of a task group's ``ExceptionGroup``: an IngestError first."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        for leaf in leaves:
            if isinstance(leaf, IngestError):
                return leaf
        return leaves[0] if leaves else exc
    return exc


def _leaves(group: BaseExceptionGroup[BaseException]) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
