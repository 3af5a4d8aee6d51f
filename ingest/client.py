"""Client: the Arize datasets API over one aiohttp session.

Takes request bodies; gives back ``Reply`` (status, ``Retry-After``, body).
Knows the URLs (dataset ids are opaque base64 and must be percent-encoded),
the auth header and the problem+json error shape. It decides nothing about
retries: that is ``retry.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

USER_AGENT = f"ingest/{version('ingest')}"


@dataclass(frozen=True, slots=True)
class Reply:
    """What the API answered."""

    status: int
    body: bytes
    retry_after: str | None = None

    def json(self) -> Any:
        """The body parsed as JSON (None when it is not JSON)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def problem(self) -> str:
        """The refusal in a line: the problem+json ``detail`` or ``title``, or the raw body."""
        doc = self.json()
        if isinstance(doc, dict):
            text = doc.get("detail") or doc.get("title") or doc.get("message") or doc.get("error")
            if text:
                return f"HTTP {self.status}: {text}"
        snippet = self.body[:200].decode("utf-8", "replace").strip()
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")


def env_proxy(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy ``HTTPS_PROXY``/``HTTP_PROXY`` name for ``url``, unless ``NO_PROXY`` excludes it.

    Looked up once per run. A session with ``trust_env=True`` would do it (and
    a ``~/.netrc`` lookup, whose credentials clash with our bearer header) on
    every request, in a thread.
    """
    try:
        return get_env_proxy_for_url(url)
    except LookupError:
        return None, None


def dataset_path(dataset_id: str) -> str:
    """The dataset's path, its id percent-encoded (``/``, ``+`` and ``=`` included)."""
    return f"/v2/datasets/{quote(dataset_id, safe='')}"


class DatasetsClient:
    """Requests to one dataset, over a shared session.

    async with aiohttp.ClientSession(trust_env=True) as session:
        client = DatasetsClient(session, base_url=url, api_key=key, dataset_id=ds)
        reply = await client.append(b'{"examples":[{"q":"2+2"}]}')
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        dataset_id: str,
        dataset_version_id: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._session = session
        # encoded=True: the id is percent-encoded already, and yarl must not undo it.
        url = URL(base_url.rstrip("/") + dataset_path(dataset_id), encoded=True)
        query = {"dataset_version_id": dataset_version_id} if dataset_version_id else {}
        self._dataset_url = url.with_query(query)
        self._examples_url = URL(str(url) + "/examples", encoded=True).with_query(query)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._proxy, self._proxy_auth = env_proxy(url)

    async def get_dataset(self) -> Reply:
        """GET the dataset: checks the key and that the dataset exists."""
        return await self._request("GET", self._dataset_url, None)

    async def append(self, body: bytes) -> Reply:
        """POST a ``{"examples": [...]}`` body to the dataset."""
        return await self._request("POST", self._examples_url, body)

    async def _request(self, method: str, url: URL, body: bytes | None) -> Reply:
        async with self._session.request(
            method,
            url,
            data=body,
            headers=self._headers,
            timeout=self._timeout,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        ) as resp:
            data = await resp.read()
            return Reply(resp.status, data, resp.headers.get("Retry-After"))
