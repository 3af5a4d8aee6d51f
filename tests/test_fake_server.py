"""The fake Arize server behaves like the datasets API that `ingest` talks to."""

from __future__ import annotations

import asyncio
import email.utils
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from conftest import FakeService
from fakeproc import fake_process, fake_server_command, fake_server_env

import ingest.fake
from ingest.fake import FakeArize, Faults, main, serve
from ingest.fake.faults import FixedWindow, TokenBucket, retry_after_header
from ingest.fake.filters import FilterError, compile_filter
from ingest.fake.traffic import DatasetTraffic

PROBLEM_KEYS = {"status", "title", "type", "detail", "instance", "error_code"}


@pytest.fixture
async def http(fake: FakeService) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends the fixture's API key."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with aiohttp.ClientSession(fake.url, headers=headers) as session:
        yield session


def examples_path(dataset_id: str) -> str:
    """The examples path of a dataset, its id percent-encoded as a client must."""
    return f"/v2/datasets/{quote(dataset_id, safe='')}/examples"


async def post_examples(
    http: aiohttp.ClientSession, dataset_id: str, rows: list[dict[str, Any]]
) -> tuple[int, dict[str, Any]]:
    """POST rows and return (status, parsed body)."""
    async with http.post(examples_path(dataset_id), json={"examples": rows}) as response:
        return response.status, await response.json(content_type=None)


async def list_all(
    http: aiohttp.ClientSession, dataset_id: str, limit: int
) -> list[dict[str, Any]]:
    """Walk every page of the GET examples list."""
    found: list[dict[str, Any]] = []
    params = {"limit": str(limit)}
    while True:
        async with http.get(examples_path(dataset_id), params=params) as response:
            assert response.status == 200
            page = json.loads(await response.read())
        found += page["examples"]
        if not page["pagination"]["has_more"]:
            return found
        params["cursor"] = page["pagination"]["next_cursor"]


def assert_problem(status: int, body: dict[str, Any], expected: int) -> None:
    """The response is a problem+json body with the expected status."""
    assert status == expected, body
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == expected


def test_public_surface_is_sorted_and_complete() -> None:
    """The package re-exports the documented names under a sorted __all__."""
    assert ingest.fake.__all__ == sorted(ingest.fake.__all__)
    assert set(ingest.fake.__all__) == {
        "FakeArize",
        "Faults",
        "RequestLogEntry",
        "main",
        "make_app",
        "serve",
    }


@pytest.mark.parametrize("header", [None, "Bearer wrong", "test-key"])
async def test_requests_without_the_right_key_get_401(
    fake: FakeService, header: str | None
) -> None:
    """A missing or wrong bearer token is answered 401 problem+json and stores nothing."""
    headers = {} if header is None else {"Authorization": header}
    async with (
        aiohttp.ClientSession(fake.url, headers=headers) as session,
        session.post(examples_path(fake.dataset_id), json={"examples": [{"a": 1}]}) as response,
    ):
        assert response.content_type == "application/problem+json"
        assert_problem(response.status, await response.json(content_type=None), 401)
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_post_returns_201_and_ids_in_request_order(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """A good POST answers 201 with one uuid per example, in the order sent."""
    rows = [{"question": f"q{i}", "n": i} for i in range(5)]
    status, body = await post_examples(http, fake.dataset_id, rows)
    assert status == 201
    assert body["id"] == fake.dataset_id
    version = fake.state.datasets[fake.dataset_id].versions[-1].id
    assert body["dataset_version_id"] == version
    assert {"name", "space_id", "created_at", "updated_at"} <= body.keys()
    ids = body["example_ids"]
    assert all(uuid.UUID(i).version == 4 for i in ids)
    stored = fake.state.examples(fake.dataset_id)
    assert [e["id"] for e in stored] == ids
    assert [{k: e[k] for k in ("question", "n")} for e in stored] == rows


@pytest.mark.parametrize(("count", "expected"), [(0, 422), (1, 201), (1000, 201), (1001, 422)])
async def test_examples_per_request_must_be_1_to_1000(
    fake: FakeService, http: aiohttp.ClientSession, count: int, expected: int
) -> None:
    """Between 1 and 1000 examples are taken; 0 or 1001 are refused whole."""
    status, body = await post_examples(http, fake.dataset_id, [{"i": i} for i in range(count)])
    assert status == expected, body
    assert fake.state.example_count(fake.dataset_id) == (count if expected == 201 else 0)


@pytest.mark.parametrize(
    "field", ["id", "created_at", "updated_at", "time", "count", "source_record_line"]
)
async def test_reserved_fields_are_refused_with_index_and_field(
    fake: FakeService, http: aiohttp.ClientSession, field: str
) -> None:
    """A reserved top-level field gets 422 naming the example and field; nothing is stored."""
    rows: list[dict[str, Any]] = [{"a": 1}, {"b": 2, field: "x"}, {"c": 3}]
    status, body = await post_examples(http, fake.dataset_id, rows)
    assert_problem(status, body, 422)
    assert "examples[1]" in body["detail"]
    assert field in body["detail"]
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_reserved_names_are_allowed_when_nested(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Only top-level fields are reserved; nested objects may use any key."""
    status, _ = await post_examples(http, fake.dataset_id, [{"meta": {"id": 1, "time": 2}}])
    assert status == 201


@pytest.mark.parametrize(
    ("body", "expected", "detail"),
    [
        (b'{"examples": [{"a": 1}, {}]}', 422, "examples[1]"),
        (b'{"examples": [{"a": 1}, [1, 2]]}', 422, "examples[1]"),
        (b'{"examples": [{"a": 1}, "text"]}', 422, "examples[1]"),
        (b'{"examples": {"a": 1}}', 400, "examples"),
        (b'{"rows": [{"a": 1}]}', 400, "examples"),
        (b"[]", 400, "object"),
        (b'{"examples": [{"a": 1}', 400, "JSON"),
        (b'{"examples": [{"a": NaN}]}', 400, "JSON"),
        (b'{"examples": [{"a": 1e999, "b": 12345678901234567890}]}', 400, "JSON"),
    ],
)
async def test_malformed_bodies_are_refused(
    fake: FakeService, http: aiohttp.ClientSession, body: bytes, expected: int, detail: str
) -> None:
    """Empty or non-object examples get 422; a body of the wrong shape or not JSON gets 400."""
    headers = {"Content-Type": "application/json"}
    async with http.post(examples_path(fake.dataset_id), data=body, headers=headers) as response:
        problem = await response.json(content_type=None)
    assert_problem(response.status, problem, expected)
    assert detail in problem["detail"]
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_unknown_dataset_or_version_gets_404(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """An unknown dataset id or dataset_version_id is answered 404."""
    status, body = await post_examples(http, "RGF0YXNldDo5OTpub3Bl", [{"a": 1}])
    assert_problem(status, body, 404)
    path = examples_path(fake.dataset_id)
    params = {"dataset_version_id": "RGF0YXNldFZlcnNpb246OTk6bm9wZQ=="}
    async with http.post(path, json={"examples": [{"a": 1}]}, params=params) as response:
        assert_problem(response.status, await response.json(content_type=None), 404)
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_ids_with_slash_plus_and_equals_are_matched_decoded(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """A dataset id holding "/", "+" and "=" is found from its percent-encoded path."""
    assert {"/", "+", "="} <= set(fake.dataset_id)
    assert "%2F" in examples_path(fake.dataset_id)
    status, _ = await post_examples(http, fake.dataset_id, [{"a": 1}])
    assert status == 201
    async with http.get(f"/v2/datasets/{quote(fake.dataset_id, safe='')}") as response:
        assert response.status == 200
        assert (await response.json())["id"] == fake.dataset_id
    # A slash left unencoded changes the path, so the id is not found.
    async with http.get(f"/v2/datasets/{fake.dataset_id}") as response:
        assert response.status == 404


async def test_pagination_walks_every_row_once_in_order(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Paging with next_cursor returns every row exactly once, in insertion order."""
    ids: list[str] = []
    for start, count in ((0, 1000), (1000, 234)):
        status, body = await post_examples(
            http, fake.dataset_id, [{"i": i} for i in range(start, start + count)]
        )
        assert status == 201
        ids += body["example_ids"]
    for limit in (97, 500):
        rows = await list_all(http, fake.dataset_id, limit)
        assert [row["id"] for row in rows] == ids
        assert [row["i"] for row in rows] == list(range(1234))
        stamps = [row["created_at"] for row in rows]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


async def test_pages_stay_stable_when_rows_are_deleted_between_them(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Deleting an already-seen row between pages neither skips nor repeats a row."""
    _, body = await post_examples(http, fake.dataset_id, [{"i": i} for i in range(10)])
    ids = body["example_ids"]
    path = examples_path(fake.dataset_id)
    async with http.get(path, params={"limit": "4"}) as response:
        first = await response.json()
    delete = {"dataset_version_id": body["dataset_version_id"], "example_ids": ids[:2]}
    async with http.delete(path, json=delete) as response:
        assert response.status == 200
    cursor = first["pagination"]["next_cursor"]
    async with http.get(path, params={"limit": "100", "cursor": cursor}) as response:
        rest = await response.json()
    assert [row["id"] for row in rest["examples"]] == ids[4:]
    assert rest["pagination"] == {"has_more": False}


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "501"}, {"cursor": "!!"}])
async def test_bad_page_parameters_get_400(
    fake: FakeService, http: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    """A limit outside 1..500 or an unreadable cursor is answered 400."""
    async with http.get(examples_path(fake.dataset_id), params=params) as response:
        assert_problem(response.status, await response.json(content_type=None), 400)


async def test_search_applies_the_filter_across_pages(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Search returns only the rows the filter matches, paged like the list."""
    topics = ["algebra", "geometry", "arithmetic"]
    rows = [{"topic": topics[i % 3], "score": i / 10, "n": i} for i in range(30)]
    await post_examples(http, fake.dataset_id, rows)
    query = "score >= 0.5 AND topic = 'algebra' OR n = 1"
    found: list[dict[str, Any]] = []
    request: dict[str, Any] = {"filter": query, "limit": 2}
    while True:
        async with http.post(examples_path(fake.dataset_id) + "/search", json=request) as response:
            assert response.status == 200
            page = await response.json()
        found += page["examples"]
        if not page["pagination"]["has_more"]:
            break
        request["cursor"] = page["pagination"]["next_cursor"]
    expected = [
        r["n"] for r in rows if (r["score"] >= 0.5 and r["topic"] == "algebra") or r["n"] == 1
    ]
    assert [row["n"] for row in found] == expected


@pytest.mark.parametrize("query", ["score >>= 1", "topic = ", "AND x = 1", "x = 'open", "   "])
async def test_search_with_a_bad_filter_gets_400(
    fake: FakeService, http: aiohttp.ClientSession, query: str
) -> None:
    """A filter outside the supported language is answered 400 problem+json."""
    async with http.post(
        examples_path(fake.dataset_id) + "/search", json={"filter": query}
    ) as response:
        assert_problem(response.status, await response.json(content_type=None), 400)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("topic = 'algebra'", [0]),
        ("topic != 'algebra'", [1, 2]),
        ("score < 0.5", [0]),
        ("score <= 0.5 AND n > 0", [1]),
        ("n = 2 OR n = 0 AND topic = 'nope'", [2]),
        ("(n = 2 OR n = 0) AND topic = 'algebra'", [0]),
        ("meta.lang = 'fr'", [1]),
        ("\"odd key\" = 'it''s'", [2]),
        ("missing = null", [0, 1, 2]),
        ("flag = true", [0]),
        ("n > 'x'", []),
        ("topic = 'algebra' OR topic = 'geometry' OR topic = 'x'", [0, 1]),
        ("topic = 'algebra!' OR n = 0 OR meta.lang = 'fr'", [0, 1, 2]),
        ("n = '0' OR n = '1'", []),
    ],
)
def test_filter_language(query: str, expected: list[int]) -> None:
    """Comparisons, AND over OR, parentheses, dotted paths and quoting behave like SQL."""
    records = [
        {"n": 0, "topic": "algebra", "score": 0.1, "flag": True},
        {"n": 1, "topic": "geometry", "score": 0.5, "meta": {"lang": "fr"}},
        {"n": 2, "topic": "algebra!", "score": 0.9, "odd key": "it's"},
    ]
    predicate = compile_filter(query)
    assert [r["n"] for r in records if predicate(r)] == expected


def test_filter_rejects_ordering_on_null() -> None:
    """Ordering against null has no meaning and is refused."""
    with pytest.raises(FilterError):
        compile_filter("n < null")


async def test_delete_examples_is_idempotent(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Deleting ids twice reports them deleted, then not deleted, and removes them once."""
    _, body = await post_examples(http, fake.dataset_id, [{"i": i} for i in range(3)])
    ids = body["example_ids"]
    request = {"dataset_version_id": body["dataset_version_id"], "example_ids": ids[:2]}
    path = examples_path(fake.dataset_id)
    async with http.delete(path, json=request) as response:
        assert response.status == 200
        assert await response.json() == {
            "completed": True,
            "deleted_example_ids": ids[:2],
            "not_deleted_example_ids": [],
        }
    async with http.delete(path, json=request) as response:
        assert (await response.json())["not_deleted_example_ids"] == ids[:2]
    assert [e["id"] for e in fake.state.examples(fake.dataset_id)] == ids[2:]


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        ({"example_ids": ["a"]}, 400),
        ({"dataset_version_id": "VERSION", "example_ids": []}, 422),
        ({"dataset_version_id": "VERSION", "example_ids": ["a", "a"]}, 422),
        ({"dataset_version_id": "VERSION", "example_ids": ["a"] * 1001}, 422),
        ({"dataset_version_id": "RGF0YXNldFZlcnNpb246OTk6bm9wZQ==", "example_ids": ["a"]}, 404),
    ],
)
async def test_delete_examples_validates_its_body(
    fake: FakeService, http: aiohttp.ClientSession, request_body: dict[str, Any], expected: int
) -> None:
    """A delete needs a known version and 1..1000 distinct ids."""
    version = fake.state.datasets[fake.dataset_id].versions[-1].id
    if request_body.get("dataset_version_id") == "VERSION":
        request_body = {**request_body, "dataset_version_id": version}
    async with http.delete(examples_path(fake.dataset_id), json=request_body) as response:
        assert_problem(response.status, await response.json(content_type=None), expected)


async def test_patch_updates_known_ids_and_ignores_unknown(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """PATCH merges new fields into examples matched by id; unknown ids are skipped."""
    _, body = await post_examples(http, fake.dataset_id, [{"a": 1, "b": 2}])
    known, unknown = body["example_ids"][0], str(uuid.uuid4())
    update = {"examples": [{"id": known, "b": 3, "c": 4}, {"id": unknown, "a": 0}]}
    async with http.patch(examples_path(fake.dataset_id), json=update) as response:
        assert response.status == 200
        assert (await response.json())["example_ids"] == [known]
    (row,) = fake.state.examples(fake.dataset_id)
    assert (row["id"], row["a"], row["b"], row["c"]) == (known, 1, 3, 4)
    assert row["updated_at"] > row["created_at"]


async def test_values_survive_exactly(fake: FakeService, http: aiohttp.ClientSession) -> None:
    """Big integers, 1.0 versus 1, key order, unicode and nesting come back unchanged."""
    body = (
        '{"examples": [{"z": 12345678901234567890123, "a": 1.0, "m": 1,'
        ' "pi": 0.1428571428571428, "s": "h\u00e9llo \u2603 \\"q\\" \\u00e9",'
        ' "neg": -98765432109876543210, "nest": {"x": [1, 2.5, null]}, "t": true}]}'
    ).encode()
    headers = {"Content-Type": "application/json"}
    async with http.post(examples_path(fake.dataset_id), data=body, headers=headers) as response:
        assert response.status == 201
    (raw,) = fake.state.raw_examples(fake.dataset_id)
    assert b'"a":1.0' in raw and b'"m":1,' in raw
    assert b"12345678901234567890123" in raw and b"-98765432109876543210" in raw
    (row,) = await list_all(http, fake.dataset_id, 10)
    assert list(row)[3:] == ["z", "a", "m", "pi", "s", "neg", "nest", "t"]
    assert row["z"] == 12345678901234567890123 and isinstance(row["z"], int)
    assert row["neg"] == -98765432109876543210
    assert isinstance(row["a"], float) and isinstance(row["m"], int)
    assert row["pi"] == 0.1428571428571428
    assert row["s"] == 'h\u00e9llo \u2603 "q" \u00e9'
    assert row["nest"] == {"x": [1, 2.5, None]}
    assert fake.state.examples(fake.dataset_id) == [row]


async def test_fail_rate_answers_503_without_storing(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """With fail_rate 1 every POST gets 503 and nothing is stored, so a retry is safe."""
    fake.state.faults.fail_rate = 1.0
    for _ in range(3):
        status, body = await post_examples(http, fake.dataset_id, [{"a": 1}])
        assert_problem(status, body, 503)
    assert fake.state.example_count(fake.dataset_id) == 0
    assert fake.state.post_examples_requests == 3


async def test_fail_after_commit_stores_then_answers_503(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """With fail_after_commit_rate 1 the rows are stored and the answer is still 503."""
    fake.state.faults.fail_after_commit_rate = 1.0
    status, body = await post_examples(http, fake.dataset_id, [{"a": 1}, {"a": 2}])
    assert_problem(status, body, 503)
    assert [e["a"] for e in fake.state.examples(fake.dataset_id)] == [1, 2]


async def test_seeded_fail_rate_is_repeatable(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """The same seed gives the same sequence of failures."""
    outcomes: list[list[int]] = []
    for _ in range(2):
        fake.state.faults = Faults(fail_rate=0.5, seed=11)
        statuses = [(await post_examples(http, fake.dataset_id, [{"a": 1}]))[0] for _ in range(12)]
        outcomes.append(statuses)
        fake.state.faults = Faults()
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {201, 503}


async def test_rate_limit_answers_429_with_retry_after(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Beyond the rate limit a request gets 429 with a Retry-After, computed or configured."""
    fake.state.faults.rate_limit = 0.5
    path = examples_path(fake.dataset_id)
    async with http.get(path) as response:
        assert response.status == 200
    async with http.post(path, json={"examples": [{"a": 1}]}) as response:
        assert_problem(response.status, await response.json(content_type=None), 429)
        assert response.headers["Retry-After"] == "2"
    fake.state.faults.retry_after = 0.3
    async with http.get(path) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "0.3"
    assert fake.state.example_count(fake.dataset_id) == 0


def test_token_bucket_refills_at_the_rate() -> None:
    """The bucket holds max(1, rate) tokens and refills at `rate` per second."""
    now = [0.0]
    bucket = TokenBucket(clock=lambda: now[0])
    assert [bucket.take(2.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    now[0] = 0.5
    assert bucket.take(2.0) == 0.0
    assert bucket.take(2.0) == pytest.approx(0.5)


def test_fixed_window_admits_floor_rate_per_clock_second() -> None:
    """A window admits max(1, floor(rate)) takes per whole clock second, then waits for the next."""
    now = [7.25]
    window = FixedWindow(clock=lambda: now[0])
    assert [window.take(2.5) for _ in range(3)] == [0.0, 0.0, 0.75]
    now[0] = 7.99
    assert window.take(2.5) == pytest.approx(0.01)
    now[0] = 8.0
    assert window.take(0.5) == 0.0


async def test_window_mode_answers_429_without_retry_after_when_told(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """In window mode the limit counts per clock second; send_retry_after=False drops the header."""
    fake.state.window = FixedWindow(clock=lambda: 100.5)  # one second that never ends
    faults = fake.state.faults
    faults.rate_limit, faults.rate_limit_mode, faults.send_retry_after = 2.0, "window", False
    statuses = []
    for _ in range(3):
        async with http.post(examples_path(fake.dataset_id), json={"examples": [{"a": 1}]}) as r:
            statuses.append(r.status)
            assert "Retry-After" not in r.headers
    assert statuses == [201, 201, 429]
    assert fake.state.counters.rate_limit_refusals == 1
    faults.send_retry_after = True
    async with http.get(examples_path(fake.dataset_id)) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "1")


async def test_accept_rows_refuses_the_append_that_would_pass_it(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Once an append would take a dataset past accept_rows it gets 429 and stores nothing."""
    fake.state.faults.accept_rows = 3
    assert (await post_examples(http, fake.dataset_id, [{"a": 1}, {"a": 2}]))[0] == 201
    assert (await post_examples(http, fake.dataset_id, [{"a": 3}, {"a": 4}]))[0] == 429
    assert (await post_examples(http, fake.dataset_id, [{"a": 3}]))[0] == 201
    assert fake.state.example_count(fake.dataset_id) == 3
    assert fake.state.counters.accept_refusals == 1


def test_traffic_counts_sliding_and_clock_seconds_and_a_timeline() -> None:
    """The summary counts arrivals in any sliding second, per clock second, and 2xx per second."""
    traffic = DatasetTraffic()
    for at, status in [(10.6, 201), (10.9, 201), (11.1, 429), (11.5, 201), (13.0, 200)]:
        traffic.answer(traffic.arrive(at, is_append=status != 200), status)
    summary = traffic.summary(timeline=True)
    assert (summary["requests"], summary["appends"], summary["throttled"]) == (5, 4, 1)
    assert (summary["max_in_any_second"], summary["max_in_a_clock_second"]) == (4, 2)
    assert summary["accepted_per_second"] == [3, 0, 1]
    assert (summary["first_append"], summary["last_append"]) == (10.6, 11.5)
    assert traffic.summary(since=11.2)["requests"] == 2


async def test_stats_report_traffic_since_and_the_spread_of_a_unique_field(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """/_fake/stats reports each dataset's traffic since a moment, and a field's spread."""
    started = time.monotonic()
    await post_examples(http, fake.dataset_id, [{"n": 0}, {"n": 1}, {"n": 1}])
    async with aiohttp.ClientSession(fake.url) as anonymous:
        async with anonymous.get("/_fake/stats", params={"unique": "n"}) as response:
            stats = await response.json()
        async with anonymous.get("/_fake/stats", params={"since": "1e12"}) as response:
            later = await response.json()
        async with anonymous.get("/_fake/stats", params={"since": "soon"}) as response:
            assert response.status == 400
    traffic = stats["traffic"][fake.dataset_id]
    assert (traffic["requests"], traffic["accepted"], traffic["throttled"]) == (1, 1, 0)
    assert traffic["first_append"] >= started  # one monotonic clock for every process
    assert stats["unique"][fake.dataset_id] == {
        "field": "n", "rows": 3, "distinct": 2, "min": 0, "max": 1
    }  # fmt: skip
    assert later["traffic"][fake.dataset_id]["requests"] == 0


def test_subprocess_flags_set_window_mode_no_retry_after_and_accept_rows() -> None:
    """--rate-limit-mode window, --no-retry-after and --accept-rows reach the server's faults."""
    args = ["--api-key", "sub-key", "--dataset", SUB_DATASET, "--rate-limit", "1000"]
    flags = ["--rate-limit-mode", "window", "--no-retry-after", "--accept-rows", "1"]
    with fake_process(*args, *flags) as (url, _):
        assert [_urlopen(url, SUB_POST, ONE_ROW) for _ in range(2)] == [(201, ""), (429, "")]
        with urllib.request.urlopen(f"{url}/_fake/faults", timeout=10) as response:
            faults = json.loads(response.read())
        assert (faults["rate_limit_mode"], faults["send_retry_after"]) == ("window", False)


async def test_large_bodies_get_500(fake: FakeService, http: aiohttp.ClientSession) -> None:
    """A body over max_body_bytes gets HTTP 500, as Arize answers large bodies."""
    fake.state.faults.max_body_bytes = 200
    status, _ = await post_examples(http, fake.dataset_id, [{"text": "x" * 150}])
    assert status == 201
    status, _ = await post_examples(http, fake.dataset_id, [{"text": "x" * 250}])
    assert status == 500
    assert fake.state.example_count(fake.dataset_id) == 1


def nested(depth: int, *, big: bool = False) -> bytes:
    """JSON of an example ``depth`` objects deep (1 is flat); ``big``: with a 20-digit integer."""
    leaf = b"12345678901234567890" if big else b"1"
    return b'{"k":' * depth + leaf + b"}" * depth


async def post_raw(
    http: aiohttp.ClientSession, path: str, body: bytes, method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    """Send ``body`` as it is and return (status, parsed body)."""
    headers = {"Content-Type": "application/json"}
    async with http.request(method, path, data=body, headers=headers) as response:
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize("big", [False, True], ids=["orjson", "exact-integers"])
async def test_deep_nesting_is_refused_with_422_not_500(
    fake: FakeService, http: aiohttp.ClientSession, big: bool
) -> None:
    """An example nested past 254 levels gets a 422 naming it; one at 254 levels is stored."""
    path = examples_path(fake.dataset_id)
    body = b'{"examples":[{"a":1},' + nested(300, big=big) + b"]}"
    status, problem = await post_raw(http, path, body)
    assert_problem(status, problem, 422)
    assert "examples[1] is nested 300 levels deep; at most 254" in problem["detail"]
    assert fake.state.example_count(fake.dataset_id) == 0  # the batch is refused whole
    status, reply = await post_raw(http, path, b'{"examples":[' + nested(254, big=big) + b"]}")
    assert status == 201, reply
    [stored] = await list_all(http, fake.dataset_id, 10)
    assert stored["k"] == json.loads(nested(253, big=big))


async def test_deep_nesting_is_refused_on_create_and_update(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """A too-deep value in a dataset create or an example update is a 422 that changes nothing."""
    status, problem = await post_raw(
        http, "/v2/datasets", b'{"name":"deep","space_id":"c3A=","examples":[' + nested(300) + b"]}"
    )
    assert_problem(status, problem, 422)
    status, reply = await post_examples(http, fake.dataset_id, [{"a": 1}])
    [example_id] = reply["example_ids"]
    update = b'{"examples":[{"id":"%s","a":%s}]}' % (example_id.encode(), nested(260))
    status, problem = await post_raw(http, examples_path(fake.dataset_id), update, "PATCH")
    assert_problem(status, problem, 422)
    assert [e["a"] for e in fake.state.examples(fake.dataset_id)] == [1]


async def test_latency_delays_each_request(fake: FakeService, http: aiohttp.ClientSession) -> None:
    """Faults.latency adds its delay to every /v2 request."""
    fake.state.faults.latency = 0.1
    started = time.monotonic()
    async with http.get(examples_path(fake.dataset_id)) as response:
        assert response.status == 200
    assert time.monotonic() - started >= 0.1


async def test_dataset_lifecycle(fake: FakeService, http: aiohttp.ClientSession) -> None:
    """Datasets are created (name unique per space), listed newest first, read and deleted."""
    space = "U3BhY2U6MTphQmNE"
    created = []
    for name in ("alpha", "beta", "gamma"):
        request = {"name": name, "space_id": space, "examples": [{"q": name}]}
        async with http.post("/v2/datasets", json=request) as response:
            assert response.status == 201
            body = await response.json()
            assert body["versions"][0]["dataset_id"] == body["id"]
            created.append(body["id"])
    async with http.post("/v2/datasets", json=request) as response:
        assert_problem(response.status, await response.json(content_type=None), 409)
    empty = {"name": "empty", "space_id": space, "examples": []}
    async with http.post("/v2/datasets", json=empty) as response:
        assert response.status == 422
    listed: list[str] = []
    params = {"space_id": space, "limit": "2"}
    while True:
        async with http.get("/v2/datasets", params=params) as response:
            page = await response.json()
        listed += [d["id"] for d in page["datasets"]]
        if not page["pagination"]["has_more"]:
            break
        params["cursor"] = page["pagination"]["next_cursor"]
    assert listed == [*reversed(created), fake.dataset_id]
    target = f"/v2/datasets/{quote(created[0], safe='')}"
    async with http.get(target) as response:
        assert (await response.json())["name"] == "alpha"
    async with http.delete(target) as response:
        assert response.status == 204
    async with http.get(target) as response:
        assert response.status == 404


async def test_requests_are_logged_and_counted(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """Every request lands in the log, and /_fake/stats reports POSTs and row counts."""
    await post_examples(http, fake.dataset_id, [{"a": 1}, {"a": 2}])
    await post_examples(http, fake.dataset_id, [])
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{fake.url}/_fake/stats") as r:
        stats = await r.json()
    assert stats["post_examples_requests"] == 2
    assert stats["datasets"] == {fake.dataset_id: 2}
    assert (stats["commits"], stats["posts_answered"], stats["posts_in_flight"]) == (1, 2, 0)
    assert [(e.method, e.status) for e in fake.state.requests] == [
        ("POST", 201),
        ("POST", 422),
        ("GET", 200),
    ]


async def test_unknown_routes_answer_problem_json(http: aiohttp.ClientSession) -> None:
    """An unknown /v2 path gets a problem+json 404 rather than an HTML page."""
    async with http.get("/v2/nothing-here") as response:
        assert response.content_type == "application/problem+json"
        assert_problem(response.status, await response.json(content_type=None), 404)


async def test_serve_picks_a_free_port_each_time() -> None:
    """Two servers on port 0 get distinct ports and each answers."""
    state = FakeArize(api_key="k")
    async with serve(state) as first, serve(state) as second:
        assert first != second
        for url in (first, second):
            async with aiohttp.ClientSession() as s, s.get(f"{url}/_fake/stats") as response:
                assert response.status == 200


def test_subprocess_prints_its_url_and_serves() -> None:
    """`ingest fake-server --port 0` announces its URL, serves, and exits 0 on SIGTERM."""
    dataset_id = "RGF0YXNldDoxOmE/Yj4+"
    with fake_process("--api-key", "sub-key", "--dataset", dataset_id) as (url, proc):
        assert url.startswith("http://127.0.0.1:")
        status, stats = _post_and_stats(url, dataset_id, "sub-key")
        assert status == 201
        assert (stats["post_examples_requests"], stats["commits"]) == (1, 1)
        assert stats["datasets"] == {dataset_id: 1}
    assert proc.returncode == 0


def _post_and_stats(url: str, dataset_id: str, api_key: str) -> tuple[int, dict[str, Any]]:
    """POST one row with the stdlib client, then read /_fake/stats."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}{examples_path(dataset_id)}",
        data=b'{"examples": [{"a": 1}]}',
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status = response.status
    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as response:
        return status, json.loads(response.read())


def test_subprocess_without_api_key_exits_2() -> None:
    """Without --api-key or ARIZE_API_KEY the server refuses to start."""
    env = fake_server_env()
    env.pop("ARIZE_API_KEY", None)
    result = subprocess.run(
        fake_server_command(), env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "ARIZE_API_KEY" in result.stderr


def test_main_refuses_fail_rates_outside_0_to_1() -> None:
    """A fail rate that is not a fraction is a usage error."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", "--api-key", "k", "--fail-rate", "1.5"])
    assert exit_info.value.code == 2


# --- Faults that leave the client not knowing, windows, and the counters -------


async def fake_stats(url: str) -> dict[str, Any]:
    """Read /_fake/stats (no auth)."""
    async with aiohttp.ClientSession() as anonymous, anonymous.get(f"{url}/_fake/stats") as r:
        stats: dict[str, Any] = await r.json()
        return stats


async def wait_for_stat(url: str, key: str, value: int) -> dict[str, Any]:
    """Poll /_fake/stats until `key` reaches `value` (within 10 s) and return the stats."""
    for _ in range(1000):
        stats = await fake_stats(url)
        if stats[key] >= value:
            return stats
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} never reached {value}: {stats}")


async def test_drop_after_commit_stores_then_closes_without_an_answer(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """With drop_after_commit_rate 1 the rows are stored and the client sees a disconnect."""
    fake.state.faults.drop_after_commit_rate = 1.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_examples(http, fake.dataset_id, [{"a": 1}, {"a": 2}])
    assert [e["a"] for e in fake.state.examples(fake.dataset_id)] == [1, 2]
    stats = await fake_stats(fake.url)
    assert (stats["commits"], stats["drops"], stats["posts_answered"]) == (1, 1, 0)
    assert stats["posts_in_flight"] == 0
    assert fake.state.requests[0].status == 0  # logged as answered with nothing
    fake.state.faults.drop_after_commit_rate = 0.0
    status, _ = await post_examples(http, fake.dataset_id, [{"a": 3}])
    assert status == 201  # the same session reconnects


async def test_stall_after_commit_outlasts_the_client_timeout(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """A stalled commit stores its rows and answers only after the client has timed out."""
    fake.state.faults.stall_after_commit_rate = 1.0
    fake.state.faults.stall_seconds = 600.0  # longer than pytest's timeout: shutdown must end it
    with pytest.raises(TimeoutError):
        async with http.post(
            examples_path(fake.dataset_id),
            json={"examples": [{"a": 1}]},
            timeout=aiohttp.ClientTimeout(total=0.5),
        ):
            pass
    assert fake.state.example_count(fake.dataset_id) == 1
    stats = await fake_stats(fake.url)
    assert (stats["commits"], stats["stalls"], stats["stalled_now"]) == (1, 1, 1)
    assert (stats["posts_answered"], stats["posts_in_flight"]) == (0, 1)


async def test_stall_ends_with_the_late_answer_after_stall_seconds(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """A client that waits longer than stall_seconds gets the real 201."""
    fake.state.faults.stall_after_commit_rate = 1.0
    fake.state.faults.stall_seconds = 0.05
    status, body = await post_examples(http, fake.dataset_id, [{"a": 1}])
    assert status == 201 and len(body["example_ids"]) == 1
    stats = await fake_stats(fake.url)
    assert (stats["stalls"], stats["stalled_now"], stats["posts_answered"]) == (1, 0, 1)


async def test_server_shutdown_ends_a_stall_without_an_answer() -> None:
    """Stopping the server cuts a stall short: the client is disconnected, not kept waiting."""
    state = FakeArize(api_key="k", faults=Faults(stall_after_commit_at={1}, stall_seconds=600.0))
    dataset_id = state.create_dataset()
    headers = {"Authorization": "Bearer k"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with serve(state) as url:
            pending = asyncio.ensure_future(
                session.post(f"{url}{examples_path(dataset_id)}", json={"examples": [{"a": 1}]})
            )
            await wait_for_stat(url, "stalled_now", 1)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pending
    assert state.example_count(dataset_id) == 1
    assert (state.counters.stalled_now, state.counters.drops) == (0, 1)


async def test_stall_after_commit_at_stalls_only_that_commit(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """stall_after_commit_at {K} stalls the K-th storing POST; the stats show it pending."""
    fake.state.faults.stall_after_commit_at = {2}
    fake.state.faults.stall_seconds = 600.0
    fake.state.faults.fail_rate = 1.0  # a refused POST is not a commit and does not count
    assert (await post_examples(http, fake.dataset_id, [{"a": 0}]))[0] == 503
    fake.state.faults.fail_rate = 0.0
    assert (await post_examples(http, fake.dataset_id, [{"a": 1}]))[0] == 201
    stalled = asyncio.ensure_future(post_examples(http, fake.dataset_id, [{"a": 2}]))
    stats = await wait_for_stat(fake.url, "stalled_now", 1)
    assert (stats["commits"], stats["posts_answered"], stats["posts_in_flight"]) == (2, 2, 1)
    assert (await post_examples(http, fake.dataset_id, [{"a": 3}]))[0] == 201
    assert [e["a"] for e in fake.state.examples(fake.dataset_id)] == [1, 2, 3]
    stalled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled


async def test_seeded_drops_and_stalls_are_repeatable(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """The same seed drops and stalls the same requests, every time."""
    outcomes: list[list[str]] = []
    for _ in range(2):
        fake.state.faults = Faults(
            drop_after_commit_rate=0.4, stall_after_commit_rate=0.4, stall_seconds=0.0, seed=5
        )
        run: list[str] = []
        for _ in range(12):
            try:
                run.append(str((await post_examples(http, fake.dataset_id, [{"a": 1}]))[0]))
            except aiohttp.ServerDisconnectedError:
                run.append("dropped")
        outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"201", "dropped"}
    assert fake.state.counters.stalls > 0
    assert fake.state.counters.commits == 24  # aiohttp never resends a dropped POST itself


async def test_throttle_storm_starts_at_the_next_post_and_refuses_everything(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """An armed storm begins at the next POST and answers every request 429 until it ends."""
    fake.state.faults.throttle_storm = 30.0
    path = examples_path(fake.dataset_id)
    async with http.get(path) as response:
        assert response.status == 200  # armed, not yet started
    status, body = await post_examples(http, fake.dataset_id, [{"a": 1}])
    assert_problem(status, body, 429)
    for request in (http.get(path), http.post(path + "/search", json={})):
        async with request as response:
            assert_problem(response.status, await response.json(content_type=None), 429)
            assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert fake.state.faults.throttle_storm == 0.0  # consumed: one storm per setting
    assert fake.state.counters.storm_refusals == 3
    fake.state.faults.throttle_until = None  # a test may end it early
    assert (await post_examples(http, fake.dataset_id, [{"a": 2}]))[0] == 201
    assert fake.state.example_count(fake.dataset_id) == 1


async def test_throttle_storm_started_explicitly_sends_an_http_date(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """start_throttle_storm refuses at once, and Retry-After can be an RFC 9110 IMF-fixdate."""
    fake.state.faults.retry_after_http_date = True
    before = time.time()
    fake.state.start_throttle_storm(30.0)
    async with http.get(examples_path(fake.dataset_id)) as response:
        assert response.status == 429
        header = response.headers["Retry-After"]
    assert header.endswith(" GMT")
    moment = email.utils.parsedate_to_datetime(header)
    assert moment.tzinfo is not None
    assert before < moment.timestamp() <= time.time() + 31
    assert email.utils.format_datetime(moment, usegmt=True) == header


async def test_rate_limit_can_send_retry_after_as_a_date(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """The rate limiter's 429 honours retry_after_http_date too."""
    fake.state.faults.rate_limit = 0.01
    fake.state.faults.retry_after_http_date = True
    for expected in (200, 429):
        async with http.get(examples_path(fake.dataset_id)) as response:
            assert response.status == expected
    assert email.utils.parsedate_to_datetime(response.headers["Retry-After"]).tzinfo is not None


def test_retry_after_date_rounds_up_to_the_second() -> None:
    """A date has whole seconds, so the wait is rounded up, never shortened."""
    faults = Faults(retry_after=0.3, retry_after_http_date=True)
    assert retry_after_header(faults, 99.0, now=10.0) == "Thu, 01 Jan 1970 00:00:11 GMT"
    assert retry_after_header(Faults(), 1.2) == "2"


async def test_outage_answers_503_to_everything_and_keeps_the_data(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """During an outage every /v2 request gets 503 problem+json; afterwards the rows are there."""
    await post_examples(http, fake.dataset_id, [{"a": 1}])
    fake.state.start_outage(30.0)
    path = examples_path(fake.dataset_id)
    status, body = await post_examples(http, fake.dataset_id, [{"a": 2}])
    assert_problem(status, body, 503)
    for request in (http.get(path), http.get("/v2/datasets"), http.post(path + "/search")):
        async with request as response:
            assert_problem(response.status, await response.json(content_type=None), 503)
    assert (await fake_stats(fake.url))["outage_refusals"] == 4  # stats stay reachable
    fake.state.faults.outage_until = time.monotonic()  # the outage is over
    assert [e["a"] for e in await list_all(http, fake.dataset_id, 10)] == [1]


async def test_outage_after_requests_begins_at_that_request(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """outage_after_requests K makes the K-th /v2 request the first one refused."""
    fake.state.faults = Faults(outage_seconds=30.0, outage_after_requests=3)
    statuses = [(await post_examples(http, fake.dataset_id, [{"a": i}]))[0] for i in range(4)]
    assert statuses == [201, 201, 503, 503]
    assert fake.state.faults.outage_seconds == 0.0 and fake.state.faults.outage_until
    assert fake.state.example_count(fake.dataset_id) == 2


async def test_search_without_filter_support_refuses_filters_but_lists(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """With search_filters off a filter gets 400 problem+json; no filter still lists all."""
    await post_examples(http, fake.dataset_id, [{"k": "a"}, {"k": "b"}])
    fake.state.faults.search_filters = False
    search = examples_path(fake.dataset_id) + "/search"
    async with http.post(search, json={"filter": "k = 'a'"}) as response:
        assert_problem(response.status, await response.json(content_type=None), 400)
    for request_body in ({}, {"limit": 1}, {"filter": ""}):
        async with http.post(search, json=request_body) as response:
            assert response.status == 200
            page = await response.json()
        assert [e["k"] for e in page["examples"]] == ["a", "b"][: request_body.get("limit", 2)]
    assert fake.state.counters.searches == 4


async def test_search_selects_a_key_range_on_strings_and_quoted_fields(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """`>=` and `<` order strings, AND/OR combine them, and odd field names can be quoted."""
    rows = [{"ingest_key": f"k-{i:03d}", "my.key": f"v{i}", "odd-name!": i} for i in range(8)]
    await post_examples(http, fake.dataset_id, rows)
    queries = {
        "ingest_key >= 'k-002' AND ingest_key < 'k-005'": [2, 3, 4],
        "ingest_key < 'k-001' OR ingest_key >= 'k-007'": [0, 7],
        "\"my.key\" = 'v3' OR `my.key` = 'v6'": [3, 6],
        '"odd-name!" >= 6': [6, 7],
    }
    for query, expected in queries.items():
        async with http.post(
            examples_path(fake.dataset_id) + "/search", json={"filter": query}
        ) as response:
            assert response.status == 200, query
            found = (await response.json())["examples"]
        assert [e["odd-name!"] for e in found] == expected, query


async def test_counters_count_searches_deletes_and_answers(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """/_fake/stats counts commits, POSTs answered, searches (and what they answered), deletes."""
    _, body = await post_examples(http, fake.dataset_id, [{"a": 1}, {"a": 2}])
    path = examples_path(fake.dataset_id)
    async with http.post(path + "/search", json={"filter": "a = 1"}):
        pass
    request = {"dataset_version_id": body["dataset_version_id"], "example_ids": body["example_ids"]}
    async with http.delete(path, json=request):
        pass
    stats = await fake_stats(fake.url)
    names = ("commits", "posts_answered", "searches", "searched_examples", "deletes")
    assert {k: stats[k] for k in names} == {
        "commits": 1,
        "posts_answered": 1,
        "searches": 1,
        "searched_examples": 1,
        "deletes": 1,
    }
    assert stats["v2_requests"] == 3


async def test_faults_endpoint_reads_and_changes_the_faults(
    fake: FakeService, http: aiohttp.ClientSession
) -> None:
    """PATCH /_fake/faults sets the named fields and answers them all; a bad one changes none."""
    async with aiohttp.ClientSession(fake.url) as anonymous:
        change = {"stall_after_commit_at": [3, 2], "outage_seconds": 5, "search_filters": False}
        async with anonymous.patch("/_fake/faults", json=change) as response:
            assert response.status == 200
            shown = await response.json()
        assert shown["stall_after_commit_at"] == [2, 3] and shown["outage_seconds"] == 5.0
        assert fake.state.faults.stall_after_commit_at == {2, 3}
        assert fake.state.faults.search_filters is False
        for bad in ({"fail_rate": 0.5, "nope": 1}, {"outage_until": 1.0}, {"fail_rate": "x"}):
            async with anonymous.patch("/_fake/faults", json=bad) as response:
                assert_problem(response.status, await response.json(content_type=None), 400)
        async with anonymous.get("/_fake/faults") as response:
            assert (await response.json())["fail_rate"] == 0.0
    status, _ = await post_examples(http, fake.dataset_id, [{"a": 1}])
    assert status == 503  # the armed outage began at this request


@pytest.mark.parametrize(
    "flag",
    [
        ["--stall-after-commit-at", "0"],
        ["--outage-after-requests", "0", "--outage-seconds", "1"],
        ["--outage-after-requests", "3"],
        ["--drop-after-commit-rate", "2"],
        ["--stall-seconds", "-1"],
        ["--accept-rows", "-1"],
        ["--rate-limit", "5", "--rate-limit-mode", "sliding"],
    ],
)
def test_main_refuses_bad_fault_values(flag: list[str]) -> None:
    """Counts start at 1, rates are fractions, durations are not negative."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", "--api-key", "k", *flag])
    assert exit_info.value.code == 2


def _urlopen(url: str, path: str, body: bytes | None, timeout: float = 10) -> tuple[int, str]:
    """Send one request with the stdlib client; return (status, Retry-After or "")."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}{path}",
        data=body,
        headers={"Authorization": "Bearer sub-key", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Retry-After", "")
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Retry-After", "")


def _stats_of(url: str) -> dict[str, Any]:
    """Read /_fake/stats with the stdlib client."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/_fake/stats", timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def _patch_faults(url: str, changes: dict[str, Any]) -> None:
    """Change a running server's faults through PATCH /_fake/faults."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/_fake/faults", data=json.dumps(changes).encode(), method="PATCH"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


SUB_DATASET = "RGF0YXNldDoxOmE/Yj4+"
SUB_POST = examples_path(SUB_DATASET)
ONE_ROW = b'{"examples": [{"a": 1}]}'


def test_subprocess_flags_inject_storms_outages_and_filterless_search() -> None:
    """The CLI flags arm a dated 429 storm, an outage at request K, and filterless search."""
    base = ["--api-key", "sub-key", "--dataset", SUB_DATASET]
    storm = ["--throttle-storm", "600", "--retry-after-http-date"]
    with fake_process(*base, *storm) as (url, _):
        status, retry_after = _urlopen(url, SUB_POST, ONE_ROW)
        assert status == 429 and retry_after.endswith(" GMT")
    outage = ["--outage-after-requests", "2", "--outage-seconds", "600", "--no-search-filters"]
    with fake_process(*base, *outage) as (url, _):
        assert _urlopen(url, SUB_POST + "/search", b'{"filter": "a = 1"}')[0] == 400
        assert [_urlopen(url, SUB_POST, ONE_ROW)[0] for _ in range(2)] == [503, 503]
        stats = _stats_of(url)
        assert (stats["outage_refusals"], stats["searches"]) == (2, 1)


def test_subprocess_drop_and_stall_flags_then_a_prompt_sigterm() -> None:
    """A dropped commit gets no answer, and a stalled one does not hold up SIGTERM."""
    import http.client

    args = ["--api-key", "sub-key", "--dataset", SUB_DATASET]
    with fake_process(*args, "--drop-after-commit-rate", "1") as (url, _):
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            _urlopen(url, SUB_POST, ONE_ROW)
        assert _stats_of(url)["drops"] == 1
    stall = ["--stall-after-commit-at", "1", "--stall-seconds", "600"]
    with fake_process(*args, *stall) as (url, proc):
        with pytest.raises(TimeoutError):
            _urlopen(url, SUB_POST, ONE_ROW, timeout=0.5)
        stats = _stats_of(url)
        assert (stats["commits"], stats["stalled_now"], stats["posts_in_flight"]) == (1, 1, 1)
        _patch_faults(url, {"stall_after_commit_at": [3]})  # re-armed from outside the process
        assert _urlopen(url, SUB_POST, ONE_ROW)[0] == 201
        with pytest.raises(TimeoutError):
            _urlopen(url, SUB_POST, ONE_ROW, timeout=0.5)
        assert _stats_of(url)["stalls"] == 2
    assert proc.returncode == 0  # SIGTERM ended the stall; not killed after a timeout
