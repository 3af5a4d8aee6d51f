"""Report: live counters, progress while a run goes, and the summary at its end.

Takes the counters every stage bumps (``RunStats``); gives out a progress line
on a terminal (periodic log lines otherwise) and the ``Summary``: as text for
people, as one JSON object (``--json``) for schedulers.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

import anyio
import orjson

from ingest.redact import redact

if TYPE_CHECKING:
    from ingest.pacing import PacerSnapshot

log = logging.getLogger("ingest")


@dataclass(slots=True)
class RunStats:
    """Counters for this run; every stage bumps its own (one event loop, no locks)."""

    # The run's clock (``Clock.now``): the same one the caller and the pacer read.
    now: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    started: float = -1.0
    rows_read: int = 0
    rows_delivered: int = 0
    rows_rejected: int = 0
    rows_skipped: int = 0
    batches: int = 0
    requests: int = 0
    unknown_resent: int = 0
    rows_present: int = 0  # found stored by a look-up (an unknown outcome): counted delivered
    rows_deleted: int = 0  # extra copies of a row deleted by settling
    lookups: int = 0  # look-ups of an unknown outcome's rows
    retries: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.now()

    @property
    def rows_pending(self) -> int:
        """Rows read but neither delivered nor rejected: queued or in flight at the end."""
        return self.rows_read - self.rows_delivered - self.rows_rejected

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return self.now() - self.started


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """How a run ended. ``exit_code`` is the CLI's; the README lists them all."""

    # complete | complete-with-rejects | already-complete | interrupted | unbalanced | failed
    status: str
    exit_code: int
    rows_read: int
    rows_delivered: int
    rows_rejected: int
    rows_skipped: int
    rows_pending: int
    rows_present: int
    rows_deleted: int
    lookups: int
    unknown_resent: int
    in_flight_resent: int
    batches: int
    requests: int
    retries: dict[str, int]
    elapsed_s: float
    rows_per_s: float
    total_delivered: int
    total_rejected: int
    checkpoint: str
    rejects: str
    message: str = ""

    def redacted(self, secret: str) -> Summary:
        """The summary with the key out of its one text that quotes servers, the message.

        Never the serialized summary: a key equal to a number, a path part or a
        field name would be rewritten there, and the JSON broken.
        """
        return replace(self, message=redact(self.message, secret))

    def to_json(self) -> bytes:
        """One JSON object, for schedulers and scripts."""
        return orjson.dumps(asdict(self))

    def to_text(self) -> str:
        """A few aligned lines, for people."""
        retries = ", ".join(f"{k} {v}" for k, v in sorted(self.retries.items())) or "none"
        lines = [
            f"status:            {self.status}" + (f" ({self.message})" if self.message else ""),
            f"rows read:         {self.rows_read:,}",
            f"rows delivered:    {self.rows_delivered:,}",
            f"rows rejected:     {self.rows_rejected:,}"
            + (f"  (see {self.rejects})" if self.total_rejected else ""),
            f"rows pending:      {self.rows_pending:,}"
            + ("  (read, not yet delivered: re-run to resume)" if self.rows_pending else ""),
            f"already done:      {self.rows_skipped:,}",
            f"settled:           {self.rows_present:,} rows found stored, "
            f"{self.rows_deleted:,} extra copies deleted, in {self.lookups:,} look-ups",
            f"unknown outcomes:  {self.unknown_resent:,} resent"
            + (
                f", {self.in_flight_resent} batches in flight at last stop resent"
                if self.in_flight_resent
                else ""
            ),
            f"batches:           {self.batches:,} in {self.requests:,} requests",
            f"retries:           {retries}",
            f"elapsed:           {self.elapsed_s:.2f} s ({self.rows_per_s:,.0f} rows/s)",
            f"all runs:          {self.total_delivered:,} delivered, "
            f"{self.total_rejected:,} rejected; checkpoint {self.checkpoint}",
        ]
        return "\n".join(lines)


def summarize(
    stats: RunStats,
    *,
    status: str,
    exit_code: int,
    totals: tuple[int, int],
    in_flight_resent: int,
    checkpoint: str,
    rejects: str,
    message: str = "",
) -> Summary:
    """Freeze the counters into a ``Summary``."""
    elapsed = stats.elapsed
    return Summary(
        status=status,
        exit_code=exit_code,
        rows_read=stats.rows_read,
        rows_delivered=stats.rows_delivered,
        rows_rejected=stats.rows_rejected,
        rows_skipped=stats.rows_skipped,
        rows_pending=stats.rows_pending,
        rows_present=stats.rows_present,
        rows_deleted=stats.rows_deleted,
        lookups=stats.lookups,
        unknown_resent=stats.unknown_resent,
        in_flight_resent=in_flight_resent,
        batches=stats.batches,
        requests=stats.requests,
        retries=dict(stats.retries),
        elapsed_s=round(elapsed, 3),
        rows_per_s=round(stats.rows_delivered / elapsed, 1) if elapsed > 0 else 0.0,
        total_delivered=totals[0],
        total_rejected=totals[1],
        checkpoint=checkpoint,
        rejects=rejects,
        message=message,
    )


class Progress:
    """Shows how a run goes: a live line on a terminal, a log line now and then otherwise.

    async with anyio.create_task_group() as tg:
        tg.start_soon(Progress(stats, pacing=pacer.snapshot).run)
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        pacing: Callable[[], PacerSnapshot] | None = None,
        stream: TextIO | None = None,
        log_every: float = 30.0,
    ) -> None:
        self.stats = stats
        self.pacing = pacing
        self.stream = stream or sys.stderr
        self.log_every = log_every
        self.live = self.stream.isatty()

    def line(self) -> str:
        """The current state in one line."""
        s = self.stats
        rate = s.rows_delivered / s.elapsed if s.elapsed > 0 else 0.0
        retries = sum(s.retries.values())
        line = (
            f"{s.rows_delivered:,} rows delivered, {s.rows_rejected:,} rejected, "
            f"{s.rows_skipped:,} already done, {retries:,} retries, {rate:,.0f} rows/s"
        )
        return line if self.pacing is None else f"{line}; {pacing_text(self.pacing())}"

    async def run(self) -> None:
        """Report until cancelled. A terminal that goes away ends the drawing, not the run."""
        try:
            while True:
                await anyio.sleep(0.5 if self.live else self.log_every)
                if self.live:
                    self._draw("\r\x1b[K" + self.line())
                else:
                    log.info("progress: %s", self.line())
        finally:
            if self.live:
                self._draw("\r\x1b[K")

    def _draw(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            # The terminal hung up (an ssh disconnect: EIO): the run winds down on the
            # SIGHUP that comes with it, and must not fail on the line it cannot draw.
            self.live = False


def pacing_text(p: PacerSnapshot) -> str:
    """The pacing state in words: rate, concurrency, in flight, 429s, a pause."""
    auto = " (auto)"
    rate = "no rate limit" if p.rate is None else f"rate {p.rate:,.1f} req/s"
    text = (
        f"{rate}{auto if p.rate_found else ''}, "
        f"concurrency {p.concurrency}{auto if p.concurrency_found else ''}, "
        f"{p.in_flight} in flight, {p.throttled:,} throttled (429)"
    )
    return text + (f", paused {p.paused:.1f}s" if p.paused > 0 else "")
