"""Safety: a base URL that cannot be reached, plain http, TLS, and who may read the files.

Each test talks to 127.0.0.1 only: a port that refuses, a host name that fails
in the resolver library itself, or a small aiohttp app (over TLS where it says).
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web
from scripted import DATASET, KEY, created, problem, scripted_server
from test_cli import ingest_cmd, run_ingest

import ingest
from ingest.config import RunConfig
from ingest.retry import UNREACHABLE_ATTEMPTS

CERT = Path(__file__).with_name("selfsigned.pem")  # key and certificate for 127.0.0.1
# glibc asks the configured DNS server even for the reserved ".invalid" TLD (strace
# shows the query leave); a "!" fails glibc's own host name check, so nothing does.
UNRESOLVABLE = "no-such-host!.invalid"
FAST = {"rate": 0, "backoff_base": 0.01, "backoff_max": 0.05, "request_timeout": 10.0}


def refusing_port() -> int:
    """A port of 127.0.0.1 that was just free: nothing listens, so a connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def fast_toml(tmp_path: Path, **extra: Any) -> str:
    """A TOML config with test-mode backoff (no flag sets it), plus ``extra`` settings."""
    lines = [f"{k} = {orjson.dumps(v).decode()}" for k, v in {**FAST, **extra}.items()]
    (tmp_path / "fast.toml").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "fast.toml")


def rows(tmp_path: Path, n: int = 3, extra: bytes = b"") -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(b'{"i": %d}\n' % i for i in range(n)) + extra)
    return path


# --- A base URL that cannot be reached ---------------------------------------


async def test_a_port_that_refuses_fails_the_preflight_after_a_few_attempts(
    tmp_path: Path,
) -> None:
    """Connection refused: a BaseUrlError naming the URL after 4 attempts, not max_attempts."""
    url = f"http://127.0.0.1:{refusing_port()}"
    with pytest.raises(ingest.BaseUrlError) as info:
        await ingest.upload(
            api_key=KEY,
            input=str(rows(tmp_path)),
            dataset_id=DATASET,
            base_url=url,
            max_attempts=8,
            **FAST,
        )
    message = str(info.value)
    assert f"{url} cannot be reached" in message and "refused the connection" in message
    assert "check --base-url" in message
    assert info.value.exit_code == 5
    assert info.value.summary.requests == UNREACHABLE_ATTEMPTS < 8


async def test_a_host_name_that_does_not_resolve_fails_the_cli_run_after_a_few_attempts(
    tmp_path: Path,
) -> None:
    """No such host: `ingest run` exits 5 naming the URL after 4 attempts, leaving no checkpoint."""
    rows(tmp_path)
    url = f"https://{UNRESOLVABLE}"
    cmd = ingest_cmd(tmp_path, url, fast_toml(tmp_path), "--json", "--max-attempts", "9")
    done = await anyio.to_thread.run_sync(lambda: run_ingest(cmd))
    assert done.returncode == 5, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["requests"] == UNREACHABLE_ATTEMPTS
    assert f"{url} cannot be reached" in summary["message"]
    assert "does not resolve" in done.stderr and "check --base-url" in done.stderr
    assert not (tmp_path / "run.ckpt").exists()


async def test_appends_keep_the_whole_budget_when_the_api_goes_away(tmp_path: Path) -> None:
    """An API gone after the preflight is retried max_attempts times, not the preflight's few."""
    runner = web.AppRunner(web.Application(), access_log=None)

    async def dataset(request: web.Request) -> web.Response:
        await site.stop()  # stops listening: from now on every connection is refused
        answer = web.json_response({"id": DATASET, "name": "d"})
        answer.force_close()  # and this one is not kept for a POST
        return answer

    runner.app.router.add_get("/v2/datasets/{id}", dataset)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    attempts = UNREACHABLE_ATTEMPTS + 3
    try:
        with pytest.raises(ingest.RetriesExhaustedError) as info:
            await ingest.upload(
                api_key=KEY,
                input=str(rows(tmp_path)),
                dataset_id=DATASET,
                base_url=url,
                concurrency=1,
                max_attempts=attempts,
                **FAST,
            )
    finally:
        await runner.cleanup()
    summary = info.value.summary
    assert (summary.requests, summary.retries) == (1 + attempts, {"connection": attempts - 1})
    assert "refused the connection" in str(info.value)


# --- Plain http and host names --------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://api.arize.com", "http://10.0.0.1:8080", "http://[fd00::1]", "http://local"]
)
def test_plain_http_beyond_loopback_is_refused_naming_https(url: str) -> None:
    """A plain http:// base URL off this machine is a ConfigError naming https and the flag."""
    with pytest.raises(ingest.ConfigError, match="plain http") as info:
        RunConfig(input="rows.jsonl", dataset_id="ds", base_url=url)
    assert "https://" in str(info.value) and "--allow-insecure-http" in str(info.value)
    allowed = RunConfig(input="rows.jsonl", dataset_id="ds", base_url=url, allow_insecure_http=True)
    assert allowed.base_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9",
        "http://127.8.0.1",
        "http://[::1]:80",
        "http://localhost",
        "http://LOCALHOST.",
    ],
)
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    """The fake server and local tunnels are on this machine: plain http to loopback is fine."""
    assert RunConfig(input="rows.jsonl", dataset_id="ds", base_url=url).base_url == url


@pytest.mark.parametrize("url", ["https://api..arize.com", f"https://{'a' * 64}.arize.com"])
def test_a_host_name_with_an_empty_or_overlong_label_is_a_config_error(url: str) -> None:
    """A double dot in the host is a ConfigError naming --base-url, not an unexpected error."""
    with pytest.raises(ingest.ConfigError, match="no valid host name; check --base-url"):
        RunConfig(input="rows.jsonl", dataset_id="ds", base_url=url)


def test_the_cli_refuses_plain_http_unless_allowed_by_flag_or_toml(tmp_path: Path) -> None:
    """`ingest run` exits 2 on plain http; --allow-insecure-http or the TOML key lets it go on."""
    rows(tmp_path)
    url = f"http://{UNRESOLVABLE}"
    refused = run_ingest(ingest_cmd(tmp_path, url, "--json"))
    assert refused.returncode == 2, refused.stderr
    assert "https://" in orjson.loads(refused.stdout)["message"]
    toml = fast_toml(tmp_path)
    by_flag = run_ingest(ingest_cmd(tmp_path, url, toml, "--allow-insecure-http"))
    toml = fast_toml(tmp_path, allow_insecure_http=True)
    by_toml = run_ingest(ingest_cmd(tmp_path, url, toml))
    for done in (by_flag, by_toml):  # past the config check, on to the preflight
        assert done.returncode == 5 and "does not resolve" in done.stderr, done.stderr


# --- TLS ----------------------------------------------------------------------


@asynccontextmanager
async def serving_tls(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` over TLS with the self-signed certificate; yield its https base URL."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERT)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def accepting() -> web.Application:
    """The dataset exists and every POST is stored."""
    examples: list[dict[str, Any]] = []

    async def dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": DATASET, "name": "d"})

    async def append(request: web.Request) -> web.Response:
        batch = orjson.loads(await request.read())["examples"]
        examples.extend(batch)
        ids = [f"e{len(examples) - len(batch) + i}" for i in range(len(batch))]
        return web.json_response({"id": DATASET, "example_ids": ids}, status=201)

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", dataset)
    app.router.add_post("/v2/datasets/{id}/examples", append)
    return app


async def test_a_self_signed_certificate_fails_naming_the_url_and_ssl_cert_file(
    tmp_path: Path,
) -> None:
    """TLS is verified: an unknown CA fails the preflight, naming the URL and SSL_CERT_FILE."""
    async with serving_tls(accepting()) as url:
        with pytest.raises(ingest.DeliveryError) as info:
            await ingest.upload(
                api_key=KEY, input=str(rows(tmp_path)), dataset_id=DATASET, base_url=url, **FAST
            )
    message = str(info.value)
    assert f"TLS failed with {url}" in message and "SSL_CERT_FILE" in message
    assert "certificate verify failed" in message
    assert info.value.summary.requests == 1  # no retry can fix a certificate


async def test_ssl_cert_file_naming_the_ca_lets_the_run_through(tmp_path: Path) -> None:
    """The advice holds: with SSL_CERT_FILE naming the certificate, the same server takes rows."""
    rows(tmp_path, 5)
    async with serving_tls(accepting()) as url:
        cmd = ingest_cmd(tmp_path, url, "--json")
        env = {**os.environ, "ARIZE_API_KEY": KEY, "SSL_CERT_FILE": str(CERT)}
        with anyio.fail_after(60):
            done = await anyio.run_process(cmd, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout)["rows_delivered"] == 5


# --- File modes ---------------------------------------------------------------


def modes_in(folder: Path, *, but: str) -> dict[str, int]:
    """The permission bits of every file in ``folder`` except ``but``."""
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.name != but}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block under ``mask`` (0: nothing taken away, so modes are the code's own)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def test_checkpoint_rejects_and_backups_are_created_for_the_owner_only(
    tmp_path: Path,
) -> None:
    """Under umask 0, the checkpoint, rejects file and their .bak backups are all mode 0600."""

    def answer(examples: list[dict[str, Any]], server: Any) -> web.Response:
        if any("poison" in e for e in examples):
            return problem(422, "poison row")
        return created(examples, server)

    async with scripted_server(answer) as server:
        run = {
            "api_key": KEY,
            "dataset_id": DATASET,
            "base_url": server.url,
            "checkpoint": str(tmp_path / "run.ckpt"),
            **FAST,
        }
        with umask(0):
            first = await ingest.upload(input=str(rows(tmp_path, 3, b'{"poison": 1}\n')), **run)
            # Another input under the same checkpoint: both files are set aside as .bak.
            second = await ingest.upload(
                input=str(rows(tmp_path, 4, b'{"poison": 2}\n')), restart=True, **run
            )
    assert (first.exit_code, second.exit_code) == (6, 6)
    written = ["run.ckpt", "run.ckpt.bak", "run.rejects.jsonl", "run.rejects.jsonl.bak"]
    assert modes_in(tmp_path, but="rows.jsonl") == dict.fromkeys(written, 0o600)
