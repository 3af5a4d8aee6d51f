"""Which input a checkpoint belongs to: same-size edits, old and new journal versions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import upload_then_stop

import ingest
from ingest.checkpoint import CheckpointJournal, read_journal
from ingest.errors import CheckpointError
from ingest.identity import fingerprint, sample_offsets


def write_big(path: Path, rows: int = 35_000) -> None:
    """About 3.5 MB of rows of one fixed width, so an edit can keep the size."""
    path.write_bytes(
        b"".join(b'{"i": "%08d", "pad": "%s"}\n' % (i, b"x" * 71) for i in range(rows))
    )


def edit_at(path: Path, offset: int, keep_mtime: bool) -> None:
    """Overwrite one digit at ``offset`` in place (same size); optionally put the mtime back."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(b"7" if old != b"7" else b"8")
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def upload_settings(fake: Any, tmp_path: Path) -> dict[str, Any]:
    return dict(
        input=str(tmp_path / "rows.jsonl"),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        batch_rows=1000,
        rate=0,
    )


async def test_a_same_size_edit_in_the_middle_is_refused(fake: Any, tmp_path: Path) -> None:
    """Rows edited in place mid-file, size unchanged, are refused with what to do next."""
    path = tmp_path / "rows.jsonl"
    write_big(path)
    first = await ingest.upload(api_key=fake.api_key, **upload_settings(fake, tmp_path))
    assert first.exit_code == 0
    middle = path.stat().st_size // 2
    edit_at(path, middle - middle % 100 + 10, keep_mtime=False)  # a digit of a row's "i"
    with pytest.raises(CheckpointError) as refused:
        await ingest.upload(api_key=fake.api_key, **upload_settings(fake, tmp_path))
    message = str(refused.value)
    assert "modification time" in message and "touch -d @" in message
    assert "--restart" in message
    assert fake.state.example_count(fake.dataset_id) == 35_000  # nothing was sent again


def test_an_edit_in_a_sampled_block_is_seen_even_with_the_mtime_put_back(tmp_path: Path) -> None:
    """A change inside a sampled middle block is refused though size and mtime are the same."""
    path = tmp_path / "rows.jsonl"
    write_big(path)
    before = fingerprint(str(path), "ds", None)
    offsets = sample_offsets(path.stat().st_size)
    assert len(offsets) == 64 and offsets[0] == 1 << 20
    edit_at(path, offsets[31] + 100, keep_mtime=True)
    ckpt = tmp_path / "ck"
    journal, _ = CheckpointJournal.open(str(ckpt), before, rejects_path=str(tmp_path / "r"))
    journal.release()
    with pytest.raises(CheckpointError, match="sampled middle blocks changed"):
        CheckpointJournal.open(
            str(ckpt), fingerprint(str(path), "ds", None), rejects_path=str(tmp_path / "r")
        )


def test_a_version_1_checkpoint_resumes_and_is_checked_in_full_from_then_on(
    tmp_path: Path,
) -> None:
    """A v1 header (size and edges only) still resumes; later changes of mtime are caught."""
    path = tmp_path / "rows.jsonl"
    write_big(path, rows=100)
    now = fingerprint(str(path), "ds", None)
    v1_input = {k: now["input"][k] for k in ("size", "head_sha256", "tail_sha256")}
    ckpt = tmp_path / "ck"
    header = {"t": "header", "v": 1, "fingerprint": {**now, "input": v1_input}}
    done = {"t": "done", "seq": 0, "part": "", "lines": [1, 50], "bytes": [0, 5000], "rows": 50}
    ckpt.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (header, {"t": "start"}, done)))
    journal, state = CheckpointJournal.open(str(ckpt), now, rejects_path=str(tmp_path / "r"))
    journal.release()
    assert state.delivered_rows == 50
    assert read_journal(str(ckpt)).fingerprint == now
    mtime = path.stat().st_mtime_ns
    os.utime(path, ns=(mtime, mtime + 10**9))
    with pytest.raises(CheckpointError, match="modification time"):
        CheckpointJournal.open(
            str(ckpt), fingerprint(str(path), "ds", None), rejects_path=str(tmp_path / "r")
        )


def test_a_checkpoint_of_a_newer_ingest_says_so(tmp_path: Path) -> None:
    """A header with a journal version above ours asks to upgrade, not 'not a checkpoint'."""
    ckpt = tmp_path / "ck"
    ckpt.write_bytes(orjson.dumps({"t": "header", "v": 99, "fingerprint": {}}) + b"\n")
    message = "written by a newer ingest \\(journal version 99\\); upgrade ingest"
    with pytest.raises(CheckpointError, match=message):
        read_journal(str(ckpt))


async def interrupted_run(fake: Any, input_path: Path, rows_before_stop: int) -> Any:
    """Upload ``input_path`` with the default checkpoint; stop once some rows are stored."""
    return await upload_then_stop(
        fake,
        rows_before_stop,
        0.02,
        input=str(input_path),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        batch_rows=100,
        concurrency=2,
        rate=0,
    )


def move_into(folder: Path, path: Path) -> Path:
    return path.rename(folder / path.name)


def reject_lines(path: str) -> list[int]:
    with open(path, "rb") as f:
        return [orjson.loads(line)["line"] for line in f]


def rows_with_a_bad_line(path: Path, n: int) -> None:
    path.write_bytes(b'{"i": -1}\nnot json\n' + b"".join(b'{"i": %d}\n' % i for i in range(n)))


@pytest.mark.parametrize("other_folder", [False, True])
async def test_a_renamed_input_resumes_its_checkpoint(
    fake: Any, tmp_path: Path, other_folder: bool
) -> None:
    """After `mv a b` (and its checkpoint moved along, to another folder), b resumes a's run."""
    a = tmp_path / "a.jsonl"
    rows_with_a_bad_line(a, 5000)
    first = await interrupted_run(fake, a, rows_before_stop=500)
    assert first.status == "interrupted" and first.checkpoint.startswith(str(a) + ".ingest-")
    folder = tmp_path / "moved" if other_folder else tmp_path
    folder.mkdir(exist_ok=True)
    b = folder / "b.jsonl"
    a.rename(b)
    checkpoint, rejects = Path(first.checkpoint), Path(first.rejects)
    if other_folder:  # as the README says: move the checkpoint and rejects file along
        checkpoint, rejects = move_into(folder, checkpoint), move_into(folder, rejects)
    second = await ingest.upload(
        api_key=fake.api_key, input=str(b), dataset_id=fake.dataset_id, base_url=fake.url, rate=0
    )
    # Resumed, and renamed after the input it now belongs to.
    renamed = str(checkpoint).replace("/a.jsonl.", "/b.jsonl."), str(rejects).replace("/a.", "/b.")
    assert (second.checkpoint, second.rejects) == renamed
    assert second.rows_skipped == first.rows_delivered + 1  # + the bad line
    stored = [ex["i"] for ex in fake.state.examples(fake.dataset_id)]
    assert sorted(stored) == list(range(-1, 5000))  # every row once
    assert reject_lines(renamed[1]) == [2]
    ingest_files = sorted(n for n in os.listdir(folder) if ".ingest-" in n)
    assert ingest_files == sorted(os.path.basename(p) for p in renamed)


async def test_a_renamed_then_edited_input_is_refused_not_uploaded_again(
    fake: Any, tmp_path: Path
) -> None:
    """Resumed once under its new name, an input edited later is refused, not started afresh."""
    a = tmp_path / "a.jsonl"
    rows_with_a_bad_line(a, 3000)
    await interrupted_run(fake, a, rows_before_stop=300)
    b = a.rename(tmp_path / "b.jsonl")
    plain = dict(input=str(b), dataset_id=fake.dataset_id, base_url=fake.url, rate=0)
    assert (await ingest.upload(api_key=fake.api_key, **plain)).exit_code == 6
    edit_at(b, 2000, keep_mtime=False)
    posts = fake.state.post_examples_requests
    with pytest.raises(CheckpointError, match="b.jsonl has the same size, but its first MiB"):
        await ingest.upload(api_key=fake.api_key, **plain)
    assert fake.state.post_examples_requests == posts
