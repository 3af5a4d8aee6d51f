"""Pipeline: wires the stages of one upload and runs them in one task group.

    input ──► source ───Chunk────────► batcher ──Batch──► sender × N ──► journal
    (JSONL,   (thread:   bounded        (rows &    bounded   (limiter,      (writer task:
     .gz, -)  read and  stream, 4       bytes      stream    429 gate,      group commit,
              validate) chunks)         limits)              retries,       fsync off-loop)
                 │                                            halving)
                 └──► rejects (through the journal writer) ◄──┘

The phases, each in its own module: ``resume`` takes the checkpoint (found
by content even for a renamed input, locked, fingerprint checked);
``preflight`` GETs the dataset (key, dataset, base URL); then the stages run,
the source seeking past the lines the checkpoint has as done. Every stream is
bounded, so a slow API holds the reader back and memory stays flat. On a stop
request (Ctrl-C, SIGTERM, SIGHUP) or a failure, ``shutdown`` winds the run
down: the source stops, workers finish the request they are in (for at most
``shutdown_grace`` seconds), and the journal is flushed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import aiohttp
import anyio

from ingest.batcher import Batch, Batcher, batch_stage
from ingest.caller import Abandoned, RetryingCaller
from ingest.checkpoint import CheckpointJournal, JournalState
from ingest.client import DatasetsClient
from ingest.conclude import (
    EXIT_OK,
    ending,
    finished_record,
    totals,
    unbalanced,
)
from ingest.config import API_KEY_ENV, RunConfig
from ingest.errors import (
    ConfigError,
    DeliveryError,
    IngestError,
)
from ingest.identity import changed_since
from ingest.lookup import Lookup
from ingest.pacing import Pacer, pacer_for
from ingest.preflight import preflight, refusal_message
from ingest.reading import read_stage
from ingest.records import Start
from ingest.redact import RedactFilter
from ingest.replay import merge_spans
from ingest.report import Progress, RunStats, Summary, summarize
from ingest.resume import check_key_field, open_checkpoint
from ingest.retry import RetryPolicy
from ingest.rows import Chunk
from ingest.sender import Sender
from ingest.settle import Settler
from ingest.shutdown import Shutdown, first_ingest_error
from ingest.source import JsonlSource

log = logging.getLogger("ingest")

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
    opened, journal, state = await anyio.to_thread.run_sync(open_checkpoint, config)
    run = _Run(opened, key, journal, state, stop or anyio.Event(), progress)
    redacting = RedactFilter(key)  # on the logger: before any handler sees a record
    log.addFilter(redacting)
    failed = True
    try:
        summary = await run.execute()
        failed = False
        return summary
    finally:
        log.removeFilter(redacting)
        # Refused before a row was read or sent (a wrong key; gzip on stdin): a first run
        # leaves no checkpoint behind, unlinked while the lock is held, so no other run
        # can have taken it.
        refused = not run.passed_preflight or (failed and run.untouched)
        if state.attempts == 0 and refused:
            with contextlib.suppress(OSError):
                os.unlink(opened.checkpoint_path)
        journal.release()


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
        self.shutdown = Shutdown(stop)
        # A rejects file that cannot be written ends the run as a failure, after the
        # requests in flight; the journal keeps their done records.
        journal.on_rejects_error = self.shutdown.fail
        self.state = state
        self.passed_preflight = False
        self.progress = progress
        # One clock for the pacer, the caller and the counters.
        self.pacer = pacer_for(
            rate=config.rate, concurrency=config.concurrency, policy=self._policy()
        )
        self.stats = RunStats(
            now=self.pacer.clock.now, rows_skipped=state.delivered_rows + state.rejected_rows
        )
        self.exhausted = False
        self.complete = False
        self.version: str | None = None  # the dataset version written to (the preflight's)
        self.unbalanced: str | None = None  # why the counts of a complete run do not add up

    @property
    def untouched(self) -> bool:
        """Whether no row was read or rejected, so none was sent (rows are counted read
        before the batcher gets them); the preflight may have taken several requests."""
        return self.stats.rows_read == 0 and self.stats.rows_rejected == 0

    def summary(self, status: str, exit_code: int, message: str = "") -> Summary:
        # Counted by the journal, by the rule `ingest status` applies to it (RunResends).
        self.stats.unknown_resent = self.journal.unknown_resent
        return summarize(
            self.stats,
            status=status,
            exit_code=exit_code,
            totals=totals(self.stats, self.state),
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
        check_key_field(self.state, self.config)
        if self.state.in_flight:
            spans = ", ".join(f"{r['lines'][0]}-{r['lines'][1]}" for r in self.state.in_flight)
            then = (
                "their rows are looked up in the dataset, and only the missing ones are sent"
                if self.config.lookup_field
                else "they are sent again and may be duplicated (--no-key)"
            )
            log.warning(
                "resuming: %d batches were in flight when the last run stopped (lines %s); %s",
                len(self.state.in_flight),
                spans,
                then,
            )
        failure: BaseException | None = None
        # Proxies come from the environment once per run (see client.env_proxy);
        # SSL_CERT_FILE is honoured by OpenSSL's default verify paths.
        # One connection per worker: in a smaller pool (aiohttp's default holds 100) a
        # request would wait for one, and the wait counts against request_timeout.
        connector = aiohttp.TCPConnector(limit=self.pacer.workers)
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

                        async def check() -> None:
                            self.version = await preflight(
                                self._caller(self.pacer).call, client, self.config
                            )

                        checked = await self.shutdown.guard(check, grace=0.0)
                        if checked:
                            self.passed_preflight = True
                            await self._stages(client)
                        if self.shutdown.failure is not None:
                            raise self.shutdown.failure
                    except Exception as exc:
                        failure = first_ingest_error(exc)
                    finally:
                        self.journal.close()
            except Exception as exc:  # the writer failed: the checkpoint cannot be trusted
                failure = failure or first_ingest_error(exc)
        if failure is not None:
            if isinstance(failure, IngestError):
                failure.summary = self.summary("failed", failure.exit_code, str(failure))
            raise failure
        if self.unbalanced is not None:
            log.error("%s", self.unbalanced)
        status, code, message = ending(
            complete=self.complete,
            why_unbalanced=self.unbalanced,
            rejected=totals(self.stats, self.state)[1],
            stdin=self.config.input == "-",
            rejects_path=self.config.rejects_path,
        )
        return self.summary(status, code, message)

    def _start_record(self) -> Start:
        c = self.config
        return Start(
            pid=os.getpid(),
            batch_rows=c.batch_rows,
            batch_bytes=c.batch_bytes,
            resent_in_flight=[[r["seq"], r["part"], *r["lines"]] for r in self.state.in_flight],
            keys=c.lookup_field,
        )

    def _policy(self) -> RetryPolicy:
        c = self.config
        return RetryPolicy(
            max_attempts=c.max_attempts,
            max_seconds=c.max_retry_seconds,
            base=c.backoff_base,
            cap=c.backoff_max,
        )

    def _caller(
        self, pacer: Pacer | None = None, stopping: anyio.Event | None = None
    ) -> RetryingCaller:
        return RetryingCaller(
            policy=self._policy(),
            stats=self.stats,
            describe=lambda action, reply: refusal_message(action, reply, self.config),
            pacer=pacer,
            stopping=stopping,
            base_url=self.config.base_url,
        )

    def _input_changed(self) -> str | None:
        """Why the input is not the one the checkpoint records any more (at its end: one stat)."""
        if self.config.input == "-":
            return None
        return changed_since(self.config.input, _recorded_input(self.state.fingerprint))

    async def _stages(self, client: DatasetsClient) -> None:
        c = self.config
        start_line, start_offset = self.state.covered.prefix()
        if c.key_from is not None:
            start_line = start_offset = 0  # the done lines are read for their keys too
        source = await anyio.to_thread.run_sync(
            lambda: JsonlSource(
                c.input,
                max_row_bytes=c.batch_bytes,
                start_line=start_line + 1,
                start_offset=start_offset,
                skip=self.state.covered.skipper() if len(self.state.covered) else None,
                expected_size=_fingerprinted_size(self.state.fingerprint),
                changed=self._input_changed,
                key_field=c.key_field,
                key_from=c.key_from,
            )
        )
        caller = self._caller(self.pacer, self.shutdown.event)
        settler = None
        if c.lookup_field is not None:
            lookup = Lookup(
                call=caller.call,
                client=client,
                key_field=c.lookup_field,
                version=self.version,
                natural=c.key_from is not None,
                lag=c.settle_lag,
            )
            settler = Settler(
                lookup=lookup,
                caller=caller,
                journal=self.journal,
                stats=self.stats,
                keys=lambda: source.keys,
                lag=c.settle_lag,
                maybe_present=merge_spans([tuple(r["lines"]) for r in self.state.in_flight]),
                earlier_recheck=dict(self.state.recheck),
            )
        sender = Sender(
            append=client.append,
            journal=self.journal,
            caller=caller,
            stats=self.stats,
            on_reject=self._note_reject,
            server_error_rejects=self.state.server_error_streak,
            refused_before=self.state.refusal_streak,
            settler=settler,
        )
        chunks_tx, chunks_rx = anyio.create_memory_object_stream[Chunk](4)
        batches_tx, batches_rx = anyio.create_memory_object_stream[Batch](1)
        batcher = Batcher(
            batch_rows=c.batch_rows,
            batch_bytes=c.batch_bytes,
            first_seq=self.state.next_seq,
            first_line=start_line + 1,
            start=start_offset,
        )

        async def read() -> None:
            self.exhausted = await read_stage(
                source,
                chunks_tx,
                shutdown=self.shutdown,
                journal=self.journal,
                stats=self.stats,
                on_reject=self._note_reject,
            )

        async def run_stages() -> None:
            async with anyio.create_task_group() as stages:
                stages.start_soon(read)
                stages.start_soon(batch_stage, batcher, chunks_rx, batches_tx, self.shutdown.event)
                async with batches_rx:
                    sender.start_workers(
                        stages,
                        batches_rx,
                        workers=self.pacer.workers,
                        on_failure=self.shutdown.fail,
                    )
            stopped = self.shutdown.failure is not None or self.shutdown.event.is_set()
            if settler is not None and self.exhausted and not stopped:
                await self._settle(settler)

        try:
            async with anyio.create_task_group() as side:
                if self.progress:
                    side.start_soon(Progress(self.stats, pacing=self.pacer.snapshot).run)
                await self.shutdown.guard(run_stages, grace=c.shutdown_grace)
                side.cancel_scope.cancel()
        finally:
            source.close()
        self.complete = (
            self.exhausted
            and self.shutdown.failure is None
            and batcher.pending == 0
            and sender.resolved == batcher.produced
            and (settler is None or settler.settled)
        )
        if self.complete:
            before = await anyio.to_thread.run_sync(source.rows_before_start)
            rows = self.stats.rows_read + source.skipped_rows + before
            self.unbalanced = unbalanced(self.stats, self.state, rows)
        if self.complete and self.unbalanced is None:
            await self.journal.write(finished_record(self.stats, self.state))

    async def _settle(self, settler: Settler) -> None:
        """The phase after the input is sent: what waited for a read of the dataset,
        and a second look where rows were sent after a look-up."""
        try:
            await settler.finish()
        except Abandoned:
            pass  # a stop: the batches stay unknown in the journal, for the resumed run
        except DeliveryError as exc:
            self.shutdown.fail(exc)

    def _note_reject(self, line: int, reason: str) -> None:
        """Count a rejected line; name the first few on stderr."""
        self.stats.rows_rejected += 1
        if self.stats.rows_rejected <= _REJECTS_SHOWN:
            log.warning("%s:%d: rejected: %s", self.config.input, line, reason)
            if self.stats.rows_rejected == _REJECTS_SHOWN:
                log.warning("further rejects go only to %s", self.config.rejects_path)


def _recorded_input(fp: dict[str, Any] | None) -> dict[str, Any]:
    recorded = (fp or {}).get("input")
    return recorded if isinstance(recorded, dict) else {}


def _fingerprinted_size(fp: dict[str, Any] | None) -> int | None:
    """The input's size when its checkpoint was taken: reading must get that far."""
    size = _recorded_input(fp).get("size")
    return size if isinstance(size, int) else None
