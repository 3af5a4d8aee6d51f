"""Identity: which input, dataset and version a checkpoint belongs to.

Takes an input path and the dataset it goes to; gives out the fingerprint a
journal's header records, and says whether (and how) a later input differs
from the one a checkpoint was made for.

The input is identified by content, never by path, so a renamed file is still
the same input.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

_EDGE = 1 << 20


def fingerprint(input_path: str, dataset_id: str, dataset_version_id: str | None) -> dict[str, Any]:
    """What a checkpoint belongs to: the input's content identity, dataset and version."""
    if input_path == "-":
        identity: dict[str, Any] = {"stdin": True}
    else:
        with open(input_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = hashlib.sha256(f.read(_EDGE)).hexdigest()
            f.seek(max(size - _EDGE, 0))
            tail = hashlib.sha256(f.read(_EDGE)).hexdigest()
        identity = {"size": size, "head_sha256": head, "tail_sha256": tail}
    return {
        "input": identity,
        "dataset_id": dataset_id,
        "dataset_version_id": dataset_version_id or None,
    }


def mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a checkpoint fingerprinted ``old`` is not for the run fingerprinted ``new``, if so."""
    if old.get("dataset_id") != new["dataset_id"]:
        return f"dataset {old.get('dataset_id')!r}, not {new['dataset_id']!r}"
    if old.get("dataset_version_id") != new["dataset_version_id"]:
        return f"dataset version {old.get('dataset_version_id')!r}"
    if new["input"].get("stdin"):
        return "an earlier run from stdin, which cannot be checked to be the same input"
    if old.get("input") != new["input"]:
        return "another input (its size or content differs)"
    return None
