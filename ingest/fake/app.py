"""The aiohttp application: Arize's datasets REST API over a `FakeArize` state.

Every /v2 request passes, in order: the request log and counters, the added
latency, an outage (503), a throttle storm or the rate limit (429), the API key
check (401), then its handler; an append that stored its rows may then lose its
answer (`injected.after_commit`). Handlers raise `Problem` for every refusal,
rendered as `application/problem+json`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
from aiohttp import web

from ingest.fake.filters import FilterError, compile_filter
from ingest.fake.injected import (
    STALL_RELEASE,
    Counters,
    Dropped,
    after_commit,
    close_connection,
    install,
    refuse_before_handler,
    throttled,
)
from ingest.fake.payload import (
    MAX_EXAMPLES_PER_REQUEST,
    Body,
    encode_examples,
    example_list,
    limit_value,
    optional_str,
    parse_stored,
    refuse_too_deep,
    required_str,
)
from ingest.fake.problems import Problem
from ingest.fake.storage import Dataset, DatasetVersion, FakeArize, RequestLogEntry
from ingest.fake.traffic import DatasetTraffic

STATE: Final = web.AppKey("state", FakeArize)
# Far above any body the real API takes; `Faults.max_body_bytes` imposes the real limit.
CLIENT_MAX_SIZE: Final = 256 * 1024 * 1024
EXAMPLES_PAGE_MAX: Final = 500
DATASETS_PAGE_MAX: Final = 100
DEFAULT_PAGE: Final = 50
INSERT_ROUTE: Final = "insert_dataset_examples"
SEARCH_ROUTE: Final = "search_dataset_examples"
DELETE_ROUTE: Final = "delete_dataset_examples"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(state: FakeArize) -> web.Application:
    """Build the fake Arize application around `state`."""
    app = web.Application(middlewares=[_fake_api], client_max_size=CLIENT_MAX_SIZE)
    app[STATE] = state
    install(app, state)
    examples = "/v2/datasets/{dataset_id}/examples"
    app.router.add_get("/v2/datasets", _list_datasets)
    app.router.add_post("/v2/datasets", _create_dataset)
    app.router.add_get("/v2/datasets/{dataset_id}", _get_dataset)
    app.router.add_patch("/v2/datasets/{dataset_id}", _rename_dataset)
    app.router.add_delete("/v2/datasets/{dataset_id}", _delete_dataset)
    app.router.add_post(examples, _insert_examples, name=INSERT_ROUTE)
    app.router.add_get(examples, _list_examples)
    app.router.add_patch(examples, _update_examples)
    app.router.add_delete(examples, _delete_examples, name=DELETE_ROUTE)
    app.router.add_post(examples + "/search", _search_examples, name=SEARCH_ROUTE)
    return app


@web.middleware
async def _fake_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    status = 500
    is_append = request.match_info.route.name == INSERT_ROUTE and request.method == "POST"
    dataset_id = request.match_info.get("dataset_id")
    traffic = None
    if dataset_id is not None and request.path.startswith("/v2/"):
        traffic = state.traffic.setdefault(dataset_id, DatasetTraffic())
        arrival = traffic.arrive(time.monotonic(), is_append=is_append)
    try:
        if request.path.startswith("/v2/"):
            response = await _through_faults(request, handler, state, is_append)
        else:
            response = await handler(request)
        status = response.status
        return response
    except Dropped:
        status = 0  # no answer at all
        return close_connection(request)
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if is_append and status != 0:
            state.counters.posts_answered += 1
        if traffic is not None:
            traffic.answer(arrival, status)
        state.requests.append(
            RequestLogEntry(time.monotonic(), request.method, request.path, status)
        )


async def _through_faults(
    request: web.Request, handler: Handler, state: FakeArize, is_append: bool
) -> web.StreamResponse:
    counters = state.counters
    counters.v2_requests += 1
    route_name = request.match_info.route.name
    if is_append:
        state.post_examples_requests += 1
    elif route_name == SEARCH_ROUTE:
        counters.searches += 1
    elif route_name == DELETE_ROUTE:
        counters.deletes += 1
    faults = state.faults
    try:
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        refuse_before_handler(faults, counters, (state.bucket, state.window), is_append=is_append)
        if request.headers.get("Authorization") != f"Bearer {state.api_key}":
            raise Problem(401, "missing or invalid API key in the Authorization header")
        return await handler(request)
    except web.HTTPException as exc:
        # Unknown routes and methods still answer in the API's own error format.
        problem = Problem(exc.status, exc.reason)
        return problem.response(request.rel_url.raw_path)
    except Problem as problem:
        return problem.response(request.rel_url.raw_path)


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _raw_body(request: web.Request) -> bytes:
    raw = await request.read()
    limit = request.app[STATE].faults.max_body_bytes
    if limit is not None and len(raw) > limit:
        # What Arize answers to a large body: a bare 500, not a 413.
        raise Problem(500, "internal error while processing the request")
    return raw


async def _required_body(request: web.Request) -> Body:
    return Body(await _raw_body(request))


def _dataset(request: web.Request) -> Dataset:
    # match_info is percent-decoded, and aiohttp routes on a path that keeps
    # %2F encoded, so an id holding "/" arrives whole.
    dataset_id = request.match_info["dataset_id"]
    dataset = request.app[STATE].datasets.get(dataset_id)
    if dataset is None:
        raise Problem(404, f"dataset {dataset_id!r} not found")
    return dataset


def _version(dataset: Dataset, version_id: str | None) -> DatasetVersion:
    try:
        return dataset.version(version_id)
    except KeyError:
        raise Problem(
            404, f"dataset version {version_id!r} not found in dataset {dataset.id!r}"
        ) from None


def _encode_cursor(kind: str, position: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode()


def _decode_cursor(kind: str, cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        found, _, position = base64.urlsafe_b64decode(cursor).decode().partition(":")
        if found == kind:
            return int(position)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise Problem(400, f"invalid cursor {cursor!r}")


def _pagination(kind: str, next_position: int | None) -> dict[str, Any]:
    if next_position is None:
        return {"has_more": False}
    return {"has_more": True, "next_cursor": _encode_cursor(kind, next_position)}


async def _list_datasets(request: web.Request) -> web.Response:
    state = request.app[STATE]
    query = request.query
    limit = limit_value(query.get("limit"), default=DEFAULT_PAGE, maximum=DATASETS_PAGE_MAX)
    before = _decode_cursor("dataset", query.get("cursor"))
    space_id = query.get("space_id")
    name = query.get("name", "").lower()
    # The fake has no named spaces, so `space_name` is accepted and ignored.
    matches = (
        dataset
        for dataset in sorted(state.datasets.values(), key=lambda d: d.number, reverse=True)
        if (before is None or dataset.number < before)
        and (not space_id or dataset.space_id == space_id)
        and name in dataset.name.lower()
    )
    page = list(itertools.islice(matches, limit + 1))
    more = page[limit].number + 1 if len(page) > limit else None
    return _json(
        {
            "datasets": [dataset.to_json(with_versions=False) for dataset in page[:limit]],
            "pagination": _pagination("dataset", more),
        }
    )


async def _create_dataset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await _required_body(request)
    name = required_str(body, "name")
    space_id = required_str(body, "space_id")
    examples = example_list(body)
    if state.find_by_name(space_id, name) is not None:
        raise Problem(409, f"a dataset named {name!r} already exists in space {space_id!r}")
    dataset = state.datasets[state.create_dataset(name=name, space_id=space_id)]
    state.append(dataset, dataset.version(None), encode_examples(body, examples))
    return _json(dataset.to_json(), status=201)


async def _get_dataset(request: web.Request) -> web.Response:
    return _json(_dataset(request).to_json())


async def _rename_dataset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dataset = _dataset(request)
    name = required_str(await _required_body(request), "name")
    holder = state.find_by_name(dataset.space_id, name)
    if holder is not None and holder is not dataset:
        raise Problem(409, f"a dataset named {name!r} already exists in this space")
    dataset.name = name
    dataset.updated_at = state.clock.take()
    return _json(dataset.to_json())


async def _delete_dataset(request: web.Request) -> web.Response:
    dataset = _dataset(request)
    del request.app[STATE].datasets[dataset.id]
    return web.Response(status=204)


async def _insert_examples(request: web.Request) -> web.Response:
    state = request.app[STATE]
    faults = state.faults
    raw = await _raw_body(request)
    if state.dice.roll(faults, faults.fail_rate):
        raise Problem(503, "service temporarily unavailable; nothing was stored")
    dataset = _dataset(request)
    version = _version(dataset, request.query.get("dataset_version_id"))
    body = Body(raw)
    examples = example_list(body)
    if faults.accept_rows is not None and dataset.rows.count + len(examples) > faults.accept_rows:
        state.counters.accept_refusals += 1
        raise throttled(faults, f"the dataset takes {faults.accept_rows} rows in all", 1.0)
    if faults.refuse_field is not None:
        for index, example in enumerate(examples):
            if faults.refuse_field in example:
                raise Problem(422, f"examples[{index}]: field `{faults.refuse_field}` is refused")
    example_ids = state.append(dataset, version, encode_examples(body, examples))
    await after_commit(faults, state.counters, state.dice, request.app[STALL_RELEASE])
    reply = dataset.to_json(with_versions=False)
    reply["dataset_version_id"] = version.id
    reply["example_ids"] = example_ids
    return _json(reply, status=201)


def _examples_page(
    dataset: Dataset,
    start: int,
    limit: int,
    keep: Callable[[int], bool] | None,
    searched: Counters | None = None,
) -> web.Response:
    rows = dataset.rows
    live = rows.live_rows(start)
    picked = list(itertools.islice(live if keep is None else filter(keep, live), limit + 1))
    more = picked[limit - 1] + 1 if len(picked) > limit else None
    if searched is not None:
        searched.searched_examples += min(len(picked), limit)
    pagination = orjson.dumps(_pagination("row", more))
    items = b",".join(rows.render(row) for row in picked[:limit])
    body = b'{"examples":[' + items + b'],"pagination":' + pagination + b"}"
    return web.Response(body=body, content_type="application/json")


async def _list_examples(request: web.Request) -> web.Response:
    dataset = _dataset(request)
    _version(dataset, request.query.get("dataset_version_id"))
    limit = limit_value(request.query.get("limit"), default=DEFAULT_PAGE, maximum=EXAMPLES_PAGE_MAX)
    start = _decode_cursor("row", request.query.get("cursor")) or 0
    return _examples_page(dataset, start, limit, None)


async def _search_examples(request: web.Request) -> web.Response:
    dataset = _dataset(request)
    raw = await _raw_body(request)
    counters = request.app[STATE].counters
    if not raw.strip():
        return _examples_page(dataset, 0, DEFAULT_PAGE, None, counters)
    body = Body(raw)
    _version(dataset, optional_str(body, "dataset_version_id"))
    limit = limit_value(body.get("limit"), default=DEFAULT_PAGE, maximum=EXAMPLES_PAGE_MAX)
    start = _decode_cursor("row", optional_str(body, "cursor")) or 0
    text = optional_str(body, "filter")
    if text is not None and not request.app[STATE].faults.search_filters:
        if text.strip():
            raise Problem(400, "this server does not support `filter`; search without one")
        text = None
    if text is None:
        return _examples_page(dataset, start, limit, None, counters)
    try:
        predicate = compile_filter(text)
    except FilterError as exc:
        raise Problem(400, f"invalid filter: {exc}") from None
    rows = dataset.rows

    def keep(row: int) -> bool:
        record = parse_stored(rows.raw(row))
        record["id"] = rows.example_id(row)
        return predicate(record)

    return _examples_page(dataset, start, limit, keep, counters)


async def _update_examples(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dataset = _dataset(request)
    version = _version(dataset, request.query.get("dataset_version_id"))
    body = await _required_body(request)
    if optional_str(body, "new_version"):
        raise Problem(400, "the fake server does not support `new_version`; update in place")
    updates = example_list(body, allow_id=True)
    refuse_too_deep(updates)  # before any row changes: a refused update changes none
    dumps = body.dumper()
    rows = dataset.rows
    updated: list[str] = []
    stamp = state.clock.take()
    for update in updates:
        row = rows.find(update["id"])
        if row is None:
            continue  # the API ignores unknown ids and never upserts
        merged = parse_stored(rows.raw(row))
        merged.update((key, value) for key, value in update.items() if key != "id")
        rows.replace(row, dumps(merged), stamp)
        updated.append(update["id"])
    dataset.touch(stamp, version)
    reply = dataset.to_json(with_versions=False)
    reply["dataset_version_id"] = version.id
    reply["example_ids"] = updated
    return _json(reply)


async def _delete_examples(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dataset = _dataset(request)
    body = await _required_body(request)
    # Unlike the append, the delete names its version explicitly: no "latest".
    version = _version(dataset, required_str(body, "dataset_version_id"))
    example_ids = body.get("example_ids")
    if not isinstance(example_ids, list) or not all(isinstance(i, str) for i in example_ids):
        raise Problem(400, "`example_ids` is required and must be an array of strings")
    if not 1 <= len(example_ids) <= MAX_EXAMPLES_PER_REQUEST:
        raise Problem(
            422,
            f"`example_ids` must hold 1 to {MAX_EXAMPLES_PER_REQUEST} ids; got {len(example_ids)}",
        )
    if "" in example_ids or len(set(example_ids)) != len(example_ids):
        raise Problem(422, "`example_ids` must not hold empty or duplicate ids")
    rows = dataset.rows
    deleted: list[str] = []
    not_deleted: list[str] = []
    for example_id in example_ids:
        row = rows.find(example_id)
        if row is None:
            not_deleted.append(example_id)
        else:
            rows.delete(row)
            deleted.append(example_id)
    if deleted:
        dataset.touch(state.clock.take(), version)
    return _json(
        {"completed": True, "deleted_example_ids": deleted, "not_deleted_example_ids": not_deleted}
    )
