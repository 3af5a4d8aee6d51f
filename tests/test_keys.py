"""Row keys: stable, spliced into the row's own bytes, selectable by range; natural keys."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import settings, upload_then_stop, write_rows

import ingest
from ingest.keys import RowKeys, input_tag
from ingest.source import JsonlSource


def keys_of(path: Path, **kw: Any) -> list[str]:
    source = JsonlSource(str(path), max_row_bytes=1 << 20, key_field="ingest_key", **kw)
    out: list[str] = []
    while chunk := source.read_chunk():
        out += chunk.keys
    source.close()
    return out


def test_keys_survive_a_rename_compression_and_growth(tmp_path: Path) -> None:
    """The same rows get the same keys moved, gzipped, or with more rows appended after them."""
    write_rows(tmp_path / "a.jsonl", 50)
    keys = keys_of(tmp_path / "a.jsonl")
    assert len(set(keys)) == 50
    shutil.copy(tmp_path / "a.jsonl", tmp_path / "moved.jsonl")
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write((tmp_path / "a.jsonl").read_bytes())
    grown = tmp_path / "grown.jsonl"
    grown.write_bytes((tmp_path / "a.jsonl").read_bytes() + b'{"i": 50}\n')
    assert keys_of(tmp_path / "moved.jsonl") == keys
    assert keys_of(tmp_path / "a.jsonl.gz") == keys
    assert keys_of(grown)[:50] == keys


def test_another_input_with_the_same_first_line_keys_its_other_rows_apart(
    tmp_path: Path,
) -> None:
    """Two inputs sharing a first line share only the keys of identical rows at one line."""
    (tmp_path / "a.jsonl").write_bytes(b'{"h": 1}\n{"x": 1}\n{"y": 2}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"h": 1}\n{"x": 9}\n{"y": 2}\n')
    a, b = keys_of(tmp_path / "a.jsonl"), keys_of(tmp_path / "b.jsonl")
    assert a[0] == b[0] and a[1] != b[1] and a[2] == b[2]


def test_a_resumed_read_keys_rows_as_a_whole_read_does(tmp_path: Path) -> None:
    """Seeking past a done prefix (plain or gzip) still takes the tag from line 1."""
    lines = write_rows(tmp_path / "a.jsonl", 20)
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write((tmp_path / "a.jsonl").read_bytes())
    whole = keys_of(tmp_path / "a.jsonl")
    offset = sum(len(line) + 1 for line in lines[:10])
    assert keys_of(tmp_path / "a.jsonl", start_line=11, start_offset=offset) == whole[10:]
    assert keys_of(tmp_path / "a.jsonl.gz", start_line=11, start_offset=offset) == whole[10:]


def test_a_batch_keys_are_exactly_one_range() -> None:
    """bounds(a, b) holds the keys of lines a..b and no key of a line outside them."""
    keys = RowKeys(field="ingest_key", tag=input_tag(b'{"a": 1}'))
    made = {line: keys.key(line, b'{"r": %d}' % line) for line in range(1, 2000)}
    lo, hi = keys.bounds(100, 1099)
    inside = {line for line, key in made.items() if lo <= key < hi}
    assert inside == set(range(100, 1100))
    assert RowKeys.parse(made[7]) is not None and RowKeys.parse(made[7]).line == 7  # type: ignore[union-attr]


def test_splicing_keeps_every_byte_of_the_row() -> None:
    """The key goes first; the rest of the row is its own bytes, and unsplicing restores it."""
    keys = RowKeys(field="ingest_key", tag="0a0b0c0d")
    raw = b'{"n": 12345678901234567890123, "s": "\\u00e9", "f": 1.0}'
    key = keys.key(3, raw)
    row = keys.splice(raw, key)
    assert row.endswith(raw[1:]) and orjson.loads(row)["ingest_key"] == key
    assert keys.unspliced(row, key) == raw


async def test_no_key_adds_no_field_and_a_key_field_row_is_rejected(
    fake: Any, tmp_path: Path
) -> None:
    """--no-key sends rows as written; with keys, a row already holding the field is rejected."""
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 0}\n{"i": 1, "ingest_key": "mine"}\n')
    keyed = await ingest.upload(api_key=fake.api_key, **settings(fake, tmp_path))
    assert (keyed.rows_delivered, keyed.rows_rejected) == (1, 1)
    rejects = (tmp_path / "rows.jsonl").parent.glob("*.rejects.jsonl")
    assert any("--key-field-name" in p.read_text() for p in rejects)
    (tmp_path / "plain.jsonl").write_bytes(b'{"i": 5}\n')
    plain = await ingest.upload(
        api_key=fake.api_key,
        **settings(fake, tmp_path, input=str(tmp_path / "plain.jsonl"), no_key=True),
    )
    assert plain.rows_delivered == 1
    stored = [e for e in fake.state.examples(fake.dataset_id) if e["i"] == 5]
    assert len(stored) == 1 and "ingest_key" not in stored[0]


async def test_key_from_uses_the_rows_own_field_and_rejects_missing_or_repeated(
    fake: Any, tmp_path: Path
) -> None:
    """--key-from: rows keep their bytes; a row without the field or repeating one is rejected."""
    rows = [orjson.dumps({"uid": f"u{i}", "i": i}) for i in range(300)]
    rows += [b'{"i": 300}', b'{"uid": "u7", "i": 301}', b'{"uid": 7, "i": 302}']
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    fake.state.faults.fail_after_commit_rate = 0.3
    fake.state.faults.seed = 11
    rejects = tmp_path / "rejects.jsonl"
    summary = await ingest.upload(
        api_key=fake.api_key,
        **settings(fake, tmp_path, key_from="uid", batch_rows=20, rejects=str(rejects)),
    )
    assert (summary.exit_code, summary.rows_delivered, summary.rows_rejected) == (6, 301, 2)
    assert summary.rows_present > 0  # commits hidden by 503s were found, not resent
    reasons = {e["line"]: e["reason"] for e in map(orjson.loads, rejects.read_bytes().splitlines())}
    assert "must be a non-empty string or an integer" in reasons[301]
    assert 'repeats the --key-from value "u7" of line 8' in reasons[302]
    stored = fake.state.examples(fake.dataset_id)
    assert sorted(e["i"] for e in stored) == [*range(300), 302]  # the integer 7 is not "u7"
    assert all("ingest_key" not in e for e in stored)


async def test_key_from_sees_a_repeat_of_a_value_an_earlier_run_delivered(
    fake: Any, tmp_path: Path
) -> None:
    """A resumed --key-from run reads the done lines for their keys: a later repeat is refused."""
    rows = [orjson.dumps({"uid": i}) for i in range(30_000)]
    rows[25_000] = b'{"uid": 3}'  # repeats line 4; past what the first run reads ahead
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    run = settings(fake, tmp_path, key_from="uid", batch_rows=500, concurrency=1)
    first = await upload_then_stop(fake, 100, 0.02, **run)
    assert (first.exit_code, first.rows_rejected) == (130, 0)
    again = await ingest.upload(api_key=fake.api_key, **run)
    assert (again.exit_code, again.rows_rejected) == (6, 1)
    assert sorted(e["uid"] for e in fake.state.examples(fake.dataset_id)) == sorted(
        {orjson.loads(r)["uid"] for r in rows}
    )


async def test_a_grown_input_resumes_and_sends_only_its_new_lines(
    fake: Any, tmp_path: Path
) -> None:
    """A daily-appended file re-run after it grew sends only the added lines, each once."""
    path = tmp_path / "rows.jsonl"
    write_rows(path, 500)
    run = settings(fake, tmp_path, checkpoint=str(tmp_path / "run.ckpt"))
    assert (await ingest.upload(api_key=fake.api_key, **run)).exit_code == 0
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(500, 800)))
    grown = await ingest.upload(api_key=fake.api_key, **run)
    assert (grown.status, grown.rows_skipped, grown.rows_delivered) == ("complete", 500, 300)
    stored = sorted(e["i"] for e in fake.state.examples(fake.dataset_id))
    assert stored == list(range(800))
    again = await ingest.upload(api_key=fake.api_key, **run)
    assert again.status == "already-complete"


async def test_an_input_changed_other_than_by_growing_is_still_refused(
    fake: Any, tmp_path: Path
) -> None:
    """Lines added after an edit of the old part, or after a cut last line, are another input."""
    path = tmp_path / "rows.jsonl"
    write_rows(path, 100)
    run = settings(fake, tmp_path, checkpoint=str(tmp_path / "run.ckpt"))
    assert (await ingest.upload(api_key=fake.api_key, **run)).exit_code == 0
    data = path.read_bytes()
    edited = data.replace(b'"i":5,', b'"i":6,', 1)
    assert edited != data
    path.write_bytes(edited + b'{"i": 100}\n')
    with pytest.raises(ingest.CheckpointError, match="--restart"):
        await ingest.upload(api_key=fake.api_key, **run)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b'{"i": 1}\n{"i": 2}')  # no newline at its end
    run2 = settings(fake, tmp_path, input=str(cut), checkpoint=str(tmp_path / "cut.ckpt"))
    assert (await ingest.upload(api_key=fake.api_key, **run2)).exit_code == 0
    cut.write_bytes(b'{"i": 1}\n{"i": 2, "more": true}\n')
    with pytest.raises(ingest.CheckpointError, match="--restart"):
        await ingest.upload(api_key=fake.api_key, **run2)


async def test_a_resume_by_another_key_field_than_the_batches_in_flight_is_refused(
    fake: Any, tmp_path: Path
) -> None:
    """Batches left in flight are looked up by the field they were keyed by, or not at all."""
    write_rows(tmp_path / "rows.jsonl", 200)
    run = settings(fake, tmp_path, checkpoint=str(tmp_path / "run.ckpt"), max_attempts=1)
    fake.state.faults.fail_rate = 1.0
    with pytest.raises(ingest.RetriesExhaustedError):
        await ingest.upload(api_key=fake.api_key, **run)
    fake.state.faults.fail_rate = 0.0
    with pytest.raises(ingest.ConfigError, match="keyed its rows by the field 'ingest_key'"):
        await ingest.upload(api_key=fake.api_key, **{**run, "key_field_name": "other"})
    done = await ingest.upload(api_key=fake.api_key, **{**run, "max_attempts": 8})
    assert (done.exit_code, fake.state.example_count(fake.dataset_id)) == (0, 200)


async def test_a_second_look_a_kill_prevented_is_made_by_the_next_run(
    fake: Any, tmp_path: Path
) -> None:
    """Rows resent after a look-up and never looked at again are checked by the next run."""
    write_rows(tmp_path / "rows.jsonl", 200)
    run = settings(fake, tmp_path, checkpoint=str(tmp_path / "run.ckpt"), batch_rows=50)
    assert (await ingest.upload(api_key=fake.api_key, **run)).exit_code == 0
    # As a kill leaves it: batch 1 was sent after a look-up, and a late commit of its
    # first send shows now, a second copy of each of its rows.
    journal = tmp_path / "run.ckpt"
    records = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    kept = [r for r in records if r["t"] != "finished"]
    for record in kept:
        if record["t"] == "done" and record["seq"] == 1:
            record["recheck"] = True
    journal.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in kept))
    dataset = fake.state.datasets[fake.dataset_id]
    copies = fake.state.raw_examples(fake.dataset_id)[50:100]
    fake.state.append(dataset, dataset.versions[0], copies)
    assert fake.state.example_count(fake.dataset_id) == 250
    again = await ingest.upload(api_key=fake.api_key, **run)
    assert (again.status, again.rows_deleted) == ("complete", 50)
    assert sorted(e["i"] for e in fake.state.examples(fake.dataset_id)) == list(range(200))
    assert b'"t":"checked","seq":1' in journal.read_bytes()
    assert (await ingest.upload(api_key=fake.api_key, **run)).status == "already-complete"


def test_splice_all_is_key_and_splice_row_by_row() -> None:
    """The keys and rows of ``splice_all`` are byte for byte those of ``key`` and ``splice``,
    on any lines (gaps, 1, the last of 12 digits) and for CRCs with leading zeros."""
    keys = RowKeys(field="ingest_key", tag="0a0b0c0d")
    raws = [b'{"i":%d,"s":"\\u00e9"}' % i for i in range(300)] + [b'{"i":251}']
    for first in (1, 9, 999_999, 10**12 - 302):
        lines = [first + 2 * i if first < 10**12 - 302 else first + i for i in range(len(raws))]
        made: list[str] = []
        rows = keys.splice_all(raws, lines, made)
        assert made == [keys.key(line, raw) for line, raw in zip(lines, raws, strict=True)]
        assert rows == [keys.splice(raw, key) for raw, key in zip(raws, made, strict=True)]
