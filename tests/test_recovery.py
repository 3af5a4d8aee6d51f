"""Checkpoint recovery, as properties: whatever is left of a journal, nothing is silently lost.

The journals are real ones (``tests/journals.py`` writes them through the
``CheckpointJournal``), and each record is known with the lines it settles. The
properties compare what ``parse_journal`` and ``CheckpointJournal.open`` make
of a damaged journal (cut at any byte, garbage appended, another run's
fingerprint) with what its records say, in the terms a resume acts on:
``covered`` (never sent again) and ``in_flight`` (sent, maybe stored: flagged,
never silently resent, never silently skipped).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from journals import (
    DATASET,
    Input,
    Journal,
    RunPlan,
    Scenario,
    Step,
    as_version_1,
    built,
    covered_lines,
    garbage_line,
    run_once,
    run_plans,
    scenarios,
    whole_steps,
)

from ingest.checkpoint import CheckpointJournal, JournalState, fingerprint, parse_journal
from ingest.config import RunConfig
from ingest.errors import CheckpointError
from ingest.replay import JOURNAL_VERSION
from ingest.resume import open_checkpoint


def assert_recovers(state: JournalState, steps: list[Step], inp: Input) -> None:
    """``state`` covers exactly what ``steps`` settle, and flags every batch sent but unsettled."""
    expected = covered_lines(steps)
    lines = range(1, inp.lines + 2)
    got = {n for n in lines if state.covered.covers(n, n)}
    assert got - expected == set(), "covered (never sent again) but never delivered or rejected"
    assert expected - got == set(), "delivered or rejected, yet not covered: would be resent"
    flagged = {n for r in state.in_flight for n in range(r["lines"][0], r["lines"][1] + 1)}
    sent = {(s.record["seq"], s.record["part"]) for s in steps if s.record["t"] == "sending"}
    for step in steps:
        if step.record["t"] == "sending":
            first, last = step.record["lines"]
            open_lines = set(range(first, last + 1)) - expected
            assert open_lines <= flagged, f"sent, maybe stored, not flagged in flight: {step}"
    for r in state.in_flight:
        assert (r["seq"], r["part"]) in sent
        assert not set(range(r["lines"][0], r["lines"][1] + 1)) <= expected


# --- Properties ------------------------------------------------------------


@given(scenario=scenarios(), data=st.data())
def test_a_journal_cut_at_any_byte_resends_nothing_delivered_and_skips_nothing_undelivered(
    scenario: Scenario, data: st.DataObject
) -> None:
    """Cut anywhere after its header, a journal covers exactly the lines whose records survive."""
    with built(scenario) as journal:
        check_cuts(journal, data)


def check_cuts(journal: Journal, data: st.DataObject) -> None:
    ends = [i + 1 for i, b in enumerate(journal.data) if b == ord("\n")]
    # Cuts within a line are all alike (a torn write), so: every line's end, a byte
    # either side of it, and a few cuts anywhere.
    cuts = {k for e in ends for k in (e - 1, e, e + 1)}
    cuts |= set(data.draw(st.lists(st.integers(journal.header_end, len(journal.data)))))
    for k in sorted(c for c in cuts if journal.header_end <= c <= len(journal.data)):
        state, good = parse_journal(journal.data[:k], journal.path)
        assert good == journal.data[:k].rfind(b"\n") + 1
        assert_recovers(state, whole_steps(journal, k), journal.inp)


@given(scenario=scenarios(), data=st.data())
def test_opening_a_cut_journal_keeps_its_whole_lines_and_a_new_run_appends_cleanly(
    scenario: Scenario, data: st.DataObject
) -> None:
    """Open truncates a cut journal to whole lines; the next run's records then parse."""
    with built(scenario) as journal:
        check_reopen(journal, data)


def check_reopen(journal: Journal, data: st.DataObject) -> None:
    # A journal made by version 1 of the format gains an *identity* record on open.
    v1 = data.draw(st.booleans(), label="version-1 header")
    whole = as_version_1(journal.data) if v1 else journal.data
    header_end = whole.index(b"\n") + 1
    k = data.draw(st.integers(0, len(whole)), label="cut")
    with open(journal.path, "wb") as f:
        f.write(whole[:k])
    steps = [] if k < header_end else journal.steps[: whole[:k].count(b"\n") - 1]
    opened, state = CheckpointJournal.open(
        journal.path, journal.fp, rejects_path=journal.path + ".rej"
    )
    opened.release()
    assert state.fingerprint == journal.fp
    identity = orjson.dumps({"t": "identity", "input": journal.fp["input"]}) + b"\n"
    if k >= header_end:
        assert _read(journal.path) == whole[: whole[:k].rfind(b"\n") + 1] + identity * v1
    else:  # not even a header: a fresh journal, the cut one kept aside
        assert _read(journal.path) == journal.data[: journal.header_end]
        assert os.path.exists(journal.path + ".bak") == (k > 0)
    assert_recovers(state, steps, journal.inp)
    steps += run_once(journal.inp, journal.fp, journal.path, data.draw(run_plans, label="next"))
    with open(journal.path, "rb") as f:
        state, good = parse_journal(f.read(), journal.path)
    assert good == os.path.getsize(journal.path)
    assert state.fingerprint == journal.fp
    assert_recovers(state, steps, journal.inp)


def test_a_kill_between_a_present_record_and_the_resend_leaves_the_missing_rows_in_flight() -> None:
    """Killed after a look-up journaled rows 1 and 3 present, row 2 unsent: it is in flight."""
    scenario = Scenario(3, frozenset(), (RunPlan(("unknown_some_present",), batch_rows=3),))
    with built(scenario) as journal:
        state, _ = parse_journal(journal.data, journal.path)
        assert_recovers(state, journal.steps, journal.inp)
        assert [n for n in (1, 2, 3) if state.covered.covers(n, n)] == [1, 3]
        assert [r["lines"] for r in state.in_flight] == [[1, 3]]
        assert (state.delivered_rows, state.present_rows) == (2, 2)


# The spans of lines each kind of record settles (a new settling record goes here too).
SPANS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "done": lambda rec: [rec.get("lines")],
    "rejected": lambda rec: [[rec.get("line"), rec.get("line")]],
    "present": lambda rec: (
        [s[:2] if isinstance(s, list) else s for s in spans]
        if isinstance(spans := rec.get("spans"), list)
        else []
    ),
}


def recorded_by(line: bytes) -> set[int]:
    """The lines a garbage line names as delivered or rejected, if it parses as such a record."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return set()
    if not isinstance(rec, dict) or (spans := SPANS.get(str(rec.get("t")))) is None:
        return set()
    out: set[int] = set()
    for span in spans(rec):
        if not isinstance(span, list) or len(span) != 2:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in span):
            continue
        out |= set(range(max(span[0], 0), min(span[1], 1 << 10) + 1))
    return out


@given(
    scenario=scenarios(),
    garbage=st.lists(garbage_line(), min_size=1, max_size=4),
    ending=st.sampled_from([b"", b"\n"]),
)
@example(
    scenario=Scenario(3, frozenset(), (RunPlan(("done",)),)), garbage=[b"{}\r{}\rzz"], ending=b"\n"
).via("a carriage return is not a line break: the message names the file's own line")
def test_garbage_after_a_journal_is_refused_by_line_or_dropped_and_never_covers_a_line(
    scenario: Scenario, garbage: list[bytes], ending: bytes
) -> None:
    """Appended garbage is refused naming the file and line, or dropped if torn; never trusted."""
    with built(scenario) as journal:
        check_garbage(journal, b"\n".join(garbage) + ending)


def check_garbage(journal: Journal, tail: bytes) -> None:
    damaged = journal.data + tail
    whole = tail.split(b"\n")[:-1]  # the last piece has no newline: a torn write
    before = journal.data.count(b"\n")
    try:
        state, good = parse_journal(damaged, journal.path)
    except CheckpointError as exc:
        bad = next(
            i
            for i in range(len(whole))
            if not _parses(journal.data + b"".join(g + b"\n" for g in whole[: i + 1]))
        )
        assert f"{journal.path}:{before + bad + 1}: " in str(exc)
        # --restart is the way out the message gives: the damaged file kept, nothing covered.
        with open(journal.path, "wb") as f:
            f.write(damaged)
        opened, state = CheckpointJournal.open(
            journal.path, journal.fp, rejects_path=journal.path + ".rej", restart=True
        )
        opened.release()
        assert len(state.covered) == 0 and state.in_flight == []
        assert _read(journal.path + ".bak") == damaged
        return
    assert good == damaged.rfind(b"\n") + 1
    expected = covered_lines(journal.steps)
    allowed = expected.union(*(recorded_by(line) for line in whole))
    got = {n for n in range(1, journal.inp.lines + 2) if state.covered.covers(n, n)}
    assert expected <= got <= allowed


def _parses(data: bytes) -> bool:
    try:
        parse_journal(data, "j")
    except CheckpointError:
        return False
    return True


OTHER_RUNS = ["dataset", "version", "content", "mtime", "stdin"]


def other_fingerprint(journal: Journal, other: str) -> dict[str, Any]:
    """The fingerprint of a run that is not the journal's: another dataset, version or input."""
    if other == "dataset":
        return fingerprint(journal.inp.path, "another-ds", None)
    if other == "version":
        return fingerprint(journal.inp.path, DATASET, "v2")
    if other == "stdin":
        return fingerprint("-", DATASET, None)
    copy = os.path.join(journal.folder, f"{other}.jsonl")
    with open(journal.inp.path, "rb") as f:
        content = f.read()
    with open(copy, "wb") as f:
        f.write(content.replace(b"{", b"[", 1) if other == "content" else content)
    st_in = os.stat(journal.inp.path)
    os.utime(copy, ns=(st_in.st_atime_ns, st_in.st_mtime_ns + (other == "mtime") * 10**9))
    return fingerprint(copy, DATASET, None)


@given(scenario=scenarios(), other=st.sampled_from(OTHER_RUNS), restart=st.booleans())
def test_a_journal_of_another_run_is_refused_or_set_aside_whole(
    scenario: Scenario, other: str, restart: bool
) -> None:
    """Another run's journal is refused, or with --restart kept aside whole, covering nothing."""
    with built(scenario) as journal:
        check_other_run(journal, other, restart)


def check_other_run(journal: Journal, other: str, restart: bool) -> None:
    fp = other_fingerprint(journal, other)
    rejects = journal.path + ".rej"
    rejected_before = _read(rejects)
    if not restart:
        with pytest.raises(CheckpointError, match="this checkpoint is for .*--restart") as exc:
            CheckpointJournal.open(journal.path, fp, rejects_path=rejects)
        assert journal.path in str(exc.value)
        assert _read(journal.path) == journal.data
        assert not os.path.exists(journal.path + ".bak")
        assert _read(rejects) == rejected_before
        return
    opened, state = CheckpointJournal.open(journal.path, fp, rejects_path=rejects, restart=True)
    opened.release()
    assert _read(journal.path + ".bak") == journal.data
    assert len(state.covered) == 0 and state.in_flight == [] and state.fingerprint == fp
    assert (
        _read(journal.path)
        == orjson.dumps({"t": "header", "v": JOURNAL_VERSION, "fingerprint": fp}) + b"\n"
    )
    if rejected_before is not None:  # another run's rejects stay, but not as this run's
        assert _read(rejects) is None and _read(rejects + ".bak") == rejected_before


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


@given(scenario=scenarios(), same_content=st.booleans())
def test_a_renamed_input_resumes_its_own_journal_and_never_another_inputs(
    scenario: Scenario, same_content: bool
) -> None:
    """Under a new name an input resumes its journal whole; another input there finds none."""
    with built(scenario) as journal:
        before = RunConfig(input=journal.inp.path, dataset_id=DATASET)
        os.rename(journal.path, before.checkpoint_path)  # where a run keeps it by default
        renamed = os.path.join(journal.folder, "renamed.jsonl")
        if same_content:
            os.rename(journal.inp.path, renamed)  # `mv` keeps the content and its mtime
        else:
            with open(journal.inp.path, "rb") as f:
                content = f.read()
            with open(renamed, "wb") as f:
                f.write(content.replace(b"{", b"[", 1))
        config, opened, state = open_checkpoint(RunConfig(input=renamed, dataset_id=DATASET))
        opened.release()
        if same_content:
            assert_recovers(state, journal.steps, journal.inp)
            assert _read(config.checkpoint_path) == journal.data
            assert config.checkpoint_path.startswith(renamed + ".ingest-")
        else:
            assert len(state.covered) == 0 and state.in_flight == []
            assert _read(before.checkpoint_path) == journal.data
