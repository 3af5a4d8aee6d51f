"""`ingest verify`: reads a dataset back against its input, and repairs it with --repair."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
from aiohttp import web
from conftest import FakeService
from scripted import DATASET, KEY, serving

import ingest
from ingest.client import DatasetsClient
from ingest.keys import RowKeys, input_tag

ROWS = 40


def write_input(tmp_path: Path, n: int = ROWS) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"i": i, "text": f"row {i}"}) + b"\n" for i in range(n)))
    return path


def write_config(tmp_path: Path) -> Path:
    """Test-mode timeouts: retries and the settle lag take hundredths of a second."""
    path = tmp_path / "fast.toml"
    path.write_text(
        "backoff_base = 0.01\nbackoff_max = 0.05\nsettle_lag = 0.02\nrate = 0\n"
        "max_attempts = 4\nrequest_timeout = 10\n"
    )
    return path


def cli(tmp_path: Path, fake: FakeService, command: str, *args: str) -> list[str]:
    """``ingest COMMAND`` of ``tmp_path/rows.jsonl`` into the fake's dataset."""
    return [
        sys.executable,
        "-m",
        "ingest",
        command,
        str(write_config(tmp_path)),
        "--input",
        str(tmp_path / "rows.jsonl"),
        "--dataset-id",
        fake.dataset_id,
        "--base-url",
        fake.url,
        "--checkpoint",
        str(tmp_path / "run.ckpt"),
        *args,
    ]


async def run_cli(cmd: list[str], fake: FakeService) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does, while this loop serves the in-process fake."""
    env = {**os.environ, "ARIZE_API_KEY": fake.api_key}
    with anyio.fail_after(120):
        done = await anyio.run_process(cmd, env=env, check=False, stdin=subprocess.DEVNULL)
    return subprocess.CompletedProcess(
        cmd, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def verify_json(tmp_path: Path, fake: FakeService, *args: str) -> tuple[int, dict[str, Any]]:
    done = await run_cli(cli(tmp_path, fake, "verify", "--json", *args), fake)
    report = orjson.loads(done.stdout)
    assert isinstance(report, dict), done.stderr
    return done.returncode, report


def keyed(path: Path, line: int, tag_line: bytes | None = None) -> bytes:
    """Line ``line`` of ``path`` as a run sends it (with its key); keyed as another input's
    row when ``tag_line`` (another first line) is given."""
    lines = path.read_bytes().splitlines()
    keys = RowKeys(field="ingest_key", tag=input_tag(tag_line or lines[0]))
    raw = lines[line - 1]
    return keys.splice(raw, keys.key(line, raw))


class Api:
    """The fake's own HTTP API, for changing a dataset behind ingest's back."""

    def __init__(self, session: aiohttp.ClientSession, fake: FakeService) -> None:
        self.fake = fake
        self.client = DatasetsClient(
            session, base_url=fake.url, api_key=fake.api_key, dataset_id=fake.dataset_id
        )

    async def append(self, *rows: bytes) -> None:
        reply = await self.client.append(b'{"examples":[' + b",".join(rows) + b"]}")
        assert reply.status == 201, reply.problem()

    async def delete_line(self, line: int) -> None:
        """Delete every example of ``line`` of the input."""
        ids = [
            e["id"]
            for e in self.fake.state.examples(self.fake.dataset_id)
            if e.get("ingest_key", "").split("-")[1:2] == [f"{line:012d}"]
        ]
        version = (await self.client.get_dataset()).json()["versions"][0]["id"]
        body = orjson.dumps({"dataset_version_id": version, "example_ids": ids})
        reply = await self.client.delete_examples(body)
        assert reply.status == 200, reply.problem()


def key_counts(fake: FakeService) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in fake.state.examples(fake.dataset_id):
        key = str(example.get("ingest_key"))
        counts[key] = counts.get(key, 0) + 1
    return counts


async def upload(tmp_path: Path, fake: FakeService) -> Path:
    """A clean upload of the input (in process: only verify needs to be a subprocess)."""
    path = write_input(tmp_path)
    summary = await ingest.upload(
        input=str(path),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        checkpoint=str(tmp_path / "run.ckpt"),
        api_key=fake.api_key,
        batch_rows=10,
        rate=0,
        backoff_base=0.01,
        settle_lag=0.02,
    )
    assert summary.exit_code == 0
    return path


async def damage(tmp_path: Path, fake: FakeService, path: Path) -> None:
    """Lines 3 and 5 stored twice more and once more, line 7 deleted; plus a row of
    another input and an unkeyed row."""
    async with aiohttp.ClientSession() as session:
        api = Api(session, fake)
        await api.append(keyed(path, 3), keyed(path, 3), keyed(path, 5))
        await api.delete_line(7)
        await api.append(keyed(path, 2, tag_line=b'{"another":"input"}'), b'{"plain":"row"}')


async def test_clean_upload_verifies(tmp_path: Path, fake: FakeService) -> None:
    """After a clean upload, verify finds every row once and exits 0."""
    await upload(tmp_path, fake)
    code, report = await verify_json(tmp_path, fake)
    assert code == 0
    assert report["expected"] == report["present_once"] == ROWS
    assert report["missing"] == report["duplicated"] == report["extra_copies"] == 0
    assert report["balanced"] is True and report["exit_code"] == 0
    assert report["read_by"] == "range search" and report["other_rows"] is None


async def test_duplicates_and_missing_are_reported(tmp_path: Path, fake: FakeService) -> None:
    """Injected copies and a deleted row are reported by line, with exit 7 and no change."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    before = key_counts(fake)
    code, report = await verify_json(tmp_path, fake)
    assert code == 7
    assert report["missing"] == 1 and report["missing_lines"] == [7]
    assert report["duplicated"] == 2 and report["duplicated_lines"] == [3, 5]
    assert report["extra_copies"] == 3
    assert report["present_once"] == ROWS - 3
    assert report["not_from_input"] == 0  # another input's row is not this input's
    assert report["balanced"] is False
    assert key_counts(fake) == before  # without --repair nothing changes
    done = await run_cli(cli(tmp_path, fake, "verify"), fake)
    assert done.returncode == 7 and "missing:              1 (first lines: 7)" in done.stdout


async def test_repair_fixes_and_spares_other_rows(tmp_path: Path, fake: FakeService) -> None:
    """--repair --yes deletes the extra copies and sends the missing row, never touching
    another input's row or an unkeyed one; a second verify exits 0."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    code, report = await verify_json(tmp_path, fake, "--repair", "--yes")
    assert code == 0, report
    assert report["deleted"] == 3 and report["sent"] == 1 and report["repair"] == "done"
    counts = key_counts(fake)
    mine = input_tag(path.read_bytes().splitlines()[0])
    assert sorted(v for k, v in counts.items() if k.startswith(mine)) == [1] * ROWS
    assert counts["None"] == 1  # the unkeyed row
    assert sum(1 for k in counts if k.startswith(input_tag(b'{"another":"input"}'))) == 1
    code, report = await verify_json(tmp_path, fake)
    assert code == 0 and report["balanced"] is True


async def test_changed_row_is_not_from_input_and_kept(tmp_path: Path, fake: FakeService) -> None:
    """A row with this input's tag that the input no longer holds is reported, kept by
    --repair, and keeps verify at exit 7."""
    path = await upload(tmp_path, fake)
    lines = path.read_bytes().splitlines()
    keys = RowKeys(field="ingest_key", tag=input_tag(lines[0]))
    changed = b'{"i":9,"text":"an older row 9"}'
    async with aiohttp.ClientSession() as session:
        await Api(session, fake).append(keys.splice(changed, keys.key(10, changed)))
    code, report = await verify_json(tmp_path, fake, "--repair", "--yes")
    assert code == 7
    assert report["not_from_input"] == 1 and report["deleted"] == 0
    assert len(fake.state.examples(fake.dataset_id)) == ROWS + 1


async def test_works_without_checkpoint(tmp_path: Path, fake: FakeService) -> None:
    """Verify needs no checkpoint: without one (and no rejects file) it still balances,
    and says server rejects cannot be told apart."""
    await upload(tmp_path, fake)
    (tmp_path / "run.ckpt").unlink()
    code, report = await verify_json(tmp_path, fake)
    assert code == 0 and report["present_once"] == ROWS
    assert report["rejects_known"] is False and "cannot be told apart" in report["message"]


async def test_rejected_rows_are_not_expected(tmp_path: Path, fake: FakeService) -> None:
    """Rows the server rejected (per the checkpoint, or the rejects file without it) are
    not counted missing."""
    fake.state.faults.refuse_field = "poison"
    path = write_input(tmp_path)
    with path.open("ab") as f:
        f.write(b'{"poison":1}\n')
    done = await run_cli(cli(tmp_path, fake, "run"), fake)
    assert done.returncode == 6, done.stderr
    code, report = await verify_json(tmp_path, fake)
    assert code == 0, report
    assert report["expected"] == ROWS and report["rejected"] == 1
    (tmp_path / "run.ckpt").unlink()  # the rejects file alone still tells
    code, report = await verify_json(tmp_path, fake)
    assert code == 0, report
    assert report["rejected"] == 1 and report["rejects_known"] is True


async def test_scan_fallback_without_search_filters(tmp_path: Path, fake: FakeService) -> None:
    """Where the server refuses filters, verify reads the whole dataset, counts other rows
    apart, and repairs the same way."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    fake.state.faults.search_filters = False
    code, report = await verify_json(tmp_path, fake)
    assert code == 7 and report["read_by"] == "whole dataset"
    assert report["missing"] == 1 and report["extra_copies"] == 3
    assert report["other_rows"] == 2  # another input's row and the unkeyed one
    code, report = await verify_json(tmp_path, fake, "--repair", "--yes")
    assert code == 0, report
    assert report["other_rows"] == 2 and len(fake.state.examples(fake.dataset_id)) == ROWS + 2


async def test_repair_without_terminal_needs_yes(tmp_path: Path, fake: FakeService) -> None:
    """--repair with no terminal to ask on and no --yes is refused (exit 2, naming --yes)."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    done = await run_cli(cli(tmp_path, fake, "verify", "--repair"), fake)
    assert done.returncode == 2 and "--yes" in done.stderr
    assert len(fake.state.examples(fake.dataset_id)) == ROWS + 3 - 1 + 2


async def test_no_key_is_refused(tmp_path: Path, fake: FakeService) -> None:
    """--no-key is refused with a message saying why: verify needs the keys."""
    write_input(tmp_path)
    done = await run_cli(cli(tmp_path, fake, "verify", "--no-key", "--json"), fake)
    assert done.returncode == 2 and "--no-key" in done.stderr
    assert orjson.loads(done.stdout)["exit_code"] == 2


async def test_library_verify(tmp_path: Path, fake: FakeService) -> None:
    """``ingest.verify`` returns the report; a declined repair changes nothing."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    asked = []

    def decline(plan: ingest.RepairPlan) -> bool:
        asked.append(plan)
        return False

    report = await ingest.verify(
        input=str(path),
        dataset_id=fake.dataset_id,
        base_url=fake.url,
        checkpoint=str(tmp_path / "run.ckpt"),
        api_key=fake.api_key,
        repair=True,
        confirm=decline,
    )
    assert report.exit_code == ingest.UnbalancedError.exit_code and report.repair == "declined"
    assert asked[0].delete == 3 and asked[0].send == 1 and asked[0].send_lines == (7,)
    assert report.deleted == report.sent == 0


async def test_repair_send_with_unknown_outcome_is_not_resent(
    tmp_path: Path, fake: FakeService
) -> None:
    """A repair POST that is committed but answered 503 is looked up again, not resent:
    the dataset ends with the row once."""
    path = await upload(tmp_path, fake)
    async with aiohttp.ClientSession() as session:
        await Api(session, fake).delete_line(7)
    fake.state.faults.fail_after_commit_rate = 1.0
    code, report = await verify_json(tmp_path, fake, "--repair", "--yes")
    assert code == 0, report
    assert report["sent"] == 0 and report["missing"] == 0  # stored, though the answer was lost
    mine = input_tag(path.read_bytes().splitlines()[0])
    assert sorted(v for k, v in key_counts(fake).items() if k.startswith(mine)) == [1] * ROWS


async def test_repair_asks_on_a_terminal(tmp_path: Path, fake: FakeService) -> None:
    """On a terminal, --repair shows what it will delete and goes ahead only on "y"."""
    path = await upload(tmp_path, fake)
    await damage(tmp_path, fake, path)
    env = {**os.environ, "ARIZE_API_KEY": fake.api_key}
    for answer, code in ((b"n\n", 7), (b"y\n", 0)):
        leader, follower = pty.openpty()
        try:
            os.write(leader, answer)  # waits in the terminal's input until read
            with anyio.fail_after(120):
                done = await anyio.run_process(
                    cli(tmp_path, fake, "verify", "--repair", "--json"),
                    env=env,
                    check=False,
                    stdin=follower,
                )
        finally:
            os.close(follower)
            os.close(leader)
        report = orjson.loads(done.stdout)
        assert done.returncode == code, done.stderr
        assert b"Delete 3 extra copies and send 1 missing rows? [y/N]" in done.stderr
        assert report["repair"] == ("declined" if code else "done")


async def test_range_search_that_misses_rows_is_not_trusted(tmp_path: Path) -> None:
    """A server whose range search misses stored rows (strings compared its own way) is
    read whole instead: rows it missed are not reported missing, so a repair cannot
    send them twice."""
    path = write_input(tmp_path)
    stored = [
        {**orjson.loads(keyed(path, line)), "id": f"ex-{line}"} for line in range(1, ROWS + 1)
    ]

    async def get_dataset(request: web.Request) -> web.Response:
        return web.json_response({"id": DATASET, "name": "d", "versions": [{"id": "v1"}]})

    async def search(request: web.Request) -> web.Response:
        text = (await request.json()).get("filter")
        if text is None:
            found = stored
        elif ">=" in text:
            found = stored[: ROWS // 2]  # the broken range: half the rows
        else:
            wanted = set(re.findall(r"= '([^']*)'", text))
            found = [e for e in stored if e["ingest_key"] in wanted]
        return web.json_response({"examples": found, "pagination": {"has_more": False}})

    app = web.Application()
    app.router.add_get("/v2/datasets/{id}", get_dataset)
    app.router.add_post("/v2/datasets/{id}/examples/search", search)
    async with serving(app) as url:
        report = await ingest.verify(
            input=str(path), dataset_id=DATASET, base_url=url, api_key=KEY, backoff_base=0.01
        )
    assert report.read_by == "whole dataset"
    assert report.missing == 0 and report.present_once == ROWS and report.balanced


async def test_wrong_key_exits_3_and_is_never_shown(tmp_path: Path, fake: FakeService) -> None:
    """A refused key exits 3, as a run does, and its value appears in no output."""
    write_input(tmp_path)
    secret = "sk-verify-SECRET-4242"
    env = {**os.environ, "ARIZE_API_KEY": secret}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            cli(tmp_path, fake, "verify", "--json", "-v"), env=env, check=False
        )
    assert done.returncode == 3
    assert orjson.loads(done.stdout)["exit_code"] == 3
    assert secret.encode() not in done.stdout + done.stderr
