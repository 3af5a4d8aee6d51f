"""The batcher: limits, determinism, and tiling of the input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.batcher import Batch, Batcher, batch_chunks, body_size
from ingest.rows import Chunk


def chunks_from(sizes: list[int], gaps: list[int], per_chunk: int = 7) -> list[Chunk]:
    """Chunks of rows with the given raw sizes, separated by ``gaps`` skipped lines."""
    out, line, offset = [Chunk()], 1, 0
    for i, size in enumerate(sizes):
        line += gaps[i % len(gaps)] if gaps else 0
        raw = b'{"k":"' + b"x" * max(size - 8, 0) + b'"}'
        offset += len(raw) + 1
        if len(out[-1]) == per_chunk:
            out.append(Chunk())
        out[-1].rows.append(raw)
        out[-1].lines.append(line)
        out[-1].ends.append(offset)
        out[-1].starts.append(offset - len(raw) - 1)
        line += 1
    return out


def all_rows(chunks: list[Chunk]) -> list[bytes]:
    return [row for c in chunks for row in c.rows]


@settings(deadline=None, max_examples=200)
@given(
    sizes=st.lists(st.integers(min_value=8, max_value=300), max_size=300),
    gaps=st.lists(st.integers(min_value=0, max_value=3), max_size=5),
    batch_rows=st.integers(min_value=1, max_value=1000),
    batch_bytes=st.integers(min_value=400, max_value=5000),
)
def test_batches_keep_every_row_once_within_limits(
    sizes: list[int], gaps: list[int], batch_rows: int, batch_bytes: int
) -> None:
    """No row is lost or duplicated, limits hold, numbering runs 0..n-1, and it is deterministic."""
    chunks = chunks_from(sizes, gaps)
    batches = list(batch_chunks(chunks, batch_rows=batch_rows, batch_bytes=batch_bytes))
    assert [r for b in batches for r in b.rows] == all_rows(chunks)
    assert [line for b in batches for line in b.lines] == [n for c in chunks for n in c.lines]
    assert [b.seq for b in batches] == list(range(len(batches)))
    for b in batches:
        assert 1 <= len(b.rows) <= batch_rows
        assert len(b.body()) == body_size(len(b.rows), sum(map(len, b.rows)))
        assert len(b.body()) <= batch_bytes
    again = list(batch_chunks(chunks, batch_rows=batch_rows, batch_bytes=batch_bytes))
    assert again == batches


@settings(deadline=None, max_examples=100)
@given(sizes=st.lists(st.integers(min_value=8, max_value=100), min_size=1, max_size=200))
def test_batches_tile_the_input_without_gaps(sizes: list[int]) -> None:
    """Each batch starts on the line and byte after the previous one ends."""
    chunks = chunks_from(sizes, [2, 0, 1], per_chunk=5)
    batches = list(batch_chunks(chunks, batch_rows=7, batch_bytes=10_000))
    assert batches[0].first_line == 1 and batches[0].start == 0
    for before, after in zip(batches, batches[1:], strict=False):
        assert after.first_line == before.last_line + 1
        assert after.start == before.end


@settings(deadline=None, max_examples=100)
@given(n=st.integers(min_value=2, max_value=64))
def test_split_halves_cover_the_whole(n: int) -> None:
    """Halving a batch keeps every row once and the halves tile its span."""
    batch = next(batch_chunks(chunks_from([20] * n, [1]), batch_rows=1000, batch_bytes=1 << 20))
    first, second = batch.split()
    assert first.rows + second.rows == batch.rows
    assert first.starts + second.starts == batch.starts
    assert (first.first_line, first.start) == (batch.first_line, batch.start)
    assert (second.first_line, second.start) == (first.last_line + 1, first.end)
    assert (second.last_line, second.end) == (batch.last_line, batch.end)
    assert (first.part, second.part) == ("0", "1")


def test_body_is_the_rows_own_bytes() -> None:
    """The body splices the raw rows, so values such as huge integers are not re-serialized."""
    raw = b'{"big": 12345678901234567890123, "f": 1.0}'
    batch = Batch(0, 1, 0, (raw, b'{"a":1}'), (1, 2), (10, 20), (0, 10))
    assert batch.body() == b'{"examples":[' + raw + b',{"a":1}]}'


def test_batcher_continues_numbering_and_position_on_resume() -> None:
    """A resumed batcher numbers from the checkpoint's next seq and starts at its line."""
    batcher = Batcher(batch_rows=2, batch_bytes=1 << 20, first_seq=9, first_line=51, start=700)
    assert batcher.extend([b'{"a":1}'], [53], [730], [722]) == []
    batch = batcher.flush()
    assert batch is not None
    assert (batch.seq, batch.first_line, batch.start, batch.end) == (9, 51, 700, 730)
