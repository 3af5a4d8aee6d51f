"""Client: the Arize datasets API over one aiohttp session.

Takes request bodies; gives back ``Reply`` (status, ``Retry-After``, body).
Knows the URLs (dataset ids are opaque base64 and must be percent-encoded),
the auth header and the problem+json error shape. It decides nothing about
retries: that is ``retry.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from ingest.redact import redact
from ingest.version import VERSION

USER_AGENT = f"ingest/{VERSION}"
# How much of a server's text a message quotes: a refusal's reason goes to stderr,
# the rejects file and the checkpoint, once per rejected row, and a server may
# echo a megabyte back (a validation error quoting the whole body).
QUOTE_LIMIT = 300
CUT = "..."


@dataclass(frozen=True, slots=True)
class Reply:
    """What the API answered.

    Every text made from it (``problem``, ``redirect``, ``not_the_api``) has the
    key taken out: a server may echo the Authorization header in what it sends.
    """

    status: int
    body: bytes
    retry_after: str | None = None
    url: str = ""  # what was asked
    location: str | None = None  # where a 3xx points, resolved against ``url``
    content_type: str = ""
    secret: str = field(default="", repr=False, compare=False)

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
                return f"HTTP {self.status}: {self._quote(str(text), QUOTE_LIMIT)}"
        snippet = self._snippet(200)
        return f"HTTP {self.status}" + (f": {snippet}" if snippet else "")

    def _snippet(self, limit: int) -> str:
        """The body's start on one line, the key taken out before the cut."""
        return self._quote(self.body.decode("utf-8", "replace"), limit)

    def _quote(self, text: str, limit: int) -> str:
        """A server's text on one line and cut to ``limit``, the key taken out before the cut."""
        return redact(" ".join(text.split()), self.secret, limit=limit, ellipsis=CUT)

    def not_the_api(self, expected: str, got: str | None = None) -> str:
        """A 2xx that is not the API's answer in words: what came, what the API sends."""
        if got is None:
            snippet = self._snippet(100)
            kind = self._quote(self.content_type, 100) or "no Content-Type"
            got = f'{kind} "{snippet}"' if snippet else f"{kind} and an empty body"
        text = (
            f"{self.url} answered HTTP {self.status} with {got}, not the Arize API's answer "
            f"({expected}), so the base URL leads elsewhere (a web front end or a proxy "
            "instead of the API?): check --base-url"
        )
        return redact(text, self.secret)

    @property
    def redirected(self) -> bool:
        """Whether the answer is a redirect, which the API never gives."""
        return 300 <= self.status < 400

    def redirect(self) -> str:
        """A redirect in words: where it points, and that the base URL is to blame."""
        where = (
            f"to {self._quote(self.location, QUOTE_LIMIT)}" if self.location else "with no Location"
        )
        text = (
            f"{self.url} answered HTTP {self.status}, a redirect {where}, which was not "
            "followed; the Arize API never redirects, so the base URL leads elsewhere (http "
            "instead of https? a web front end or a proxy instead of the API?): check --base-url"
        )
        return redact(text + self._moved_to(), self.secret)

    def _moved_to(self) -> str:
        """The base URL a redirect of the same API path to elsewhere (http to https) implies."""
        at = self.url.rfind("/v2/datasets/")
        tail = self.url[at:] if at >= 0 else ""
        if not (tail and self.location and self.location.endswith(tail)):
            return ""
        base = self.location.removesuffix(tail)
        if base == self.url.removesuffix(tail) or len(base) > QUOTE_LIMIT:
            return ""  # a redirect to itself, or no URL to suggest as it is
        try:
            moved = URL(base).origin() != URL(self.url).origin()
        except ValueError:  # not an absolute URL: no advice to give
            return ""
        # Another origin would not even get the key: its 401 must not pass for a bad key.
        where = " (another origin: the key was not sent there)" if moved else ""
        return f"; the API may be at {base}{where}: try --base-url {base}"


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
    """Requests to one dataset, over a shared session with a connection per worker.

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
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
        # The version goes in the body of these two, as the API has it.
        self._search_url = URL(str(url) + "/examples/search", encoded=True)
        self._delete_url = URL(str(url) + "/examples", encoded=True)
        self._secret = api_key
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

    async def search(self, body: bytes) -> Reply:
        """POST a search (``{"filter", "limit", "cursor", "dataset_version_id"}``)."""
        return await self._request("POST", self._search_url, body)

    async def delete_examples(self, body: bytes) -> Reply:
        """DELETE examples by id (``{"dataset_version_id", "example_ids"}``)."""
        return await self._request("DELETE", self._delete_url, body)

    async def _request(self, method: str, url: URL, body: bytes | None) -> Reply:
        # Never follow a redirect: aiohttp would re-send a POST answered 301/302 as a
        # GET (whose 200 would pass for a delivery) and drop the key on another origin.
        async with self._session.request(
            method,
            url,
            data=body,
            headers=self._headers,
            timeout=self._timeout,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
            allow_redirects=False,
        ) as resp:
            data = await resp.read()
            return Reply(
                resp.status,
                data,
                resp.headers.get("Retry-After"),
                url=str(url),
                location=_resolved(url, resp.headers.get("Location")),
                content_type=resp.headers.get("Content-Type", ""),
                secret=self._secret,
            )


def _resolved(url: URL, location: str | None) -> str | None:
    """``location`` made absolute against the URL asked (it may be relative)."""
    if not location:
        return None
    try:
        return str(url.join(URL(location, encoded=True)))
    except ValueError:
        return location
