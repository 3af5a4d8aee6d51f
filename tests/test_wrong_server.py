"""Against servers that are not the API: redirects, web front ends, answers of the wrong shape.

Each is a small ``aiohttp.web`` app on 127.0.0.1 that misbehaves in one way a
wrong ``--base-url`` (http instead of https, a web front end, a proxy) would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from scripted import serving

import ingest
from ingest.checkpoint import read_journal

KEY = "wrong-server-key"
DATASET = "d3Jvbmc6c2VydmVyLzE="


async def a_dataset(request: web.Request) -> web.Response:
    """The preflight GET as the API answers it."""
    return web.json_response({"id": request.match_info["id"], "name": "d", "versions": []})


async def login_page(request: web.Request) -> web.Response:
    """What a web front end answers to anything: a page, 200."""
    return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")


def write_rows(path: Path, n: int) -> None:
    path.write_bytes(b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(n)))


def settings(url: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        api_key=KEY,
        input=str(tmp_path / "rows.jsonl"),
        checkpoint=str(tmp_path / "run.ckpt"),
        dataset_id=DATASET,
        base_url=url,
        batch_rows=5,
        concurrency=2,
        rate=0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    return {**base, **kw}


async def test_a_redirected_post_is_an_error_and_never_a_delivery(tmp_path: Path) -> None:
    """A POST answered 302 is not followed (as a GET that answers 200): it fails naming where."""
    listed = 0

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/v2/listing"})

    async def listing(request: web.Request) -> web.Response:
        nonlocal listed
        listed += 1
        return web.json_response({"examples": []})

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", a_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", redirect)
    app.router.add_get("/v2/listing", listing)
    write_rows(tmp_path / "rows.jsonl", 20)
    async with serving(app) as url:
        with pytest.raises(ingest.BaseUrlError) as info:
            await ingest.upload(**settings(url, tmp_path))
    message = str(info.value)
    assert "HTTP 302" in message and f"{url}/v2/listing" in message
    assert "check --base-url" in message
    assert info.value.exit_code == 5 and info.value.summary.rows_delivered == 0
    assert listed == 0
    state = read_journal(str(tmp_path / "run.ckpt"))
    assert (state.delivered_rows, state.finished) == (0, None) and state.in_flight


async def test_a_redirected_preflight_fails_before_any_post(tmp_path: Path) -> None:
    """A preflight GET answered 301 fails at once naming the Location; nothing is posted."""
    posts = 0

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": "/login?next=api"})

    async def post(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        return web.json_response({"example_ids": []}, status=201)

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", redirect)
    app.router.add_get("/login", login_page)
    app.router.add_post("/v2/datasets/{id}/examples", post)
    write_rows(tmp_path / "rows.jsonl", 5)
    async with serving(app) as url:
        with pytest.raises(ingest.BaseUrlError, match="preflight") as info:
            await ingest.upload(**settings(url, tmp_path))
    assert f"HTTP 301, a redirect to {url}/login?next=api" in str(info.value)
    assert posts == 0 and not (tmp_path / "run.ckpt").exists()


async def test_a_redirect_to_https_is_blamed_on_the_base_url_not_the_key(
    fake: Any, tmp_path: Path
) -> None:
    """A redirect to the API on another origin (http to https) says to fix --base-url, exit 5."""

    async def upgrade(request: web.Request) -> web.Response:
        return web.Response(status=301, headers={"Location": fake.url + request.raw_path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upgrade)
    write_rows(tmp_path / "rows.jsonl", 5)
    async with serving(app) as url:
        with pytest.raises(ingest.DeliveryError) as info:
            await ingest.upload(
                **settings(url, tmp_path, api_key=fake.api_key, dataset_id=fake.dataset_id)
            )
    assert type(info.value) is ingest.BaseUrlError and info.value.exit_code == 5
    assert "ARIZE_API_KEY" not in str(info.value)
    assert f"try --base-url {fake.url}" in str(info.value)
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_a_web_front_end_fails_at_the_preflight(tmp_path: Path) -> None:
    """A base URL answering 200 text/html to everything fails at the preflight, naming the URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", login_page)
    write_rows(tmp_path / "rows.jsonl", 50)
    async with serving(app) as url:
        with pytest.raises(ingest.BaseUrlError, match="preflight") as info:
            await ingest.upload(**settings(url, tmp_path))
    message = str(info.value)
    assert f"{url}/v2/datasets/" in message and "text/html" in message and "Sign in" in message
    assert "check --base-url" in message
    assert info.value.exit_code == 5 and info.value.summary.rows_delivered == 0
    assert not (tmp_path / "run.ckpt").exists()


FOUR_IDS = {"id": DATASET, "example_ids": ["a", "b", "c", "d"]}


async def test_the_cli_run_against_a_web_front_end_fails_with_nothing_delivered(
    tmp_path: Path,
) -> None:
    """`ingest run --json` against a web front end exits 5, says so, and counts 0 delivered."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", login_page)
    write_rows(tmp_path / "rows.jsonl", 1000)
    cmd = [sys.executable, "-m", "ingest", "run", "--json", "--rate", "0"]
    cmd += ["--input", str(tmp_path / "rows.jsonl"), "--dataset-id", DATASET]
    async with serving(app) as url:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [*cmd, "--base-url", url], env={**os.environ, "ARIZE_API_KEY": KEY}, check=False
            )
    summary = orjson.loads(done.stdout)
    assert done.returncode == 5, done.stderr
    assert (summary["status"], summary["rows_delivered"]) == ("failed", 0)
    assert b"text/html" in done.stderr and b"check --base-url" in done.stderr


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (lambda: web.json_response(FOUR_IDS, status=201), "4 example_ids for 5 rows"),
        (lambda: web.Response(text="<html>OK</html>", content_type="text/html"), "text/html"),
        (lambda: web.json_response({"example_ids": "abcde"}), "example_ids is a string"),
        (lambda: web.json_response({"example_ids": [None] * 5}), "5 of 5 example_ids are not"),
        (lambda: web.json_response({"example_ids": ["a", "b", ""] + ["c"] * 2}), "1 of 5"),
        (lambda: web.json_response({"example_ids": ["a", {}, "b", "c", "d"]}), "1 of 5"),
        (lambda: web.json_response({"example_ids": [1, 2, True, 4, 5]}), "1 of 5"),
        (lambda: web.json_response({"example_ids": ["a"] * 5}), "example_ids repeat"),
    ],
    ids=["four-ids-for-five-rows", "html", "a-string", "nulls", "empty", "object", "bool", "dup"],
)
async def test_a_2xx_that_is_not_the_apis_answer_is_an_unknown_outcome(
    tmp_path: Path, answer: Callable[[], web.Response], shown: str
) -> None:
    """A 2xx append without one example id per row stops the run; its batch is journaled unknown."""
    posts = 0

    async def append(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        return answer()

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", a_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    write_rows(tmp_path / "rows.jsonl", 20)
    async with serving(app) as url:
        with pytest.raises(ingest.BaseUrlError) as info:
            await ingest.upload(**settings(url, tmp_path, concurrency=1))
    message = str(info.value)
    assert f"{url}/v2/datasets/" in message and shown in message
    assert "check --base-url" in message and "looks them up before sending" in message
    assert info.value.exit_code == 5 and info.value.summary.rows_delivered == 0
    assert posts == 1
    state = read_journal(str(tmp_path / "run.ckpt"))
    assert (state.delivered_rows, state.done_batches, state.finished) == (0, 0, None)
    assert state.unknown_outcomes == 1 and [r["lines"] for r in state.in_flight] == [[1, 5]]


async def test_integer_example_ids_count_as_delivered(tmp_path: Path) -> None:
    """A 2xx with one distinct integer id per row is a delivery: integer ids are ids too."""
    next_id = 0

    async def append(request: web.Request) -> web.Response:
        nonlocal next_id
        examples = orjson.loads(await request.read())["examples"]
        ids = list(range(next_id, next_id + len(examples)))
        next_id += len(examples)
        return web.json_response({"id": DATASET, "example_ids": ids}, status=201)

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", a_dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    write_rows(tmp_path / "rows.jsonl", 12)
    async with serving(app) as url:
        summary = await ingest.upload(**settings(url, tmp_path))
    assert (summary.rows_delivered, next_id) == (12, 12)
