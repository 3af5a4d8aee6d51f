"""Lookup: finds which examples of a dataset hold given row keys, and deletes extra copies.

Takes keys (``ingest.keys``) and the run's retrying caller; gives back, per key
found, the ids of the examples holding it, earliest first (the API lists
examples by ``created_at``, then ``id``). Three ways, the cheapest the server
allows, chosen from its answers (a 400 or 422 to a filter means "not this way"):

1. ``range``: one search, ``key >= lo AND key < hi``, for a batch's keys (they
   are one range of strings by construction). Whether the server compares
   strings that way is not documented, so the first range search is checked
   against keys known to be stored; a server that gets it wrong is not asked again.
2. ``list``: searches of ``key = 'a' OR key = 'b' ...``, ``_LIST_KEYS`` at a time
   (equality on strings is documented).
3. ``scan``: the server refuses filters. Nothing is looked up per batch; the
   caller collects its batches and reads the dataset once for all of them.

The cost grows with the keys looked up, not with the dataset, except in ``scan``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import anyio
import orjson

from ingest.client import DatasetsClient, Reply
from ingest.errors import DatasetNotFoundError, DeliveryError
from ingest.retry import Action, classify
from ingest.rows import natural_key

log = logging.getLogger("ingest")

Call = Callable[[Callable[[], Awaitable[Reply]], str], Awaitable[Reply]]
Found = dict[str, list[str]]  # key -> ids of the examples holding it, earliest first

PAGE = 500  # the API's largest page
_LIST_KEYS = 50  # keys per OR-list filter: the longest filter the API takes is not documented
_DELETE_IDS = 1000  # the API's limit per DELETE
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def quote_field(name: str) -> str:
    """A field name as the filter language writes it."""
    return name if _PLAIN_NAME.match(name) else '"' + name.replace('"', '""') + '"'


def quote_text(text: str) -> str:
    """A string literal of the filter language."""
    return "'" + text.replace("'", "''") + "'"


class FilterRefused(Exception):
    """The server answered a filtered search with 400/422: it does not search that way."""


class Lookup:
    """Looks keys up in one dataset.

    lookup = Lookup(call=caller.call, client=client, key_field="ingest_key", version=v)
    found = await lookup.keys(batch.keys, lo, hi)   # None: filters refused, scan instead
    await lookup.delete(extra_ids)
    """

    def __init__(
        self,
        *,
        call: Call,
        client: DatasetsClient,
        key_field: str,
        version: str | None,
        natural: bool = False,
        lag: float = 0.0,
    ) -> None:
        self._call = call
        self._client = client
        self.key_field = key_field
        self.version = version
        # Natural keys (--key-from) are values' JSON texts, in no order: no range.
        self.natural = natural
        self.mode = "list" if natural else "range"
        self._range_checked = False
        # Held through the check: a worker that found the check under way and searched by
        # range meanwhile would take a server's wrong range answer for missing rows.
        self._checking = anyio.Lock()
        self._known: tuple[list[str], str, str] | None = None  # stored keys, to check ranges
        # The check waits until they can show in a search: a commit that takes a moment to
        # be visible would otherwise fail it, and range searches be given up for good.
        self._lag = lag
        self._known_at = 0.0
        self.searches = 0  # requests made, for the summary
        self.examples_read = 0

    @property
    def wants_stored(self) -> bool:
        """Whether keys known stored are still wanted, to check range searches against."""
        return self._known is None and not self.natural

    def note_stored(self, keys: Iterable[str], lo: str, hi: str) -> None:
        """Remember a few keys the server confirmed stored: the check of a range search."""
        if self._known is None:
            held = list(keys)
            # Both ends of the range: a server that gets either bound wrong fails the check.
            self._known = (held[:2] + held[-1:] if len(held) > 2 else held, lo, hi)
            self._known_at = anyio.current_time()

    async def keys(self, keys: tuple[str, ...], lo: str, hi: str) -> Found | None:
        """The examples holding ``keys`` (all within ``lo <= key < hi``); None in scan mode."""
        wanted = set(keys)
        if self.mode == "range" and await self._range_works():
            try:
                return await self._search(self._range(lo, hi), wanted)
            except FilterRefused:
                self._fall_back("list", "a range filter")
        if self.mode in ("range", "list"):
            try:
                found: Found = {}
                ordered = sorted(wanted)
                for i in range(0, len(ordered), _LIST_KEYS):
                    found.update(
                        await self._search(self._any_of(ordered[i : i + _LIST_KEYS]), wanted)
                    )
                return found
            except FilterRefused:
                self._fall_back("scan", "an equality filter")
        return None

    async def _range_works(self) -> bool:
        """Whether range searches find what they should; checked once, on stored keys."""
        if self._range_checked:
            return True
        if self._known is None or anyio.current_time() - self._known_at < self._lag:
            return False  # nothing known stored (and visible) yet: equality is the documented way
        async with self._checking:
            if self._range_checked or self.mode != "range":
                return self._range_checked and self.mode == "range"
            keys, lo, hi = self._known
            try:
                found = await self._search(self._range(lo, hi), set(keys))
            except FilterRefused:
                self._fall_back("list", "a range filter")
                return False
            if set(found) != set(keys):
                self._fall_back("list", "a range filter (it missed keys known to be stored)")
                return False
            self._range_checked = True
            return True

    def _fall_back(self, mode: str, what: str) -> None:
        log.info("the server does not search by %s: looking keys up by %s", what, mode)
        self.mode = mode

    def _range(self, lo: str, hi: str) -> str:
        field = quote_field(self.key_field)
        return f"{field} >= {quote_text(lo)} AND {field} < {quote_text(hi)}"

    def _any_of(self, keys: list[str]) -> str:
        field = quote_field(self.key_field)
        return " OR ".join(f"{field} = {self._literal(k)}" for k in keys)

    def _literal(self, key: str) -> str:
        if not self.natural:
            return quote_text(key)
        # A natural key is its value's JSON text: a string literal, or the number as is.
        return quote_text(orjson.loads(key)) if key.startswith('"') else key

    async def in_range(self, lo: str, hi: str) -> Found | None:
        """Every example with a key in ``lo <= key < hi``; None where ranges cannot be used."""
        if self.mode != "range" or not await self._range_works():
            return None
        try:
            return await self._pages(self._range(lo, hi), lambda key: True)
        except FilterRefused:
            self._fall_back("list", "a range filter")
            return None

    async def between(self, lo: str, hi: str) -> Found:
        """Every keyed example with ``lo <= key < hi``, by one paginated search.

        Raises ``FilterRefused`` where the server does not search that way. Unchecked:
        the caller judges whether the server compares strings as it should.
        """
        return await self._pages(self._range(lo, hi), lambda _key: True)

    async def scan(self, wanted: Callable[[str], bool]) -> Found:
        """Read the whole dataset once; the examples whose key ``wanted`` accepts."""
        return await self._pages(None, wanted)

    async def _search(self, text: str, wanted: set[str]) -> Found:
        return await self._pages(text, wanted.__contains__)

    async def _pages(self, text: str | None, wanted: Callable[[str], bool]) -> Found:
        found: Found = {}
        cursor: str | None = None
        while True:
            body: dict[str, Any] = {"limit": PAGE}
            if text is not None:
                body["filter"] = text
            if cursor is not None:
                body["cursor"] = cursor
            if self.version is not None:
                body["dataset_version_id"] = self.version
            data = orjson.dumps(body)
            self.searches += 1
            try:
                reply = await self._call(
                    partial(self._client.search, data), "a search for row keys"
                )
            except DatasetNotFoundError as exc:
                # The preflight found the dataset: it is the search that is not there.
                raise DeliveryError(
                    "the server has no search of examples (HTTP 404 to POST .../examples/search), "
                    "so rows whose outcome is unknown cannot be looked up; re-run with --no-key "
                    "for at-least-once delivery (see the README's guarantees)"
                ) from exc
            if classify(reply.status) is not Action.DELIVERED:
                if text is not None and reply.status in (400, 422):
                    raise FilterRefused(reply.problem())
                raise DeliveryError(f"the API refused a search for row keys ({reply.problem()})")
            examples, cursor = _page(reply)
            self.examples_read += len(examples)
            for example in examples:
                value = example.get(self.key_field)
                key = natural_key(value) if self.natural else value
                if isinstance(key, str) and wanted(key):
                    ids = found.setdefault(key, [])
                    # An example shown again (a cursor that slid) is not a copy of itself:
                    # counted twice, its one copy would be deleted as an extra.
                    if (id_ := str(example.get("id"))) not in ids:
                        ids.append(id_)
            if cursor is None:
                return found

    async def delete(self, ids: list[str]) -> int:
        """Delete the examples ``ids``; how many the server says it deleted."""
        if not ids:
            return 0
        if self.version is None:
            raise DeliveryError(
                "extra copies of rows must be deleted, but the dataset lists no version to "
                "delete them from: pass --dataset-version-id"
            )
        deleted = 0
        for i in range(0, len(ids), _DELETE_IDS):
            data = orjson.dumps(
                {"dataset_version_id": self.version, "example_ids": ids[i : i + _DELETE_IDS]}
            )
            reply = await self._call(
                partial(self._client.delete_examples, data), "a delete of extra copies"
            )
            if classify(reply.status) is not Action.DELIVERED:
                raise DeliveryError(f"the API refused to delete extra copies ({reply.problem()})")
            doc = reply.json()
            done = doc.get("deleted_example_ids") if isinstance(doc, dict) else None
            deleted += len(done) if isinstance(done, list) else 0
        return deleted


def _page(reply: Reply) -> tuple[list[dict[str, Any]], str | None]:
    """The examples of one page and the cursor of the next (None: the last page)."""
    doc = reply.json()
    examples = doc.get("examples") if isinstance(doc, dict) else None
    if not isinstance(examples, list):
        raise DeliveryError(
            "a search for row keys: " + reply.not_the_api('JSON with an "examples" list')
        )
    pagination = doc.get("pagination") if isinstance(doc, dict) else None
    if not isinstance(pagination, dict) or pagination.get("has_more") is not True:
        return [e for e in examples if isinstance(e, dict)], None
    cursor = pagination.get("next_cursor")
    if not isinstance(cursor, str) or not cursor:
        # Stopping here would take the rest of the pages for missing rows, and resend them.
        raise DeliveryError(
            "a search for row keys: " + reply.not_the_api("a next_cursor with has_more true")
        )
    return [e for e in examples if isinstance(e, dict)], cursor
