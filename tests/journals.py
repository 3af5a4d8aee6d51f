"""Journals as the real sender writes them, for property tests of checkpoint recovery.

A ``Scenario`` is an input (rows, and lines the reader rejects) and the runs
that upload it: each run resumes from what the journal says, batches the lines
not yet dealt with, and meets an outcome per batch (done, unknown, halved after
a refusal, rejected, left in flight, or with row keys: looked up after an unknown
outcome, some rows or all found present and the rest sent again as part ``+"r"``)
while several workers interleave their records; a run whose outcomes run out was
killed. ``build`` writes it all through the real ``CheckpointJournal`` and keeps,
for every record, the lines it settles.
A new outcome or record is one entry in ``OUTCOMES`` (a record also gets a sample
in ``TEMPLATES``, and in test_recovery's ``SPANS`` if it settles lines).
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from hypothesis import strategies as st

from ingest.checkpoint import CheckpointJournal, JournalState, fingerprint
from ingest.rows import Reject

DATASET = "ds"


# --- The input -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Input:
    """A JSONL file on disk: which lines are rows, and where each line's bytes lie."""

    path: str
    rows: frozenset[int]
    starts: tuple[int, ...]  # by line number; index 0 unused
    ends: tuple[int, ...]

    @property
    def lines(self) -> int:
        return len(self.starts) - 1


def write_input(folder: str, lines: int, bad: frozenset[int]) -> Input:
    """An input of ``lines`` lines, those in ``bad`` not JSON (the reader rejects them)."""
    starts, ends, data = [0], [0], b""
    for n in range(1, lines + 1):
        starts.append(len(data))
        data += b"not json\n" if n in bad else orjson.dumps({"n": n}) + b"\n"
        ends.append(len(data))
    path = os.path.join(folder, "in.jsonl")
    with open(path, "wb") as f:
        f.write(data)
    rows = frozenset(range(1, lines + 1)) - bad
    return Input(path, rows, tuple(starts), tuple(ends))


# --- What the sender writes ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One journal record as the run writes it, and the spans of lines it settles."""

    record: dict[str, Any]
    settles: tuple[tuple[int, int], ...] = ()
    reject: Reject | None = None  # written with ``journal.reject``, so the rejects file has it
    durable: bool = False


@dataclass(frozen=True, slots=True)
class Piece:
    """A batch, or a half of one after a refusal: ``ingest.batcher.Batch`` without its rows."""

    seq: int
    part: str
    first_line: int
    lines: tuple[int, ...]  # the lines of its rows
    tail: int | None = None  # as Batch.tail: the last line, past its last row (Batch.only)

    @property
    def last(self) -> int:
        return self.lines[-1] if self.tail is None else self.tail

    def span(self, inp: Input) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "part": self.part,
            "lines": [self.first_line, self.last],
            "bytes": [inp.starts[self.first_line], inp.ends[self.last]],
        }

    def halves(self) -> tuple[Piece, Piece]:
        mid = len(self.lines) // 2
        second = self.lines[mid - 1] + 1  # as Batch.split: the halves tile the whole's lines
        return (
            Piece(self.seq, self.part + "0", self.first_line, self.lines[:mid]),
            Piece(self.seq, self.part + "1", second, self.lines[mid:], self.tail),
        )


class Tokens:
    """The outcomes a run's batches (and halves) meet, in order; when they run out, a kill."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self._it = iter(tokens)
        self.killed = False

    def next(self) -> str | None:
        token = next(self._it, None)
        self.killed = self.killed or token is None
        return token


def sending(p: Piece, inp: Input) -> Step:
    return Step({"t": "sending", **p.span(inp), "rows": len(p.lines)}, durable=True)


def done(p: Piece, inp: Input, rows: int) -> Step:
    ids = [f"e{p.seq}.{p.part}.{i}" for i in range(rows)]
    record = {"t": "done", **p.span(inp), "rows": rows, "example_ids": ids}
    return Step(record, settles=((p.first_line, p.last),))


def unknown(p: Piece) -> Step:
    return Step({"t": "unknown", "seq": p.seq, "part": p.part, "cause": "HTTP 503"})


def rejected(line: int, inp: Input, reason: str) -> Step:
    item = Reject(line, inp.starts[line], inp.ends[line], reason, b"x")
    record = {"t": "rejected", "line": line, "bytes": [item.start, item.end], "reason": reason}
    return Step(record, settles=((line, line),), reject=item)


def refused(p: Piece, inp: Input, tokens: Tokens) -> list[Step]:
    """A 4xx for the rows: halved while it has more than one, else rejected (Sender.deliver)."""
    if len(p.lines) == 1:
        reject = rejected(p.lines[0], inp, "refused by the server: HTTP 400")
        return [reject, done(p, inp, 0)]
    steps = [Step({"t": "split", "seq": p.seq, "part": p.part})]
    for half in p.halves():
        if (token := tokens.next()) is None:
            break  # killed between the halves
        steps += deliver(half, inp, token, tokens)
    return steps


def present(p: Piece, inp: Input, lines: tuple[int, ...]) -> Step:
    """Rows a look-up found stored (Settler._present): the whole piece, or row by row."""
    if lines == p.lines:
        spans = [(p.first_line, p.last)]
        wide = [[p.first_line, p.last, inp.starts[p.first_line], inp.ends[p.last]]]
    else:
        spans = [(n, n) for n in lines]
        wide = [[n, n, inp.starts[n], inp.ends[n]] for n in lines]
    record = {"t": "present", "seq": p.seq, "part": p.part, "spans": wide, "rows": len(lines)}
    return Step(record, settles=tuple(spans))


def deleted(p: Piece) -> Step:
    """Extra copies of the piece's rows deleted (Settler._drop_extras): settles nothing."""
    return Step({"t": "deleted", "seq": p.seq, "part": p.part, "ids": [f"x{p.seq}.{p.part}"]})


def looked_up(p: Piece, inp: Input, tokens: Tokens) -> list[Step]:
    """An unknown outcome looked up: every other row found present (none of a one-row
    piece), and the missing ones sent again as ``part + "r"`` covering the whole piece's
    lines (Batch.only), to meet an outcome of their own, or a kill before they go."""
    found = p.lines[::2] if len(p.lines) > 1 else ()
    steps = [unknown(p)] + ([present(p, inp, found)] if found else [])
    missing = tuple(n for n in p.lines if n not in found)
    rest = Piece(p.seq, p.part + "r", p.first_line, missing, p.last)
    if (token := tokens.next()) is None:
        return steps  # killed between the present record and the missing rows' send
    return steps + deliver(rest, inp, token, tokens)


# What can happen to a batch after its *sending* record, as the sender journals it.
# A new outcome is one more entry (and its records' ``Step.settles``, if they settle lines).
OUTCOMES: dict[str, Callable[[Piece, Input, Tokens], list[Step]]] = {
    "done": lambda p, inp, _: [done(p, inp, len(p.lines))],
    "unknown_then_done": lambda p, inp, _: [unknown(p), done(p, inp, len(p.lines))],
    "unknown": lambda p, _inp, _: [unknown(p)],  # retries ran out, or a kill while retrying
    "in_flight": lambda _p, _inp, _: [],  # killed with the request out
    "refused": refused,
    "unknown_then_refused": lambda p, inp, t: [unknown(p), *refused(p, inp, t)],
    "unknown_some_present": looked_up,
    "unknown_all_present": lambda p, inp, _: [unknown(p), deleted(p), present(p, inp, p.lines)],
}


def deliver(p: Piece, inp: Input, token: str, tokens: Tokens) -> list[Step]:
    return [sending(p, inp), *OUTCOMES[token](p, inp, tokens)]


# --- A run -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPlan:
    """One run: the outcomes its batches meet, its batch size, its workers' interleaving."""

    tokens: tuple[str, ...]
    batch_rows: int = 3
    workers: int = 2
    seed: int = 0


def plan_steps(inp: Input, plan: RunPlan, state: JournalState) -> list[Step]:
    """The records a run resuming from ``state`` writes, in the order its workers write them."""
    in_flight = [[r["seq"], r["part"], *r["lines"]] for r in state.in_flight]
    start = {"t": "start", "pid": 1, "batch_rows": plan.batch_rows, "resent_in_flight": in_flight}
    tokens, skip = Tokens(plan.tokens), state.covered.skipper()
    # Each job is a batch's records, or a line the reader rejected; jobs start in
    # input order and up to ``workers`` of them are under way at once.
    jobs: list[list[Step]] = []
    seq, rows, last_row = state.next_seq, [], max(inp.rows)
    for line in range(1, inp.lines + 1):
        if tokens.killed:
            break
        if skip(line):
            continue
        if line not in inp.rows:
            jobs.append([rejected(line, inp, "not JSON")])
            continue
        rows.append(line)
        if len(rows) == plan.batch_rows or line == last_row:
            if (token := tokens.next()) is None:
                break
            jobs.append(deliver(Piece(seq, "", rows[0], tuple(rows)), inp, token, tokens))
            seq, rows = seq + 1, []
    steps = [Step(start, durable=True), *interleave(jobs, plan.workers, random.Random(plan.seed))]
    settled = set(covered_lines(steps)) | {n for n in range(1, inp.lines + 1) if skip(n)}
    if settled >= set(range(1, inp.lines + 1)):
        steps.append(Step({"t": "finished", "exit_code": 0}, durable=True))
    return steps


def interleave(jobs: list[list[Step]], workers: int, rnd: random.Random) -> list[Step]:
    """The jobs' records merged as concurrent workers write them: each job's in its order."""
    out: list[Step] = []
    waiting, running = list(reversed(jobs)), []
    while waiting or running:
        while waiting and len(running) < workers:
            running.append(iter(waiting.pop()))
        job = rnd.choice(running)
        if (step := next(job, None)) is None:
            running.remove(job)
        else:
            out.append(step)
    return out


def run_once(inp: Input, fp: dict[str, Any], path: str, plan: RunPlan) -> list[Step]:
    """Open the journal as a run does, write the run's records through it, close it."""
    journal, state = CheckpointJournal.open(path, fp, rejects_path=path + ".rej")
    try:
        steps = plan_steps(inp, plan, state)
        anyio.run(write_steps, journal, steps, backend="asyncio")
    finally:
        journal.release()
    return steps


async def write_steps(journal: CheckpointJournal, steps: list[Step]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(journal.run)
        for step in steps:
            if step.reject is not None:
                await journal.reject(step.reject, durable=step.durable)
            else:
                await journal.write(step.record, durable=step.durable)
        journal.close()


# --- The journal and what its records say ----------------------------------


@dataclass(frozen=True, slots=True)
class Journal:
    """A journal written by runs, with the steps behind each of its lines after the header."""

    folder: str
    inp: Input
    fp: dict[str, Any]
    data: bytes
    steps: list[Step]

    @property
    def path(self) -> str:
        return checkpoint_path(self.folder)

    @property
    def header_end(self) -> int:
        return self.data.index(b"\n") + 1


def covered_lines(steps: list[Step]) -> set[int]:
    """The lines the steps' records settle: delivered or rejected."""
    out: set[int] = set()
    for step in steps:
        for first, last in step.settles:
            out.update(range(first, last + 1))
    return out


def whole_steps(journal: Journal, k: int) -> list[Step]:
    """The steps whose records (newline included) lie wholly in the first ``k`` bytes."""
    return journal.steps[: journal.data[:k].count(b"\n") - 1]


# --- Strategies ------------------------------------------------------------

run_plans = st.builds(
    RunPlan,
    tokens=st.lists(st.sampled_from(sorted(OUTCOMES)), max_size=10).map(tuple),
    batch_rows=st.integers(1, 5),
    workers=st.integers(1, 4),
    seed=st.integers(0, 1 << 16),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """An input and the runs that journal its upload."""

    lines: int
    bad: frozenset[int]
    runs: tuple[RunPlan, ...]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    lines = draw(st.integers(1, 20))
    bad = draw(st.frozensets(st.integers(1, lines), max_size=lines // 3))
    runs = draw(st.lists(run_plans, min_size=1, max_size=3))
    return Scenario(lines, bad, tuple(runs))


def checkpoint_path(folder: str) -> str:
    return os.path.join(folder, "in.jsonl.ckpt")


def build(folder: str, scenario: Scenario) -> Journal:
    """Write the scenario's input, then its runs' journal through the real writer."""
    inp = write_input(folder, scenario.lines, scenario.bad)
    fp, path, steps = fingerprint(inp.path, DATASET, None), checkpoint_path(folder), []
    for plan in scenario.runs:
        steps += run_once(inp, fp, path, plan)
    with open(path, "rb") as f:
        data = f.read()
    written = [orjson.loads(line)["t"] for line in data.splitlines()[1:]]
    assert written == [s.record["t"] for s in steps], "the writer kept the order"
    return Journal(folder, inp, fp, data, steps)


@contextmanager
def built(scenario: Scenario) -> Iterator[Journal]:
    """The scenario's journal, in a folder of its own for the length of the block."""
    with tempfile.TemporaryDirectory(prefix="recovery-") as folder:
        yield build(folder, scenario)


def as_version_1(data: bytes) -> bytes:
    """The journal with the header version 1 wrote: the input's size and edges only."""
    first, rest = data.split(b"\n", 1)
    header = orjson.loads(first)
    known = {k: header["fingerprint"]["input"][k] for k in ("size", "head_sha256", "tail_sha256")}
    header = {**header, "v": 1, "fingerprint": {**header["fingerprint"], "input": known}}
    return orjson.dumps(header) + b"\n" + rest


def _json_values() -> st.SearchStrategy[Any]:
    """JSON values two levels deep (orjson's integers are 64-bit)."""
    scalars = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1) | st.text()
    nested = st.lists(scalars, max_size=3) | st.dictionaries(st.text(), scalars, max_size=3)
    return scalars | nested | st.lists(nested, max_size=2)


# One record of each kind the writer writes, for garbage to damage.
TEMPLATES: list[dict[str, Any]] = [
    {"t": "start", "pid": 1, "batch_rows": 3, "resent_in_flight": [[0, "", 1, 3]]},
    {"t": "sending", "seq": 0, "part": "", "lines": [1, 3], "bytes": [0, 30], "rows": 3},
    {"t": "unknown", "seq": 0, "part": "", "cause": "HTTP 503"},
    {"t": "split", "seq": 0, "part": ""},
    {
        "t": "done",
        "seq": 0,
        "part": "0",
        "lines": [1, 2],
        "bytes": [0, 20],
        "rows": 2,
        "example_ids": ["a", "b"],
    },
    {"t": "rejected", "line": 2, "bytes": [10, 20], "reason": "not JSON"},
    {"t": "present", "seq": 0, "part": "", "spans": [[1, 1, 0, 10], [3, 3, 20, 30]], "rows": 2},
    {"t": "deleted", "seq": 0, "part": "", "ids": ["a"]},
    {"t": "finished", "exit_code": 0},
]


@st.composite
def garbage_line(draw: st.DrawFn) -> bytes:
    """Bytes a crash, a disk or a hand edit could leave: noise, JSON, or a damaged record."""
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "torn"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40))
    if kind == "json":
        return orjson.dumps(draw(_json_values()))
    record = dict(draw(st.sampled_from(TEMPLATES)))
    if kind == "torn":
        raw = orjson.dumps(record)
        return raw[: draw(st.integers(0, len(raw) - 1))]
    key = draw(st.sampled_from(sorted(record)))
    if draw(st.booleans()):
        del record[key]
    else:
        record[key] = draw(_json_values())
    return orjson.dumps(record)
