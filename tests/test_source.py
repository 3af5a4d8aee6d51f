"""The JSONL source: streaming, validation, line numbers and resume positions."""

from __future__ import annotations

import bz2
import gc
import gzip
import lzma
import random
import zlib
from pathlib import Path

import orjson
import pytest

from ingest.errors import SourceError
from ingest.keys import input_tag
from ingest.rows import BOM, Reject
from ingest.source import JsonlSource

Row = tuple[int, int, bytes]  # line, end offset, raw bytes


def read_all(source: JsonlSource) -> list[Row | Reject]:
    """Rows and rejects in line order, read three lines a chunk."""
    out: list[Row | Reject] = []
    with source:
        while chunk := source.read_chunk(max_lines=3):
            out.extend(zip(chunk.lines, chunk.ends, chunk.rows, strict=True))
            out.extend(chunk.rejects)
    return sorted(out, key=line_of)


def line_of(item: Row | Reject) -> int:
    return item.line if isinstance(item, Reject) else item[0]


def test_bad_lines_become_rejects_with_line_numbers(tmp_path: Path) -> None:
    """Each kind of bad line is rejected with its line and reason; good lines pass."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"ok": 1}\n'
        b"not json\n"
        b"[1, 2]\n"
        b"{}\n"
        b'{"id": 5, "q": "x"}\n'
        b'{"source_record_id": 1}\n'
        b'{"q": "\xff"}\n'
        b"\n"
        b'{"ok": 2}\r\n'
    )
    items = read_all(JsonlSource(str(path), max_row_bytes=1 << 20))
    rejects = {i.line: i.reason for i in items if isinstance(i, Reject)}
    assert [(i[0], i[2]) for i in items if not isinstance(i, Reject)] == [
        (1, b'{"ok": 1}'),
        (9, b'{"ok": 2}'),
    ]
    assert sorted(rejects) == [2, 3, 4, 5, 6, 7]
    assert rejects[2] == "not valid JSON: invalid literal, expected 'null' at column 1"
    assert "not a JSON object" in rejects[3]
    assert "empty object" in rejects[4]
    assert "reserved field 'id'" in rejects[5]
    assert "source_record_id" in rejects[6]
    assert rejects[7] == "not valid UTF-8"


def test_rows_are_sent_as_written(tmp_path: Path) -> None:
    """Big integers, 1.0, key order and escapes are kept byte for byte."""
    line = b'{"z": 12345678901234567890123, "a": 1.0, "e": "\\u00e9\\n"}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line + b"\n")
    [record] = read_all(JsonlSource(str(path), max_row_bytes=1 << 20))
    assert not isinstance(record, Reject)
    assert record[2] == line


def test_oversized_row_is_rejected_with_its_size(tmp_path: Path) -> None:
    """A row that cannot fit in batch_bytes alone is rejected, naming the limit."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": "' + b"x" * 2000 + b'"}\n{"b": 1}\n')
    items = read_all(JsonlSource(str(path), max_row_bytes=1024))
    assert isinstance(items[0], Reject) and "a row may hold at most 1,009" in items[0].reason
    assert items[1] == (2, len(path.read_bytes()), b'{"b": 1}')


def test_a_row_just_over_the_limit_is_rejected_naming_the_real_limit(tmp_path: Path) -> None:
    """A row over batch_bytes minus the envelope is refused naming that limit, not batch_bytes."""
    fits = b'{"a":"' + b"x" * (1009 - 8) + b'"}'
    over = b'{"b":"' + b"x" * (1014 - 8) + b'"}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(fits + b"\n" + over + b"\n")
    items = read_all(JsonlSource(str(path), max_row_bytes=1024))
    assert items[0] == (1, 1010, fits)
    assert isinstance(items[1], Reject)
    assert items[1].reason == (
        "row is 1,014 bytes; with batch_bytes 1,024 a row may hold at most 1,009 "
        "(the request envelope takes 15); raise batch_bytes or shrink the row"
    )


def test_offsets_allow_seeking_to_any_line(tmp_path: Path) -> None:
    """Starting at a record's byte offset reads from exactly that line on."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(50)))
    items = read_all(JsonlSource(str(path), max_row_bytes=1 << 20))
    ninth = items[8]
    assert not isinstance(ninth, Reject)
    resumed = read_all(
        JsonlSource(str(path), max_row_bytes=1 << 20, start_line=10, start_offset=ninth[1])
    )
    assert resumed == items[9:]


def test_gzip_input_resumes_by_reading_past(tmp_path: Path) -> None:
    """A .gz input reads the same records, and resumes by line without seeking."""
    rows = b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(20))
    (tmp_path / "in.jsonl").write_bytes(rows)
    with gzip.open(tmp_path / "in.jsonl.gz", "wb") as f:
        f.write(rows)
    plain = read_all(JsonlSource(str(tmp_path / "in.jsonl"), max_row_bytes=1 << 20))
    packed = read_all(JsonlSource(str(tmp_path / "in.jsonl.gz"), max_row_bytes=1 << 20))
    assert packed == plain
    fourth = plain[3]
    assert not isinstance(fourth, Reject)
    resumed = read_all(
        JsonlSource(
            str(tmp_path / "in.jsonl.gz"),
            max_row_bytes=1 << 20,
            start_line=5,
            start_offset=fourth[1],
        )
    )
    assert resumed == plain[4:]


def test_skip_reads_but_does_not_return_done_lines(tmp_path: Path) -> None:
    """Lines the checkpoint has as done are counted as skipped, not returned."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(10)))
    source = JsonlSource(str(path), max_row_bytes=1 << 20, skip=lambda line: 3 <= line <= 7)
    assert [line_of(i) for i in read_all(source)] == [1, 2, 8, 9, 10]
    assert source.skipped == 5


def varied_rows(n: int, first: int = 0) -> bytes:
    """``n`` JSONL rows that do not compress to nearly nothing."""
    return b"".join(
        orjson.dumps({"i": i, "pad": random.Random(i).randbytes(30).hex()}) + b"\n"
        for i in range(first, first + n)
    )


def read_until_error(source: JsonlSource, error: str) -> list[bytes]:
    """Every row ``source`` hands over before it raises a SourceError matching ``error``."""
    good: list[bytes] = []
    with source, pytest.raises(SourceError, match=error):
        while True:
            chunk = source.read_chunk(max_lines=1000)
            assert chunk, "the input was read to its end without an error"
            good.extend(chunk.rows)
    return good


def test_truncated_gzip_hands_over_no_row_of_the_cut_member(tmp_path: Path) -> None:
    """A .gz cut short yields no row of the member it cuts: its checksum cannot be checked."""
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(varied_rows(20_000))[:-20_000])
    error = r"in\.jsonl\.gz: gzip member 1 \(from compressed byte 0\) is cut short"
    assert read_until_error(JsonlSource(str(path), max_row_bytes=1 << 20), error) == []


def test_a_flipped_byte_mid_member_delivers_no_row_of_it(tmp_path: Path) -> None:
    """One flipped byte inside a member's data: no row of it is handed over, the error names it."""
    rows = varied_rows(20_000)
    packed = bytearray(gzip.compress(rows))
    packed[len(packed) // 2] ^= 0x01
    assert zlib.decompressobj(wbits=31).decompress(packed[:-8])  # it inflates, unchecked
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(packed)
    error = r"in\.jsonl\.gz: gzip member 1 \(from compressed byte 0\) is damaged"
    assert read_until_error(JsonlSource(str(path), max_row_bytes=1 << 20), error) == []


def test_a_bad_crc_delivers_no_row_of_its_member(tmp_path: Path) -> None:
    """A member whose trailer CRC does not match hands over no row, though all of them inflate."""
    packed = bytearray(gzip.compress(varied_rows(20_000)))
    packed[-8] ^= 0xFF  # the CRC-32 in the trailer
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(packed)
    error = r"member 1 .* is damaged \(.*incorrect data check\): no row of the file is sent"
    assert read_until_error(JsonlSource(str(path), max_row_bytes=1 << 20), error) == []


def test_rows_of_intact_members_before_a_damaged_one_are_handed_over(tmp_path: Path) -> None:
    """With the second member damaged, every row of the first comes out, none of the second."""
    first = gzip.compress(varied_rows(3000))
    second = bytearray(gzip.compress(varied_rows(3000, first=3000)))
    second[len(second) // 2] ^= 0x01
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(first + second)
    error = rf"in\.jsonl\.gz:3000: gzip member 2 \(from compressed byte {len(first):,}\)"
    good = read_until_error(JsonlSource(str(path), max_row_bytes=1 << 20), error)
    assert good == varied_rows(3000).splitlines()


def test_concatenated_gzip_members_are_read_in_turn(tmp_path: Path) -> None:
    """A .gz made of several members (as `cat a.gz b.gz` makes) reads as one input."""
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"b":2}\n'))
    assert [i[2] for i in read_all(JsonlSource(str(path), max_row_bytes=1024))] == [
        b'{"a":1}',
        b'{"b":2}',
    ]


def test_missing_input_is_a_source_error(tmp_path: Path) -> None:
    """An input that cannot be opened names the path."""
    with pytest.raises(SourceError, match="nope.jsonl"):
        JsonlSource(str(tmp_path / "nope.jsonl"), max_row_bytes=1024)


def test_reject_line_keeps_raw_bytes_even_when_not_utf8() -> None:
    """The rejects file holds the raw line, base64 when it is not UTF-8."""
    entry = orjson.loads(Reject(3, 10, 20, "not valid UTF-8", b"\xff\xfe").to_json())
    assert entry == {"line": 3, "offset": 10, "reason": "not valid UTF-8", "raw_base64": "//4="}


def test_gzip_zero_padding_after_a_member_is_ignored(tmp_path: Path) -> None:
    """Zero padding after the last member, even across read steps, is not an error."""
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a":1}\n') + b"\0" * 20_000)
    assert [i[2] for i in read_all(JsonlSource(str(path), max_row_bytes=1024))] == [b'{"a":1}']


def test_a_huge_line_is_rejected_without_being_held(tmp_path: Path) -> None:
    """A line far over batch_bytes is skipped in bounded reads; offsets stay right after it."""
    path = tmp_path / "in.jsonl"
    huge = b'{"a":"' + b"x" * (5 << 20) + b'"}\n'
    path.write_bytes(b'{"before":1}\n' + huge + b'{"after":2}\n')
    items = read_all(JsonlSource(str(path), max_row_bytes=1 << 20))
    reject = items[1]
    assert isinstance(reject, Reject) and reject.line == 2
    assert reject.reason.startswith(
        f"row is {len(huge):,} bytes; with batch_bytes {1 << 20:,} a row may hold at most "
        f"{(1 << 20) - 15:,} (the request envelope takes 15)"
    )
    assert len(reject.raw) == 1024
    assert items[2] == (3, len(path.read_bytes()), b'{"after":2}')


def test_missing_gzip_input_is_a_clean_source_error(tmp_path: Path) -> None:
    """A .gz that cannot be opened names the path and leaves nothing half-built behind."""
    with pytest.raises(SourceError, match="nope.jsonl.gz"):
        JsonlSource(str(tmp_path / "nope.jsonl.gz"), max_row_bytes=1024)
    gc.collect()  # a half-built stream's finalizer would raise here


def test_gzip_is_known_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    """A gzip named .GZ or .jsonl is decompressed; a plain file named .gz is read as plain."""
    rows = varied_rows(50)
    (tmp_path / "upper.JSONL.GZ").write_bytes(gzip.compress(rows))
    (tmp_path / "packed.jsonl").write_bytes(gzip.compress(rows))
    (tmp_path / "plain.jsonl.gz").write_bytes(rows)
    for name in ("upper.JSONL.GZ", "packed.jsonl", "plain.jsonl.gz"):
        items = read_all(JsonlSource(str(tmp_path / name), max_row_bytes=1 << 20))
        assert [i[2] for i in items if not isinstance(i, Reject)] == rows.splitlines(), name


def test_a_plain_file_named_gz_resumes_by_seeking(tmp_path: Path) -> None:
    """A plain file named .gz seeks to the checkpoint's offset like any plain file."""
    rows = varied_rows(10)
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(rows)
    third_end = len(b"".join(rows.splitlines(keepends=True)[:3]))
    items = read_all(
        JsonlSource(str(path), max_row_bytes=1 << 20, start_line=4, start_offset=third_end)
    )
    assert [i[2] for i in items if not isinstance(i, Reject)] == rows.splitlines()[3:]


def test_other_compressed_input_is_refused_with_a_hint(tmp_path: Path) -> None:
    """An xz or bzip2 file gives one clear error, not a reject per line of garbage."""
    (tmp_path / "rows.xz").write_bytes(lzma.compress(varied_rows(10)))
    (tmp_path / "rows.bz2").write_bytes(bz2.compress(varied_rows(10)))
    with pytest.raises(SourceError, match=r"rows\.xz: the input holds xz data; decompress it"):
        JsonlSource(str(tmp_path / "rows.xz"), max_row_bytes=1024)
    with pytest.raises(SourceError, match="holds bzip2 data"):
        JsonlSource(str(tmp_path / "rows.bz2"), max_row_bytes=1024)


def test_an_input_shorter_than_at_the_start_is_an_error_not_its_end(tmp_path: Path) -> None:
    """EOF before the fingerprinted size raises, after the whole rows before it."""
    rows = varied_rows(100)
    path = tmp_path / "in.jsonl"
    path.write_bytes(rows)
    error = rf"it had {len(rows) + 500:,} bytes when the run started, it ends at byte {len(rows):,}"
    source = JsonlSource(str(path), max_row_bytes=1 << 20, expected_size=len(rows) + 500)
    assert read_until_error(source, error) == rows.splitlines()


def test_a_line_cut_short_by_a_truncation_is_neither_sent_nor_rejected(tmp_path: Path) -> None:
    """A last line without newline that ends before the fingerprinted size is not a row."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')  # was {"b": 23}\n when the run started
    source = JsonlSource(str(path), max_row_bytes=1024, expected_size=19)
    with source:
        chunk = source.read_chunk()
        assert (chunk.rows, chunk.rejects) == ([b'{"a": 1}'], [])
        with pytest.raises(SourceError, match="in.jsonl:1: the input changed under the run"):
            source.read_chunk()


def test_a_last_line_without_newline_is_a_row_when_the_size_matches(tmp_path: Path) -> None:
    """A file that simply lacks a final newline reads to its end with no error."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": 2}')
    source = JsonlSource(str(path), max_row_bytes=1024, expected_size=17)
    assert [i[2] for i in read_all(source) if not isinstance(i, Reject)] == [
        b'{"a": 1}',
        b'{"b": 2}',
    ]


def test_a_gzip_shorter_than_at_the_start_is_an_error(tmp_path: Path) -> None:
    """A .gz cut at a member boundary since the start is caught by its compressed size."""
    first = gzip.compress(varied_rows(100))
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(first)  # a second member was there when the run started
    had = len(first) + 1000
    error = rf"changed under the run: it had {had:,} bytes .* ends at byte {len(first):,}"
    source = JsonlSource(str(path), max_row_bytes=1 << 20, expected_size=had)
    assert read_until_error(source, error) == varied_rows(100).splitlines()


def test_keyed_rows_carry_rowkeys_key_of_their_own_bytes(tmp_path: Path) -> None:
    """The reader's keys are ``RowKeys.key`` of each row as written (CRLF, BOM and padding
    aside, a CRC with leading zeros kept), spliced first and taken off again whole."""
    rows = [b'{"i":0}', b'{"i":251}', b'{"i":2}']  # crc32 of {"i":251} is 0x001c3cc3
    path = tmp_path / "rows.jsonl"
    path.write_bytes(BOM + b"  " + rows[0] + b"\r\n\r\n" + rows[1] + b"\r\n\t" + rows[2] + b" \r\n")
    with JsonlSource(str(path), max_row_bytes=1 << 20, key_field="ingest_key") as source:
        chunk = source.read_chunk()
        keys = source.keys
    assert keys is not None and keys.tag == input_tag(b'{"i":0}')
    assert chunk.lines == [1, 3, 4]
    assert chunk.keys == [keys.key(n, r) for n, r in zip(chunk.lines, rows, strict=True)]
    assert chunk.keys[1].endswith("-000000000003-001c3cc3")
    assert [keys.unspliced(r, k) for r, k in zip(chunk.rows, chunk.keys, strict=True)] == rows
    assert [orjson.loads(r)["ingest_key"] for r in chunk.rows] == chunk.keys


LINE_KINDS = [
    b'{"i": 1, "s": "\\u00e9t\xc3\xa9"}',
    b'  {"nested": {"a": [1, 2, {"b": null}]}}\r',
    b"",
    b"   ",
    b"{}",
    b"[1, 2]",
    b'{"id": 3}',
    b'{"a": {"source_record_x": 1}}',
    b'{"source_record_id": 1}',
    b'{"ingest_key": "mine"}',
    b'{"a": "' + b"x" * 200 + b'"}',
    b'{"a": 1',
    b'{"a": "\xff"}',
    b'"text"',
]


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("keyed", [True, False])
def test_chunks_read_in_c_passes_match_rows_looked_at_one_by_one(
    tmp_path: Path, seed: int, keyed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whole plain chunks (checked in passes over all their lines) give the rows, lines,
    offsets, keys and rejects that the line-by-line reading gives the same input."""
    rand = random.Random(seed)
    plain = rand.random() < 0.5  # half the inputs have long runs of plain rows only
    lines = [
        LINE_KINDS[0 if plain and rand.random() < 0.97 else rand.randrange(len(LINE_KINDS))]
        for _ in range(rand.randrange(1, 60))
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + (b"\n" if rand.random() < 0.5 else b""))

    def read(lines_per_chunk: int) -> list[object]:
        source = JsonlSource(
            str(path), max_row_bytes=200, key_field="ingest_key" if keyed else None
        )
        out: list[object] = []
        with source:
            while chunk := source.read_chunk(max_lines=lines_per_chunk):
                out.append((chunk.rows, chunk.lines, chunk.starts, chunk.ends, chunk.keys))
                out.append(chunk.rejects)
            out.append(source.position)
        return out

    size = rand.choice([1, 3, 8, 64])
    fast = read(size)
    monkeypatch.setattr("ingest.source.plain_rows", lambda *_: None)
    assert fast == read(size)
