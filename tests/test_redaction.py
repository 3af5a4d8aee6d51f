"""The API key never leaves the process, even when a server echoes it back.

The servers here are small ``aiohttp.web`` apps that put the Authorization
header into their error bodies; ``ingest`` runs as users run it, as a
subprocess, and everything it writes is searched for the key.
"""

from __future__ import annotations

import base64
import html
import itertools
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path
from urllib.parse import quote

import anyio
import orjson
import pytest
from aiohttp import web
from scripted import serving
from test_cli import ingest_cmd

import ingest
from ingest.checkpoint import CheckpointJournal
from ingest.client import QUOTE_LIMIT
from ingest.fake import FakeArize, serve
from ingest.identity import fingerprint
from ingest.redact import redact

KEY = "sk-live/0123456789+abcdef"
DATASET = "cmVkYWN0OnRlc3Q="


async def run_ingest(
    tmp_path: Path, url: str, *args: str, key: str = KEY
) -> subprocess.CompletedProcess[bytes]:
    """``ingest run`` against ``url`` in a subprocess, the server answering meanwhile."""
    cmd = ingest_cmd(tmp_path, url, *args, dataset=DATASET)
    with anyio.fail_after(60):
        return await anyio.run_process(cmd, env={**os.environ, "ARIZE_API_KEY": key}, check=False)


def leaks(text: str) -> bool:
    """Whether ``text`` holds any part of the key, however escaped (each part is in every form)."""
    return "sk-live" in text or "0123456789" in text


def key_forms(key: str) -> dict[str, str]:
    """The key as servers quote it: JSON- or repr-escaped, percent-encoded (hex of either case)."""
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), quote(key, safe=""))
    return {
        "raw": key,
        "json-slash": orjson.dumps(key).decode()[1:-1].replace("/", "\\/"),
        "json-unicode": "".join(f"\\u{ord(c):04x}" if not c.isalnum() else c for c in key),
        "repr": repr(key)[1:-1],
        "quote-default": quote(key),
        "quote-all": quote(key, safe=""),
        "quote-lower-hex": lower_hex,
        "quote-default-lower-hex": lower_hex.replace("%2f", "/"),
    }


def accepting() -> web.Application:
    """A server that takes every row: the dataset exists, each POST gets one id per row."""
    ids = itertools.count()

    async def dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "d"})

    async def append(request: web.Request) -> web.Response:
        examples = orjson.loads(await request.read())["examples"]
        body = {"id": DATASET, "example_ids": [f"e{next(ids)}" for _ in examples]}
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    return app


def echoed(request: web.Request) -> str:
    """The Authorization header, twice: as sent and percent-encoded."""
    auth = request.headers.get("Authorization", "")
    return f"got {auth!r} ({quote(auth, safe='')})"


@pytest.mark.parametrize("as_json", [True, False], ids=["problem-json", "plain-text"])
async def test_a_401_echoing_the_key_shows_it_nowhere(tmp_path: Path, as_json: bool) -> None:
    """A 401 whose body quotes the Authorization header: neither stderr nor --json shows the key."""

    async def refuse(request: web.Request) -> web.Response:
        if as_json:
            problem = {"status": 401, "title": "Unauthorized", "detail": echoed(request)}
            return web.json_response(problem, status=401)
        return web.Response(status=401, text=echoed(request))

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", refuse)
    (tmp_path / "rows.jsonl").write_bytes(b'{"a": 1}\n')
    async with serving(app) as url:
        done = await run_ingest(tmp_path, url, "--json")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 3, err
    assert not leaks(out) and not leaks(err)
    assert "[redacted]" in err and "[redacted]" in orjson.loads(out)["message"]


async def test_5xx_and_422_bodies_echoing_the_key_stay_out_of_logs_and_rejects(
    tmp_path: Path,
) -> None:
    """With -v, a 500 and a 422 quoting the key leave it out of stderr, stdout and the rejects."""
    posts = itertools.count(1)
    ids = itertools.count()

    async def dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "d"})

    async def append(request: web.Request) -> web.Response:
        if next(posts) <= 2:  # two 500s in a row: the batch is halved, and that is logged
            return web.Response(status=500, text=f"upstream failed: {echoed(request)}")
        examples = orjson.loads(await request.read())["examples"]
        if any("poison" in example for example in examples):
            problem = {"status": 422, "title": "Unprocessable", "detail": echoed(request)}
            return web.json_response(problem, status=422)
        body = {"id": DATASET, "example_ids": [f"e{next(ids)}" for _ in examples]}
        return web.json_response(body, status=201)

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 1}\n{"i": 2}\n{"poison": 3}\n{"i": 4}\n')
    async with serving(app) as url:
        done = await run_ingest(
            tmp_path, url, "-v", "--json", "--batch-rows", "4", "--concurrency", "1", "--no-key"
        )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 6, err
    assert "halving it" in err and "[redacted]" in err
    rejects = (tmp_path / "run.rejects.jsonl").read_text()
    assert "[redacted]" in rejects
    for text in (out, err, rejects, (tmp_path / "run.ckpt").read_text()):
        assert not leaks(text)


def test_redact_leaves_no_start_of_the_key_at_a_cut() -> None:
    """A cut that falls inside the key keeps none of it; every quoted form is taken out."""
    text = "x" * 190 + KEY
    assert redact(text, KEY, limit=200) == "x" * 190 + "[redacted]"
    assert redact("y" * 195 + "Bearer " + KEY, KEY, limit=200) == "y" * 195 + "Beare"
    assert redact("x" * 196 + KEY[:5], KEY, limit=200) == "x" * 196
    assert redact(f"{KEY} {quote(KEY, safe='')}", KEY) == "[redacted] [redacted]"
    odd = "k\\e\"y's-long"
    quoted = f"{odd} {orjson.dumps(odd).decode()} {odd!r} {quote(odd, safe='')}"
    assert redact(quoted, odd) == "[redacted] \"[redacted]\" '[redacted]' [redacted]"


def test_a_short_test_key_does_not_blank_ordinary_words() -> None:
    """A key too short to be a real one (a test value like "k") leaves messages readable."""
    assert (
        redact("resuming from a.jsonl.ingest-1.ckpt", "k") == "resuming from a.jsonl.ingest-1.ckpt"
    )
    assert redact("Bearer s3cret-key-value", "s3cret-key-value") == "Bearer [redacted]"


def test_a_closed_stdout_is_not_a_traceback(tmp_path: Path) -> None:
    """`ingest status ... | true` ends quietly when the pipe's reader is gone, no traceback."""
    (tmp_path / "rows.jsonl").write_bytes(b'{"a": 1}\n')
    fp = fingerprint(str(tmp_path / "rows.jsonl"), "ds", None)
    journal, _ = CheckpointJournal.open(
        str(tmp_path / "run.ckpt"), fp, rejects_path=str(tmp_path / "rejects.jsonl")
    )
    journal.release()
    # `true` exits at once, so ingest writes its report into a pipe nobody reads.
    script = f'"{sys.executable}" -m ingest status --checkpoint "{tmp_path / "run.ckpt"}" | true'
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("form", sorted(key_forms(KEY)))
def test_redact_takes_out_the_key_in_every_form_a_server_may_quote_it(form: str) -> None:
    """The key with "/" and "+" in it is taken out raw, JSON- or repr-escaped, percent-encoded."""
    quoted = key_forms(KEY)[form]
    assert redact(f"you sent <{quoted}>, bye", KEY) == "you sent <[redacted]>, bye"


@pytest.mark.parametrize("form", sorted(key_forms(KEY)))
def test_a_cut_keeps_no_start_of_the_key_in_any_form(form: str) -> None:
    """A text cut just after the start of a quoted key, in any form, keeps none of it."""
    quoted = key_forms(KEY)[form]
    for n in range(1, len(quoted)):
        text = "x" * 50 + quoted[:n] + "y" * 500
        assert redact(text, KEY, limit=50 + n, ellipsis="...") == "x" * 50 + "...", quoted[:n]


def test_redact_takes_out_the_key_html_escaped_as_html_escape_writes_it() -> None:
    """A key holding each character ``html.escape`` changes is taken out HTML-escaped."""
    key = "k&e<y>q\"u'ote-12345"
    assert redact(f"<p>{html.escape(key)}</p>", key) == "<p>[redacted]</p>"
    assert redact(f"<p>{html.escape(key, quote=False)}</p>", key) == "<p>[redacted]</p>"


def test_redact_takes_out_any_bearer_token_or_authorization_value() -> None:
    """A bearer token or Authorization value is taken out whatever it is, the key or not."""
    assert redact("got Bearer other.token/x+y=", KEY) == "got Bearer [redacted]"
    assert (
        redact('{"authorization": "Bearer a\\/b"}', "") == '{"authorization": "Bearer [redacted]"}'
    )
    assert (
        redact("{'Authorization': 'Basic dXNlcjpw'}", "") == "{'Authorization': 'Basic [redacted]'}"
    )
    assert redact("next=Bearer%20abc%2Fdef&x=1", "") == "next=Bearer%20[redacted]&x=1"
    assert redact(f"Authorization: Bearer {KEY}", KEY) == "Authorization: Bearer [redacted]"
    assert redact("send the Authorization header", "") == "send the Authorization header"


@pytest.mark.parametrize("form", ["json-slash", "json-unicode", "quote-default-lower-hex"])
async def test_a_refusal_escaping_the_key_its_own_way_shows_it_nowhere(
    tmp_path: Path, form: str
) -> None:
    """A 400 body quoting the key as some encoders do leaves it out of every output and file."""

    async def dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "d"})

    async def refuse(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        body = f'{{"error_info": {{"token": "{key_forms(token)[form]}"}}}}'  # no "detail"
        return web.Response(status=400, text=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", dataset)
    app.router.add_post("/v2/datasets/{id}/examples", refuse)
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 1}\n{"i": 2}\n')
    async with serving(app) as url:
        done = await run_ingest(tmp_path, url, "-v", "--json", "--batch-rows", "1")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 6, err
    rejects = (tmp_path / "run.rejects.jsonl").read_text()
    assert rejects.count("[redacted]") == 2
    for text in (out, err, rejects, (tmp_path / "run.ckpt").read_text()):
        assert not leaks(text)


@pytest.mark.parametrize("form", ["quote-default", "quote-lower-hex"])
async def test_a_redirect_to_a_location_quoting_the_key_shows_it_nowhere(
    tmp_path: Path, form: str
) -> None:
    """A 302 whose Location percent-encodes the key keeps it out of the error and --json."""

    async def redirect(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return web.Response(status=302, headers={"Location": f"/login?t={key_forms(token)[form]}"})

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", redirect)
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 1}\n')
    async with serving(app) as url:
        done = await run_ingest(tmp_path, url, "--json")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 5, err
    assert "/login?t=[redacted]" in err and "/login?t=[redacted]" in orjson.loads(out)["message"]
    assert not leaks(out) and not leaks(err)


@pytest.mark.parametrize("key", ["rows_read", "k3y-in-a-path"], ids=["field-name", "path-part"])
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
async def test_a_key_equal_to_a_word_of_the_summary_leaves_the_summary_intact(
    tmp_path: Path, key: str, as_json: bool
) -> None:
    """Only the message is redacted: the summary's fields, numbers and paths stay as they are."""
    work = tmp_path / "k3y-in-a-path"
    work.mkdir()
    (work / "rows.jsonl").write_bytes(b'{"i": 1}\n{"i": 2}\n')
    async with serving(accepting()) as url:
        done = await run_ingest(work, url, *(["--json"] if as_json else []), key=key)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    if as_json:
        summary = orjson.loads(out)
        assert summary["rows_read"] == 2 and summary["checkpoint"] == str(work / "run.ckpt")
    else:
        assert "rows read:         2" in out and f"checkpoint {work / 'run.ckpt'}" in out


async def test_a_megabyte_refusal_is_quoted_short_everywhere(tmp_path: Path) -> None:
    """A 422 with a 1 MB detail quoting the key leaves a short reason, cut after the key is out."""

    async def dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "name": "d"})

    async def refuse(request: web.Request) -> web.Response:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        # The key straddles the cut: cutting before redacting would keep its start.
        detail = "y" * (QUOTE_LIMIT - 6) + token + "z" * 1_000_000
        return web.json_response({"status": 422, "detail": detail}, status=422)

    app = web.Application(client_max_size=1 << 24)
    app.router.add_get("/v2/datasets/{id}", dataset)
    app.router.add_post("/v2/datasets/{id}/examples", refuse)
    (tmp_path / "rows.jsonl").write_bytes(b'{"i": 1}\n{"i": 2}\n{"i": 3}\n')
    async with serving(app) as url:
        # One batch, halved down to its rows: three one-row batches refused alike would
        # be a dataset that refuses everything, which stops the run (ingest.refusals).
        done = await run_ingest(tmp_path, url, "-v", "--json", "--batch-rows", "3")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 6, err[-2000:]
    rejects = (tmp_path / "run.rejects.jsonl").read_text()
    checkpoint = (tmp_path / "run.ckpt").read_text()
    for text in (out, err, rejects, checkpoint):
        assert len(text) < 20_000 and "zzz" not in text and not leaks(text)
    reasons = [orjson.loads(line)["reason"] for line in rejects.splitlines()]
    assert len(reasons) == 3
    assert all(r.endswith("y[redac...") and len(r) < QUOTE_LIMIT + 50 for r in reasons)


# --- One recognisable key through every kind of run --------------------------

SECRET = "SECRET-KEY-a1b2c3d4e5f6"
WRONG = "WRONG-KEY-f6e5d4c3b2a1"


def secret_forms(key: str) -> set[str]:
    """The key as it could be written down: as is, escaped, encoded, in a header, by halves."""
    forms = set(key_forms(key).values()) | {key.lower(), key.upper(), key.encode().hex()}
    for text in (key, f"Bearer {key}", f":{key}"):  # base64 of a header, or of basic auth
        forms.add(base64.b64encode(text.encode()).decode().rstrip("="))
        forms.add(base64.urlsafe_b64encode(text.encode()).decode().rstrip("="))
    half = len(key) // 2
    return forms | {key[:half], key[half:]}


def written_text(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (checkpoints, rejects, backups, inputs), by name."""
    return {
        str(path.relative_to(folder)): path.read_bytes().decode("utf-8", "replace")
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


async def test_a_recognisable_key_is_in_no_stream_and_no_file_right_or_wrong(
    tmp_path: Path,
) -> None:
    """Runs that deliver, are refused, reject rows and meet 5xx leave neither key anywhere."""
    state = FakeArize(api_key=SECRET)
    dataset = state.create_dataset(DATASET)
    (tmp_path / "fast.toml").write_text("backoff_base = 0.01\nbackoff_max = 0.05\n")
    rows = tmp_path / "rows.jsonl"
    good = b"".join(b'{"i": %d}\n' % i for i in range(20))
    state.faults.refuse_field = "poison"
    streams: list[str] = []

    async def run(*args: str, key: str = SECRET) -> int:
        done = await run_ingest(tmp_path, url, str(tmp_path / "fast.toml"), *args, key=key)
        streams.extend([done.stdout.decode(), done.stderr.decode()])
        return done.returncode

    async with serve(state) as url:
        rows.write_bytes(good + b'{"poison": 1}\n')
        assert await run("-v", "--json", "--batch-rows", "5") == 6  # right key, one reject
        wrong = ("-vv", "--json", "--checkpoint", str(tmp_path / "wrong.ckpt"))
        assert await run(*wrong, key=WRONG) == 3
        with pytest.raises(ingest.AuthError) as refused:  # the library's exception
            await ingest.upload(api_key=WRONG, input=str(rows), dataset_id=dataset, base_url=url)
        # Another input (--restart: both files to .bak), with 503s and a reject on the way.
        state.faults.fail_rate, state.faults.seed = 0.3, 7
        rows.write_bytes(good + b'{"poison": 2}\n{"i": 21}\n')
        assert await run("-v", "--restart", "--batch-rows", "2", "--max-attempts", "50") == 6
        # And one whose retries run out on 503s: unknown outcomes, looked up, exit 5.
        state.faults.fail_rate, state.faults.fail_after_commit_rate = 1.0, 0.0
        rows.write_bytes(good * 2)
        assert await run("-v", "--json", "--restart", "--max-attempts", "2") == 5
    files = written_text(tmp_path)
    backups = {"run.ckpt.bak", "run.ckpt.1.bak", "run.rejects.jsonl.bak", "run.rejects.jsonl.1.bak"}
    assert set(files) == {"fast.toml", "rows.jsonl", "run.ckpt", *backups}
    assert "HTTP 503" in files["run.ckpt"] and "poison" in files["run.rejects.jsonl.1.bak"]
    exception = "".join(traceback.format_exception(refused.value))
    texts = {**files, **{f"stream {i}": s for i, s in enumerate(streams)}, "raised": exception}
    for key in (SECRET, WRONG):
        for form in secret_forms(key):
            assert not [name for name, text in texts.items() if form in text], form
