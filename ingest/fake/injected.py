"""The faults the fake server injects around its handlers, and the counters that show them.

Before a /v2 handler runs: an outage window (503 for everything), a 429 storm,
then the rate limit. After an append has stored its rows: a 503, a dropped
connection or a stall, the three ways a client is left not knowing whether
its rows landed. `Counters` let a test see from outside (`/_fake/stats`) which
of these moments the server is in, e.g. "a commit happened and its answer is
still pending", before it kills the client; `PATCH /_fake/faults` lets a test
re-arm a server that runs in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web

from ingest.fake.faults import (
    RATE_LIMIT_MODES,
    FaultDice,
    Faults,
    FixedWindow,
    TokenBucket,
    retry_after_header,
)
from ingest.fake.problems import Problem

if TYPE_CHECKING:
    from ingest.fake.storage import FakeArize

STALL_RELEASE: Final = web.AppKey("stall_release", asyncio.Event)


class Dropped(Exception):
    """Raised by a handler to close the connection without answering."""


@dataclass(slots=True)
class Counters:
    """What the fake server has done, for tests that must know the moment they are in.

    Mutable, unlike the project's data types: the server counts into it as it goes.
    """

    v2_requests: int = 0
    """Every /v2 request received, whatever its answer."""
    commits: int = 0
    """POST examples that stored rows (whatever the client was then told)."""
    posts_answered: int = 0
    """POST examples answered with an HTTP response, of any status."""
    searches: int = 0
    """POST examples/search requests received."""
    searched_examples: int = 0
    """Examples the searches answered with: what a client read back to settle."""
    deletes: int = 0
    """DELETE examples requests received."""
    drops: int = 0
    """Connections closed without an answer after a commit."""
    stalls: int = 0
    """Stalls begun after a commit."""
    stalled_now: int = 0
    """Requests stalled right now between their commit and their answer."""
    outage_refusals: int = 0
    """Requests answered 503 because of an outage window."""
    storm_refusals: int = 0
    """Requests answered 429 because of a throttle storm."""
    rate_limit_refusals: int = 0
    """Requests answered 429 because of the rate limit."""
    accept_refusals: int = 0
    """POST examples answered 429 because the dataset holds `accept_rows` rows."""


def install(app: web.Application, state: FakeArize) -> None:
    """Give `app` the event that ends every stall at shutdown, /_fake/stats and /_fake/faults."""
    app[STALL_RELEASE] = asyncio.Event()

    async def release(app: web.Application) -> None:
        app[STALL_RELEASE].set()

    # on_shutdown runs before aiohttp waits (up to 60 s) for handlers to finish.
    app.on_shutdown.append(release)

    async def faults_endpoint(request: web.Request) -> web.Response:
        if request.method == "PATCH":
            try:
                change_faults(state.faults, orjson.loads(await request.read()))
            except orjson.JSONDecodeError:
                return Problem(400, "the body is not JSON").response(request.path)
            except Problem as problem:
                return problem.response(request.path)
        return web.json_response(faults_json(state.faults), dumps=_dumps)

    async def stats_endpoint(request: web.Request) -> web.Response:
        query = request.query
        try:
            since = float(query.get("since", "-inf"))
        except ValueError:
            return Problem(400, "`since` is monotonic seconds, e.g. 1234.5").response(request.path)
        stats = state.stats(
            since=since, timeline=query.get("timeline") == "1", unique=query.get("unique")
        )
        return web.json_response(stats, dumps=_dumps)

    app.router.add_get("/_fake/stats", stats_endpoint)
    app.router.add_get("/_fake/faults", faults_endpoint)
    app.router.add_patch("/_fake/faults", faults_endpoint)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def start_window(seconds: float) -> float:
    """The monotonic deadline of a window of `seconds` starting now."""
    return time.monotonic() + seconds


def throttled(faults: Faults, detail: str, wait: float) -> Problem:
    """A 429 whose Retry-After says `wait` (or the configured value), unless none is sent."""
    headers = {"Retry-After": retry_after_header(faults, wait)} if faults.send_retry_after else {}
    return Problem(429, detail, headers=headers)


def refuse_before_handler(
    faults: Faults,
    counters: Counters,
    limiters: tuple[TokenBucket, FixedWindow],
    *,
    is_append: bool,
) -> None:
    """Raise the Problem an outage, a storm or the rate limit answers, if any."""
    now = time.monotonic()
    after = faults.outage_after_requests
    if faults.outage_seconds > 0 and (after is None or counters.v2_requests >= after):
        faults.outage_until, faults.outage_seconds = now + faults.outage_seconds, 0.0
    if faults.outage_until is not None and now < faults.outage_until:
        counters.outage_refusals += 1
        raise Problem(503, "the service is down for maintenance; nothing was stored")
    if faults.throttle_storm > 0 and is_append:
        faults.throttle_until, faults.throttle_storm = now + faults.throttle_storm, 0.0
    if faults.throttle_until is not None and now < faults.throttle_until:
        counters.storm_refusals += 1
        raise throttled(faults, "too many requests; slow down", faults.throttle_until - now)
    if faults.rate_limit is not None:
        bucket, window = limiters
        limiter = window if faults.rate_limit_mode == "window" else bucket
        wait = limiter.take(faults.rate_limit)
        if wait > 0:
            counters.rate_limit_refusals += 1
            raise throttled(
                faults, f"rate limit of {faults.rate_limit:g} requests/s exceeded", wait
            )


async def after_commit(
    faults: Faults, counters: Counters, dice: FaultDice, release: asyncio.Event
) -> None:
    """Count a commit, then fail, drop or stall its answer as the faults say."""
    counters.commits += 1
    if counters.commits in faults.stall_after_commit_at:
        await _stall(faults, counters, release)
    elif dice.roll(faults, faults.fail_after_commit_rate):
        raise Problem(503, "service temporarily unavailable")
    elif dice.roll(faults, faults.drop_after_commit_rate):
        counters.drops += 1
        raise Dropped
    elif dice.roll(faults, faults.stall_after_commit_rate):
        await _stall(faults, counters, release)


async def _stall(faults: Faults, counters: Counters, release: asyncio.Event) -> None:
    counters.stalls += 1
    counters.stalled_now += 1
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), faults.stall_seconds)
    finally:
        counters.stalled_now -= 1
    if release.is_set():
        # The server is going away under the stalled request: it never gets an answer.
        counters.drops += 1
        raise Dropped


def close_connection(request: web.Request) -> web.Response:
    """Close the request's connection; the response returned is never sent."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=204)


def faults_json(faults: Faults) -> dict[str, object]:
    """The faults as JSON values, as `GET /_fake/faults` answers them."""
    body = dataclasses.asdict(faults)
    body["stall_after_commit_at"] = sorted(faults.stall_after_commit_at)
    return body


def change_faults(faults: Faults, changes: object) -> None:
    """Set the fields named in `changes` (a JSON object); Problem 400 for a bad one.

    It lets a test re-arm a fake server running in another process, e.g.
    `{"stall_after_commit_at": [7]}` or `{"outage_seconds": 2}` (from the next request).
    """
    if not isinstance(changes, dict):
        raise Problem(400, "send a JSON object of Faults fields")
    hints = typing.get_type_hints(Faults)
    checked: dict[str, object] = {}  # all checked before any is set: a refusal changes none
    for name, value in changes.items():
        if name not in hints or name.endswith("_until"):
            raise Problem(400, f"{name!r} is not a fault that can be set")
        allowed = typing.get_args(hints[name]) or (hints[name],)
        if name == "rate_limit_mode":
            if value not in RATE_LIMIT_MODES:
                raise Problem(400, f"`rate_limit_mode` is one of {', '.join(RATE_LIMIT_MODES)}")
        elif name == "stall_after_commit_at":
            if not isinstance(value, list) or not all(type(k) is int for k in value):
                raise Problem(400, "`stall_after_commit_at` takes a list of commit numbers")
            value = frozenset(value)
        elif not (
            (value is None and type(None) in allowed)
            or (type(value) is bool and bool in allowed)
            or (type(value) in (int, float) and float in allowed)
            or (type(value) in (int, str) and type(value) in allowed)
        ):
            raise Problem(400, f"{name!r} cannot be {value!r}")
        checked[name] = float(value) if type(value) is int and float in allowed else value
    for name, value in checked.items():
        setattr(faults, name, value)
