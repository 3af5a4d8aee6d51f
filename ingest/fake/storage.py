"""The fake server's in-memory state: datasets, their versions and examples.

A benchmark pushes millions of rows through the fake, so examples are packed:
one dataset's rows live in a few flat buffers (uuid bytes, microsecond stamps,
the concatenated bytes of each user object) instead of a dict per row. Pages
are rendered by splicing those bytes, never by re-parsing them.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import itertools
import json
import math
import os
import random
import string
import time
import uuid
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, NamedTuple

from ingest.fake.faults import FaultDice, Faults, FixedWindow, TokenBucket
from ingest.fake.injected import Counters, start_window
from ingest.fake.traffic import DatasetTraffic, census

DEFAULT_SPACE_ID: Final = "U3BhY2U6MTphQmNE"  # base64 of "Space:1:aBcD"
REQUEST_LOG_SIZE: Final = 100_000

_EPOCH: Final = datetime(1970, 1, 1)
_ALPHANUMERIC: Final = string.ascii_letters + string.digits
# Translation tables that stamp the uuid4 version and variant bits in place.
_VERSION_4: Final = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT: Final = bytes((b & 0x3F) | 0x80 for b in range(256))


class RequestLogEntry(NamedTuple):
    """One request the fake answered; status 0 when it closed the connection instead."""

    time: float
    method: str
    path: str
    status: int


def iso_timestamp(micros: int) -> str:
    """Microseconds since the epoch as an RFC 3339 UTC timestamp."""
    seconds, fraction = divmod(micros, 1_000_000)
    return f"{_iso_second(seconds)}.{fraction:06d}Z"


@functools.lru_cache(maxsize=1024)
def _iso_second(seconds: int) -> str:
    # Rows written together share their second, so listing a page formats few.
    return (_EPOCH + timedelta(seconds=seconds)).isoformat()


def resource_id(kind: str, number: int) -> str:
    """An opaque id shaped like Arize's: base64 of `Kind:number:random`."""
    tail = "".join(random.choices(_ALPHANUMERIC, k=4))
    return base64.b64encode(f"{kind}:{number}:{tail}".encode()).decode()


def _format_uuid(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


class StampClock:
    """Microsecond stamps that strictly increase, so insertion order is time order."""

    def __init__(self) -> None:
        self._last = 0

    def take(self, count: int = 1) -> int:
        """Reserve `count` consecutive stamps and return the first."""
        first = max(time.time_ns() // 1000, self._last + 1)
        self._last = first + count - 1
        return first


class ExampleRows:
    """The examples of one dataset, in insertion order; deleted rows keep their slot.

    Row numbers never change, which makes a row number a stable page cursor.
    """

    __slots__ = ("_alive", "_blob", "_created", "_ids", "_index", "_patched", "_starts", "count")

    def __init__(self) -> None:
        self._ids = bytearray()  # 16 bytes a row
        self._created = array("q")
        self._starts = array("q", [0])  # row i is _blob[_starts[i]:_starts[i + 1]]
        self._blob = bytearray()
        self._alive = bytearray()  # 1 a row, 0 once deleted
        self._patched: dict[int, tuple[bytes, int]] = {}  # row -> (raw, updated_at)
        self._index: dict[bytes, int] | None = None  # built on the first lookup by id
        self.count = 0

    def append(self, raws: list[bytes], first_stamp: int) -> list[str]:
        """Store user objects as new rows; return their new ids in order."""
        n = len(raws)
        ids = bytearray(os.urandom(16 * n))
        ids[6::16] = ids[6::16].translate(_VERSION_4)
        ids[8::16] = ids[8::16].translate(_VARIANT)
        first_row = len(self._alive)
        if self._index is not None:
            self._index.update((bytes(ids[i * 16 : i * 16 + 16]), first_row + i) for i in range(n))
        self._ids += ids
        self._created.extend(range(first_stamp, first_stamp + n))
        ends = itertools.accumulate(map(len, raws), initial=len(self._blob))
        self._starts.extend(itertools.islice(ends, 1, None))
        self._blob += b"".join(raws)
        self._alive += b"\x01" * n
        self.count += n
        hexed = ids.hex()
        return [_format_uuid(hexed[i : i + 32]) for i in range(0, 32 * n, 32)]

    def raw(self, row: int) -> bytes:
        """The stored user object of `row`."""
        patched = self._patched.get(row)
        if patched is not None:
            return patched[0]
        return bytes(self._blob[self._starts[row] : self._starts[row + 1]])

    def example_id(self, row: int) -> str:
        """The uuid string of `row`."""
        return _format_uuid(self._ids[row * 16 : row * 16 + 16].hex())

    def live_rows(self, start: int = 0) -> Iterator[int]:
        """Row numbers not deleted, from `start` on, ascending."""
        alive = self._alive
        row = alive.find(1, start)
        while row != -1:
            yield row
            row = alive.find(1, row + 1)

    def render(self, row: int) -> bytes:
        """The example as the API returns it: system fields, then the user fields."""
        created = self._created[row]
        patched = self._patched.get(row)
        created_at = iso_timestamp(created)
        if patched is None:
            raw, updated_at = self.raw(row), created_at
        else:
            raw, updated_at = patched[0], iso_timestamp(patched[1])
        head = (
            f'{{"id":"{self.example_id(row)}","created_at":"{created_at}",'
            f'"updated_at":"{updated_at}",'
        )
        return head.encode() + raw[1:]

    def find(self, example_id: str) -> int | None:
        """The live row holding `example_id`, or None."""
        try:
            key = uuid.UUID(example_id).bytes
        except ValueError:
            return None
        if self._index is None:
            ids = self._ids
            self._index = {bytes(ids[i : i + 16]): i // 16 for i in range(0, len(ids), 16)}
        row = self._index.get(key)
        return row if row is not None and self._alive[row] else None

    def delete(self, row: int) -> None:
        """Mark `row` deleted."""
        self._alive[row] = 0
        self._patched.pop(row, None)
        self.count -= 1

    def replace(self, row: int, raw: bytes, stamp: int) -> None:
        """Give `row` new user fields, updated at `stamp`."""
        self._patched[row] = (raw, stamp)


@dataclass(slots=True)
class DatasetVersion:
    """A named version of a dataset; every version shares the dataset's rows."""

    id: str
    name: str
    dataset_id: str
    created_at: int
    updated_at: int

    def to_json(self) -> dict[str, Any]:
        """The version as the API returns it."""
        return {
            "id": self.id,
            "name": self.name,
            "dataset_id": self.dataset_id,
            "created_at": iso_timestamp(self.created_at),
            "updated_at": iso_timestamp(self.updated_at),
        }


@dataclass(slots=True)
class Dataset:
    """A dataset, its versions (oldest first) and its examples."""

    id: str
    name: str
    space_id: str
    number: int
    created_at: int
    updated_at: int
    versions: list[DatasetVersion] = field(default_factory=list)
    rows: ExampleRows = field(default_factory=ExampleRows)

    def to_json(self, *, with_versions: bool = True) -> dict[str, Any]:
        """The dataset as the API returns it; `versions` newest first."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "space_id": self.space_id,
            "created_at": iso_timestamp(self.created_at),
            "updated_at": iso_timestamp(self.updated_at),
        }
        if with_versions:
            body["versions"] = [version.to_json() for version in reversed(self.versions)]
        return body

    def version(self, version_id: str | None) -> DatasetVersion:
        """The version named by id, the latest when empty; KeyError if unknown."""
        if not version_id:
            return self.versions[-1]
        for version in self.versions:
            if version.id == version_id:
                return version
        raise KeyError(version_id)

    def touch(self, stamp: int, version: DatasetVersion) -> None:
        """Record a write to `version` at `stamp`."""
        self.updated_at = version.updated_at = stamp


class FakeArize:
    """Everything the fake server knows, inspectable by tests.

    >>> state = FakeArize(api_key="test-key")
    >>> dataset_id = state.create_dataset(name="questions")
    >>> state.example_count(dataset_id)
    0
    """

    def __init__(self, *, api_key: str, faults: Faults | None = None) -> None:
        self.api_key = api_key
        self.faults = faults if faults is not None else Faults()
        self.datasets: dict[str, Dataset] = {}
        self.post_examples_requests = 0
        self.counters = Counters()
        self.requests: deque[RequestLogEntry] = deque(maxlen=REQUEST_LOG_SIZE)
        self.clock = StampClock()
        self.bucket = TokenBucket()
        self.window = FixedWindow()
        self.traffic: dict[str, DatasetTraffic] = {}
        self.dice = FaultDice()
        self._numbers = itertools.count(1)

    def start_outage(self, seconds: float) -> None:
        """Answer every /v2 request 503 for `seconds` from now; the data is kept."""
        self.faults.outage_until = start_window(seconds)

    def start_throttle_storm(self, seconds: float) -> None:
        """Answer every /v2 request 429 for `seconds` from now."""
        self.faults.throttle_until = start_window(seconds)

    def create_dataset(
        self,
        dataset_id: str | None = None,
        *,
        name: str | None = None,
        space_id: str = DEFAULT_SPACE_ID,
    ) -> str:
        """Create an empty dataset (the API refuses those; tests need them) and return its id."""
        number = next(self._numbers)
        dataset_id = dataset_id or resource_id("Dataset", number)
        if dataset_id in self.datasets:
            raise ValueError(f"dataset {dataset_id!r} already exists")
        name = name or f"dataset-{number}"
        if self.find_by_name(space_id, name) is not None:
            raise ValueError(f"a dataset named {name!r} already exists in space {space_id!r}")
        stamp = self.clock.take()
        dataset = Dataset(dataset_id, name, space_id, number, stamp, stamp)
        version_id = resource_id("DatasetVersion", number)
        dataset.versions.append(DatasetVersion(version_id, "Version 1", dataset_id, stamp, stamp))
        self.datasets[dataset_id] = dataset
        return dataset_id

    def find_by_name(self, space_id: str, name: str) -> Dataset | None:
        """The dataset called `name` in `space_id`, if any."""
        for dataset in self.datasets.values():
            if dataset.space_id == space_id and dataset.name == name:
                return dataset
        return None

    def append(self, dataset: Dataset, version: DatasetVersion, raws: list[bytes]) -> list[str]:
        """Store user objects at the end of `dataset`; return the new example ids."""
        first = self.clock.take(len(raws))
        ids = dataset.rows.append(raws, first)
        dataset.touch(first + len(raws) - 1, version)
        return ids

    def examples(self, dataset_id: str) -> list[dict[str, Any]]:
        """The live examples of a dataset as the API renders them, big integers exact."""
        rows = self.datasets[dataset_id].rows
        return [json.loads(rows.render(row)) for row in rows.live_rows()]

    def raw_examples(self, dataset_id: str) -> list[bytes]:
        """The stored bytes of each live example's user object, in insertion order."""
        rows = self.datasets[dataset_id].rows
        return [rows.raw(row) for row in rows.live_rows()]

    def stats(
        self, *, since: float = -math.inf, timeline: bool = False, unique: str | None = None
    ) -> dict[str, Any]:
        """What `GET /_fake/stats` answers: the counters and each dataset's row count.

        `traffic` has each dataset's requests since `since` (see `DatasetTraffic.summary`);
        `unique` names a row field whose spread over each dataset's rows `census` reports,
        to tell rows landed once from duplicates (it reads every row: ask at the end).
        """
        counters = self.counters
        in_flight = self.post_examples_requests - counters.posts_answered - counters.drops
        body = {
            "post_examples_requests": self.post_examples_requests,
            **dataclasses.asdict(counters),
            "posts_in_flight": in_flight,
            "datasets": {dataset_id: d.rows.count for dataset_id, d in self.datasets.items()},
            "traffic": {
                dataset_id: traffic.summary(since, timeline=timeline)
                for dataset_id, traffic in self.traffic.items()
            },
        }
        if unique is not None:
            body["unique"] = {
                dataset_id: census(self.raw_examples(dataset_id), unique)
                for dataset_id in self.datasets
            }
        return body

    def example_count(self, dataset_id: str) -> int:
        """How many live examples a dataset holds."""
        return self.datasets[dataset_id].rows.count
