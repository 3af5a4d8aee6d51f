"""What each dataset's clients sent, by the server's clock, for benchmarks to check from outside.

A benchmark must judge a client by what reached the server, not by what the client
says of itself: how many requests arrived in any one second, how many were answered
429, when the first append of a run arrived, how many requests a second were accepted
over a run. `DatasetTraffic` keeps one arrival time (`time.monotonic()`, which on Linux
is one clock for every process, so a benchmark can compare it with its own) and one
status per /v2 request naming the dataset, a few bytes each.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter
from collections.abc import Iterable
from typing import Any

import orjson

PENDING = -1
"""The status of a request not answered yet."""


class DatasetTraffic:
    """The /v2 requests that named one dataset, in order of arrival.

    >>> traffic = DatasetTraffic()
    >>> traffic.answer(traffic.arrive(10.0, is_append=True), 201)
    >>> traffic.summary()["accepted"]
    1
    """

    __slots__ = ("_appends", "_arrivals", "_statuses")

    def __init__(self) -> None:
        self._arrivals = array("d")
        self._statuses = array("h")
        self._appends = bytearray()  # 1 for a POST examples

    def arrive(self, now: float, *, is_append: bool) -> int:
        """Record a request arriving at `now`; return its index for `answer`."""
        self._arrivals.append(now)
        self._statuses.append(PENDING)
        self._appends.append(is_append)
        return len(self._arrivals) - 1

    def answer(self, index: int, status: int) -> None:
        """Record the status request `index` was answered with (0: closed, no answer)."""
        self._statuses[index] = status

    def summary(self, since: float = -math.inf, *, timeline: bool = False) -> dict[str, Any]:
        """Counts over the requests that arrived at or after `since` (monotonic seconds).

        `max_in_any_second` is the most arrivals in any sliding window [t, t + 1 s),
        `max_in_a_clock_second` the most in one whole second of the clock, as a fixed
        window limiter counts. `timeline` adds `accepted_per_second`: 2xx answers per
        second, by arrival, from the first request counted.
        """
        start = bisect.bisect_left(self._arrivals, since)
        times = self._arrivals[start:]
        statuses = self._statuses[start:]
        appends = self._appends[start:]
        append_times = [t for t, is_append in zip(times, appends, strict=True) if is_append]
        body: dict[str, Any] = {
            "requests": len(times),
            "appends": len(append_times),
            "accepted": sum(1 for s in statuses if 200 <= s < 300),
            "throttled": statuses.count(429),
            "first_request": times[0] if times else None,
            "first_append": append_times[0] if append_times else None,
            "last_append": append_times[-1] if append_times else None,
            "max_in_any_second": _max_in_sliding_second(times),
            "max_in_a_clock_second": max(Counter(map(math.floor, times)).values(), default=0),
        }
        if timeline:
            per_second = [0] * (math.floor(times[-1] - times[0]) + 1 if times else 0)
            for t, status in zip(times, statuses, strict=True):
                if 200 <= status < 300:
                    per_second[math.floor(t - times[0])] += 1
            body["accepted_per_second"] = per_second
        return body


def _max_in_sliding_second(times: array[float]) -> int:
    best = 0
    first = 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


def census(raws: Iterable[bytes], field: str) -> dict[str, Any]:
    """How the values of top-level `field` spread over stored rows: each once, or not.

    A benchmark writes a distinct integer into each row it sends; the rows landed
    exactly once when `rows == distinct == expected` and the values span 0..expected-1.
    """
    rows = 0
    values: set[object] = set()
    for raw in raws:
        rows += 1
        value = orjson.loads(raw).get(field)
        if value is not None:
            values.add(value)
    numbers = [v for v in values if type(v) is int]
    return {
        "field": field,
        "rows": rows,
        "distinct": len(values),
        "min": min(numbers, default=None),
        "max": max(numbers, default=None),
    }
