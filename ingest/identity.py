"""Identity: which input, dataset and version a checkpoint belongs to.

Takes an input path and the dataset it goes to; gives out the fingerprint a
journal's header records, and says whether (and how) a later input differs
from the one a checkpoint was made for.

The input is identified by content, never by path, so a renamed file is still
the same input: its size, its modification time (an edit in place changes it,
``mv`` keeps it), a hash of its first and last MiB, and a hash of 64 blocks of
4 KiB spread evenly between them. Reading 2.25 MiB at most, the cost does not
grow with the file. What it cannot see: an edit of the middle that keeps the
size, misses every sampled block *and* puts the modification time back.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from typing import Any

import orjson

_EDGE = 1 << 20
_BLOCK = 4096
_SAMPLES = 64
# Journal version 1 recorded only these; version 2 added mtime_ns and sample_sha256.
_V1_KEYS = ("size", "head_sha256", "tail_sha256")
_HEADER_MAX = 64 << 10  # a header is a few hundred bytes; never read a whole journal


def fingerprint(input_path: str, dataset_id: str, dataset_version_id: str | None) -> dict[str, Any]:
    """What a checkpoint belongs to: the input's content identity, dataset and version."""
    return {
        "input": {"stdin": True} if input_path == "-" else input_identity(input_path),
        "dataset_id": dataset_id,
        "dataset_version_id": dataset_version_id or None,
    }


def input_identity(path: str, *, size: int | None = None) -> dict[str, Any]:
    """Size, modification time and sampled hashes of the file at ``path``.

    With ``size``, of its first ``size`` bytes only: what it was before it grew.
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size if size is None else size
        head = hashlib.sha256(f.read(min(_EDGE, size))).hexdigest()
        f.seek(max(size - _EDGE, 0))
        tail = hashlib.sha256(f.read(min(_EDGE, size))).hexdigest()
        samples = hashlib.sha256()
        for offset in sample_offsets(size):
            samples.update(os.pread(f.fileno(), _BLOCK, offset))
    return {
        "size": size,
        "mtime_ns": st.st_mtime_ns,
        "head_sha256": head,
        "tail_sha256": tail,
        "sample_sha256": samples.hexdigest(),
    }


def sample_offsets(size: int) -> list[int]:
    """Where the sampled blocks start: evenly spread between the first and last MiB."""
    middle = size - 2 * _EDGE
    if middle <= 0:
        return []  # the first and last MiB cover the whole file
    return [_EDGE + i * max(middle - _BLOCK, 0) // (_SAMPLES - 1) for i in range(_SAMPLES)]


def mismatch(
    old: dict[str, Any], new: dict[str, Any], *, input_path: str = "the input"
) -> str | None:
    """Why a checkpoint fingerprinted ``old`` is not for the run fingerprinted ``new``, if so.

    ``old`` may come from a version-1 header, which recorded less: only what it
    recorded is compared.
    """
    if old.get("dataset_id") != new["dataset_id"]:
        return f"dataset {old.get('dataset_id')!r}, not {new['dataset_id']!r}"
    if old.get("dataset_version_id") != new["dataset_version_id"]:
        return f"dataset version {old.get('dataset_version_id')!r}"
    was, now = old.get("input"), new["input"]
    if now.get("stdin"):
        return "an earlier run from stdin, which cannot be checked to be the same input"
    if not isinstance(was, dict) or was.get("stdin"):
        return "another input (it was made for stdin)"
    if was == now:
        return None
    return _input_change(was, now, input_path)


def grew(old: dict[str, Any], new: dict[str, Any], path: str) -> bool:
    """Whether the input at ``path`` is the one ``old`` fingerprinted with lines added at its end.

    Its first ``old`` size bytes must be what they were (same hashes at that size),
    ending with a whole line: then every line done stays done, keys included, and a
    daily-appended file resumes where the last run stopped. Same dataset and version.
    """
    was, now = old.get("input"), new["input"]
    if old.get("dataset_id") != new["dataset_id"]:
        return False
    if old.get("dataset_version_id") != new["dataset_version_id"]:
        return False
    if not isinstance(was, dict) or "sample_sha256" not in was or now.get("stdin"):
        return False
    size = was.get("size")
    if not isinstance(size, int) or not 0 < size < now.get("size", 0):
        return False
    try:
        with open(path, "rb") as f:
            if os.pread(f.fileno(), 1, size - 1) != b"\n":
                return False  # a last line cut short then: it is another line now
        then = input_identity(path, size=size)
    except OSError:
        return False
    keys = ("head_sha256", "tail_sha256", "sample_sha256")
    return all(then[k] == was[k] for k in keys)


def is_v1_identity(identity: dict[str, Any]) -> bool:
    """Whether ``identity`` is what a version-1 header recorded (no mtime, no samples)."""
    return "mtime_ns" not in identity and all(k in identity for k in _V1_KEYS)


def _input_change(was: dict[str, Any], now: dict[str, Any], input_path: str) -> str | None:
    if was.get("size") != now.get("size"):
        return (
            f"another input: its size was {was.get('size')!r} bytes, {input_path} has {now['size']}"
        )
    changed = [
        where
        for key, where in (
            ("head_sha256", "its first MiB"),
            ("sample_sha256", "its sampled middle blocks"),
            ("tail_sha256", "its last MiB"),
        )
        if key in was and was[key] != now[key]
    ]
    if changed:
        return f"another input: {input_path} has the same size, but {' and '.join(changed)} changed"
    if is_v1_identity(was):
        return None  # all that version 1 recorded matches
    if was.get("mtime_ns") != now.get("mtime_ns"):
        then = was.get("mtime_ns")
        stamp = f"{then // 10**9}.{then % 10**9:09d}" if isinstance(then, int) else "?"
        return (
            f"an input modified since: {input_path} has the same size and sampled content, "
            "but another modification time, so an edit in place cannot be ruled out. If you "
            f"only copied it, restore its time (touch -d @{stamp} {shlex.quote(input_path)}) "
            "and re-run"
        )
    return "another input (its identity differs)"


def matching_checkpoints(folder: str, suffix: str, fp: dict[str, Any]) -> list[str]:
    """Checkpoints in ``folder`` named ``*suffix`` whose header is for ``fp``'s input and dataset.

    Reads only each candidate's first line. A version-1 header is compared on
    what it recorded; the full check happens when the one found is opened.
    """
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if not entry.name.endswith(suffix):
            continue
        header = _read_header(entry.path)
        if header is None or not isinstance(header.get("fingerprint"), dict):
            continue
        if mismatch(header["fingerprint"], fp) is None:
            found.append(entry.path)
    return found


def _read_header(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(_HEADER_MAX)
        header = orjson.loads(first)
    except (OSError, orjson.JSONDecodeError):
        return None
    return header if isinstance(header, dict) and header.get("t") == "header" else None


def changed_since(path: str, recorded: dict[str, Any]) -> str | None:
    """Why ``path`` no longer looks like the input ``recorded`` describes, or None.

    One ``stat``: cheap enough for the end of every read. It catches a file
    rewritten in place during the run (``cp`` truncates and writes again, so the
    size may come back whole), which reading alone cannot tell.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"it cannot be looked at any more ({exc.strerror})"
    size = recorded.get("size")
    if isinstance(size, int) and st.st_size != size:
        return f"it had {size:,} bytes when the run started and has {st.st_size:,} now"
    mtime = recorded.get("mtime_ns")
    if isinstance(mtime, int) and st.st_mtime_ns != mtime:
        return "it was written to during the run (its modification time changed)"
    return None
