"""Verify: reads a dataset back and checks that it holds each row of an input exactly once.

Takes the same config as a run; gives back a ``VerifyReport``: rows expected,
present once, missing, duplicated, and present with this input's key tag but
not one of its rows (``not_from_input``: a row since changed, say). With
``repair``, it deletes the extra copies of a row (keeping the earliest, as
settling does) and sends the missing rows, then reads the dataset again.

Expected rows are the input's rows as a run reads them (``JsonlSource`` with
the same keys), less the lines rejected: by the source itself, or by the
server, as the checkpoint's ``rejected`` records or the rejects file tell. The
expected keys are held in memory, about 150 bytes a row.

The dataset is read by one range search over this input's keys
(``<tag>-`` <= key < ``<tag>.``), checked against equality look-ups of the keys
it did not find; where the server refuses filters (or compares strings its own
way), by one read of the whole dataset, which also counts the examples of
other inputs and unkeyed ones (``other_rows``: never deleted, never unbalanced).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import anyio
import orjson

from ingest.batcher import Batch, Batcher
from ingest.caller import RetryingCaller, UnknownOutcome
from ingest.client import DatasetsClient
from ingest.config import API_KEY_ENV, RunConfig
from ingest.errors import ConfigError, UnbalancedError
from ingest.keys import RowKeys
from ingest.lookup import FilterRefused, Found, Lookup
from ingest.pacing import pacer_for
from ingest.preflight import preflight, refusal_message
from ingest.redact import RedactFilter
from ingest.replay import read_journal
from ingest.report import RunStats
from ingest.retry import Action, RetryPolicy, classify
from ingest.source import JsonlSource
from ingest.verify_report import SHOWN, RepairPlan, VerifyReport

log = logging.getLogger("ingest")

EXIT_BALANCED = 0
EXIT_UNBALANCED = UnbalancedError.exit_code
_CONFIRM = 200  # keys a range search missed that are looked up again one by one
_REPAIR_ROUNDS = 3  # repair, then read again: a late commit may still show up as a copy


@dataclass(slots=True)
class _Expected:
    """The input's rows as a run reads them: key -> line, for the rows expected."""

    keys: RowKeys | None = None
    lines: dict[str, int] = field(default_factory=dict)
    rejected_keys: set[str] = field(default_factory=set)  # rows the server refused
    rejected: int = 0


@dataclass(slots=True)
class _Tally:
    """One read of the dataset, against the expected rows."""

    found: Found  # expected key -> ids, earliest first
    foreign: list[str]  # ids of examples with this input's tag but no expected key
    other_rows: int | None
    read_by: str

    def missing(self, expected: _Expected) -> list[str]:
        return [k for k in expected.lines if k not in self.found]

    def extras(self) -> list[str]:
        return [i for ids in self.found.values() for i in ids[1:]]


async def verify(
    config: RunConfig | None = None,
    /,
    *,
    api_key: str | None = None,
    repair: bool = False,
    confirm: Callable[[RepairPlan], bool] | None = None,
    **settings: Any,
) -> VerifyReport:
    """Check that the dataset holds each row of the input once; with ``repair``, make it so.

    ``confirm`` is asked (in a thread) before a repair changes anything; without
    it a repair goes ahead. Raises an ``IngestError`` when the dataset cannot be read.

        report = await ingest.verify(input="rows.jsonl", dataset_id="RGF0YXNldDox")
    """
    if config is None:
        config = RunConfig.from_settings(settings)
    elif settings:
        config = config.replace(**settings)
    if config.key_field is None:
        raise ConfigError(
            "verify finds rows by their keys, and --no-key (no_key) uploads carry none: "
            "drop --no-key (rows uploaded without keys cannot be verified)"
        )
    if config.input == "-":
        raise ConfigError("verify reads the input twice: pass a file as --input, not stdin")
    key = (api_key or os.environ.get(API_KEY_ENV, "")).strip()
    if not key or not key.isascii() or not key.isprintable():
        raise ConfigError(f"set {API_KEY_ENV} to your Arize API key")
    redacting = RedactFilter(key)  # whatever a server echoes back, the key is never logged
    log.addFilter(redacting)
    try:
        return await _verify(config, key, repair, confirm)
    finally:
        log.removeFilter(redacting)


async def _verify(
    config: RunConfig, key: str, repair: bool, confirm: Callable[[RepairPlan], bool] | None
) -> VerifyReport:
    assert config.key_field is not None
    rejected_lines, known = await anyio.to_thread.run_sync(_rejected_lines, config)
    expected = await anyio.to_thread.run_sync(_read_expected, config, rejected_lines)
    async with aiohttp.ClientSession() as session:
        client = DatasetsClient(
            session,
            base_url=config.base_url,
            api_key=key,
            dataset_id=config.dataset_id,
            dataset_version_id=config.dataset_version_id,
            timeout=config.request_timeout,
        )
        policy = RetryPolicy(
            max_attempts=config.max_attempts,
            max_seconds=config.max_retry_seconds,
            base=config.backoff_base,
            cap=config.backoff_max,
        )
        caller = RetryingCaller(
            policy=policy,
            stats=RunStats(),
            describe=lambda action, reply: refusal_message(action, reply, config),
            # One request at a time: verify reads and repairs in order.
            pacer=pacer_for(rate=config.rate, concurrency=1, policy=policy),
            base_url=config.base_url,
        )
        version = await preflight(caller.call, client, config)
        lookup = Lookup(
            call=caller.call, client=client, key_field=config.key_field, version=version
        )
        tally = await _read_dataset(lookup, expected)
        outcome, deleted, sent = "", 0, 0
        if repair and (tally.extras() or tally.missing(expected)):
            plan = _plan(tally, expected)
            if confirm is not None and not await anyio.to_thread.run_sync(confirm, plan):
                outcome = "declined"
            else:
                tally, deleted, sent = await _repair(
                    tally, expected, lookup, client, caller, config
                )
                balanced = not (tally.extras() or tally.missing(expected))
                outcome = "done" if balanced else "incomplete"
    return _report(expected, tally, known, lookup.examples_read, outcome, deleted, sent)


def _rejected_lines(config: RunConfig) -> tuple[set[int], bool]:
    """Lines rejected by earlier runs, from the checkpoint and the rejects file; and whether
    either was there to tell."""
    if not os.path.isfile(config.input):
        raise ConfigError(f"{config.input}: input file not found")
    lines: set[int] = set()
    known = False
    path = config.checkpoint_path
    if os.path.exists(path):
        state = read_journal(path)  # a corrupt or foreign journal is refused here
        dataset = (state.fingerprint or {}).get("dataset_id")
        if dataset == config.dataset_id:
            known = True
            lines |= _lines_of(path, "rejected")
        else:
            log.warning("%s is the checkpoint of another dataset: its rejects are ignored", path)
    if os.path.exists(config.rejects_path):
        known = True
        lines |= _lines_of(config.rejects_path, None)
    return lines, known


def _lines_of(path: str, kind: str | None) -> set[int]:
    """The ``line`` of each JSON line of ``path`` (of records ``t == kind``, if given)."""
    lines: set[int] = set()
    with open(path, "rb") as f:
        for text in f:
            try:
                rec = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the journal drops it too
            if not isinstance(rec, dict) or (kind is not None and rec.get("t") != kind):
                continue
            if isinstance(line := rec.get("line"), int):
                lines.add(line)
    return lines


def _read_expected(config: RunConfig, rejected_lines: set[int]) -> _Expected:
    """Read the input as a run does: the keys of the rows the dataset should hold."""
    expected = _Expected()
    with JsonlSource(
        config.input, max_row_bytes=config.batch_bytes, key_field=config.key_field
    ) as source:
        while chunk := source.read_chunk():
            expected.rejected += len(chunk.rejects)
            for key, line in zip(chunk.keys, chunk.lines, strict=True):
                if line in rejected_lines:
                    expected.rejected += 1
                    expected.rejected_keys.add(key)
                else:
                    expected.lines[key] = line
        expected.keys = source.keys
    return expected


async def _send_missing(
    config: RunConfig, missing: set[str], client: DatasetsClient, caller: RetryingCaller
) -> int:
    """Read the input again and send its missing rows (keyed as a run sends them), batch by
    batch as they fill, so memory holds one batch; how many rows the server took."""
    batcher = Batcher(batch_rows=config.batch_rows, batch_bytes=config.batch_bytes)
    sent = 0
    source = JsonlSource(config.input, max_row_bytes=config.batch_bytes, key_field=config.key_field)
    try:
        while chunk := await anyio.to_thread.run_sync(source.read_chunk):
            picked = [i for i, key in enumerate(chunk.keys) if key in missing]
            for batch in batcher.extend(
                [chunk.rows[i] for i in picked],
                [chunk.lines[i] for i in picked],
                [chunk.ends[i] for i in picked],
                [chunk.starts[i] for i in picked],
                [chunk.keys[i] for i in picked],
            ):
                sent += await _send(batch, client, caller)
    finally:
        source.close()
    if (last := batcher.flush()) is not None:
        sent += await _send(last, client, caller)
    return sent


async def _read_dataset(lookup: Lookup, expected: _Expected) -> _Tally:
    """Where each expected key is stored: by one range search where it can be trusted."""
    if expected.keys is None:  # an empty input: nothing of it can be stored
        return _Tally({}, [], None, "nothing read")
    tag = expected.keys.tag
    lo, hi = f"{tag}-", f"{tag}."  # "." follows "-": every key of this input, in one range
    if lookup.mode != "scan":
        try:
            found = await lookup.between(lo, hi)
        except FilterRefused:
            log.info("the server refuses search filters: reading the whole dataset")
            lookup.mode = "scan"
        else:
            if all(lo <= k < hi for k in found) and await _misses_nothing(
                lookup, expected, found, lo, hi
            ):
                return _split(found, expected, lo, None, "range search")
            log.info("the server's range search misses rows: reading the whole dataset")
            lookup.mode = "scan"
    before = lookup.examples_read
    found = await lookup.scan(lambda _key: True)
    mine = {k: ids for k, ids in found.items() if k.startswith(lo)}
    other = lookup.examples_read - before - sum(map(len, mine.values()))
    return _split(mine, expected, lo, other, "whole dataset")


async def _misses_nothing(
    lookup: Lookup, expected: _Expected, found: Found, lo: str, hi: str
) -> bool:
    """Whether equality look-ups (documented) of keys the range missed find none of them.

    A repair must not send a row the range search missed only because the server
    compares strings its own way: that would store it twice.
    """
    unseen = tuple(k for k in expected.lines if k not in found)[:_CONFIRM]
    if not unseen:
        return True
    again = await lookup.keys(unseen, lo, hi)
    if again is None:  # equality refused: the range cannot be checked
        return False
    return not again


def _split(found: Found, expected: _Expected, lo: str, other: int | None, how: str) -> _Tally:
    mine: Found = {}
    foreign: list[str] = []
    for key, ids in found.items():
        if key in expected.lines:
            mine[key] = ids
        elif key not in expected.rejected_keys:  # a rejected row stored after all is left be
            foreign += ids
    return _Tally(mine, foreign, other, how)


def _plan(tally: _Tally, expected: _Expected) -> RepairPlan:
    extras = tally.extras()
    missing = sorted(expected.lines[k] for k in tally.missing(expected))
    return RepairPlan(
        delete=len(extras),
        delete_ids=tuple(extras[:SHOWN]),
        send=len(missing),
        send_lines=tuple(missing[:SHOWN]),
    )


async def _repair(
    tally: _Tally,
    expected: _Expected,
    lookup: Lookup,
    client: DatasetsClient,
    caller: RetryingCaller,
    config: RunConfig,
) -> tuple[_Tally, int, int]:
    """Delete extra copies and send missing rows, then read again; a few rounds at most.

    A send whose outcome is unknown is not sent again blindly: the next read finds
    whether it was stored, and a copy a late commit leaves is deleted the next round.
    """
    deleted = sent = 0
    for _ in range(_REPAIR_ROUNDS):
        extras, missing = tally.extras(), set(tally.missing(expected))
        if not extras and not missing:
            break
        deleted += await lookup.delete(extras)
        if missing:
            sent += await _send_missing(config, missing, client, caller)
            await caller.wait(config.settle_lag)  # a commit may take a moment to show
        tally = await _read_dataset(lookup, expected)
    return tally, deleted, sent


async def _send(batch: Batch, client: DatasetsClient, caller: RetryingCaller) -> int:
    """Send one batch of missing rows; how many the server took (0 when unknown or refused)."""
    what = f"a repair send of {len(batch.rows)} missing rows"
    try:
        reply = await caller.call(partial(client.append, batch.body()), what, settle_unknown=True)
    except UnknownOutcome as exc:
        log.warning("%s: outcome unknown (%s); the next read tells", what, exc.cause)
        return 0
    if classify(reply.status) is not Action.DELIVERED:
        log.warning("%s: refused (%s); these rows stay missing", what, reply.problem())
        return 0
    return len(batch.rows)


def _report(
    expected: _Expected,
    tally: _Tally,
    known: bool,
    examples_read: int,
    repair: str,
    deleted: int,
    sent: int,
) -> VerifyReport:
    missing = sorted(expected.lines[k] for k in tally.missing(expected))
    twice = sorted(expected.lines[k] for k, ids in tally.found.items() if len(ids) > 1)
    extra = len(tally.extras())
    balanced = not missing and not extra and not tally.foreign
    notes = []
    if not known:
        notes.append(
            "no checkpoint or rejects file was found: rows the server rejected cannot be told "
            "apart, and count as missing"
        )
    if tally.foreign:
        notes.append(
            f"{len(tally.foreign):,} examples carry this input's key tag but match none of its "
            "rows (a row changed since it was sent?); --repair never deletes them"
        )
    if repair == "declined":
        notes.append("repair declined: nothing was changed")
    elif not balanced and not repair:
        notes.append("re-run with --repair to delete the extra copies and send the missing rows")
    return VerifyReport(
        expected=len(expected.lines),
        present_once=sum(1 for ids in tally.found.values() if len(ids) == 1),
        missing=len(missing),
        duplicated=len(twice),
        extra_copies=extra,
        not_from_input=len(tally.foreign),
        other_rows=tally.other_rows,
        rejected=expected.rejected,
        rejects_known=known,
        examples_read=examples_read,
        read_by=tally.read_by,
        missing_lines=tuple(missing[:SHOWN]),
        duplicated_lines=tuple(twice[:SHOWN]),
        not_from_input_ids=tuple(tally.foreign[:SHOWN]),
        deleted=deleted,
        sent=sent,
        repair=repair,
        balanced=balanced,
        exit_code=EXIT_BALANCED if balanced else EXIT_UNBALANCED,
        message="\n".join(notes),
    )
