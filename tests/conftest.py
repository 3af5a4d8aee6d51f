"""Shared fixtures: every async test runs on anyio's asyncio backend."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Property tests: bounded and unhurried everywhere (a shared 2-core box has no
# steady clock); in CI also the same examples on every run, so a red build
# reproduces and is not a flake that the next push hides.
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, database=None, print_blob=True
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp and aiolimiter are asyncio-only, so tests run on asyncio."""
    return "asyncio"


# --- The fake Arize server, in process -------------------------------------

from collections.abc import AsyncIterator  # noqa: E402  (kept next to the fixture it serves)
from dataclasses import dataclass  # noqa: E402

from ingest.fake import FakeArize, serve  # noqa: E402

# Real dataset ids are base64 and may hold "/", "+" and "=", which must be
# percent-encoded in a path; the shared fixture uses one that holds all three.
FAKE_DATASET_ID = "RGF0YXNldDo3Oms/UXp+WA=="
FAKE_API_KEY = "test-key"


@dataclass(frozen=True, slots=True)
class FakeService:
    """A running in-process fake server and what a client needs to reach it."""

    url: str
    state: FakeArize
    dataset_id: str
    api_key: str


@pytest.fixture
async def fake() -> AsyncIterator[FakeService]:
    """An in-process fake Arize on a real socket, with one empty dataset."""
    state = FakeArize(api_key=FAKE_API_KEY)
    dataset_id = state.create_dataset(FAKE_DATASET_ID, name="fixture dataset")
    async with serve(state) as url:
        yield FakeService(url=url, state=state, dataset_id=dataset_id, api_key=FAKE_API_KEY)
