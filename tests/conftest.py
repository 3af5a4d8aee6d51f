"""Shared fixtures: every async test runs on anyio's asyncio backend."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp and aiolimiter are asyncio-only, so tests run on asyncio."""
    return "asyncio"
