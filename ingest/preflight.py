"""Preflight: one GET of the dataset before any input is read.

Takes the retrying caller and the client; gives back nothing, or raises: a
refused key (401/403), an unknown dataset or version (404), or a base URL that
does not lead to the API (a redirect, a 2xx that is not the dataset's JSON)
fails the run here, after one request, before a row is sent. A base URL whose
host cannot be reached (its name does not resolve, nothing listens) fails here
too, after a few tries (``RetryPolicy.unreachable``), not the whole retry budget.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ingest.caller import Unreachable
from ingest.client import DatasetsClient, Reply
from ingest.config import API_KEY_ENV, DEFAULT_BASE_URL, RunConfig
from ingest.errors import BaseUrlError, DatasetNotFoundError, DeliveryError
from ingest.retry import Action, classify


class Call(Protocol):
    """The run's retrying call (``RetryingCaller.call``): the reply that ends the retries."""

    def __call__(
        self,
        request: Callable[[], Awaitable[Reply]],
        what: str,
        *,
        bound_unreachable: bool = ...,
    ) -> Awaitable[Reply]: ...


def refusal_message(action: Action, reply: Reply, config: RunConfig) -> str:
    """What a refusal retrying cannot fix means, in words naming what to check."""
    c = config
    if action is Action.AUTH:
        return (
            f"the API refused the key in {API_KEY_ENV} ({reply.problem()}); check that it "
            "is a valid Arize API key with access to this dataset's space"
        )
    if action is Action.NOT_FOUND:
        version = f" (version {c.dataset_version_id!r})" if c.dataset_version_id else ""
        # The API's 404 is problem+json; a bare one comes from something else at that URL.
        doc = reply.json()
        elsewhere = (
            ""
            if isinstance(doc, dict) and ("title" in doc or "detail" in doc)
            else f", or --base-url: the answer is not the API's, and {c.base_url} may not be it"
        )
        return (
            f"dataset {c.dataset_id!r}{version} was not found at {c.base_url} "
            f"({reply.problem()}); check --dataset-id{elsewhere}"
        )
    return f"the API refused the request ({reply.problem()})"


async def preflight(call: Call, client: DatasetsClient, config: RunConfig) -> str | None:
    """One GET before reading anything: a wrong key or dataset fails here, after 1 request.

    Returns the id of the version the run writes to (the one asked for, else the
    newest the dataset lists), which deleting extra copies has to name.
    """
    try:
        reply = await call(
            client.get_dataset, "the preflight GET of the dataset", bound_unreachable=True
        )
    except Unreachable as exc:
        raise BaseUrlError(
            f"{config.base_url} cannot be reached: {exc.cause}, on {exc.attempts} attempts in "
            f"{exc.elapsed:.0f}s; check --base-url (its host name and port; the API is "
            f"{DEFAULT_BASE_URL} or a regional host) and that this machine can reach it "
            "(network, firewall, HTTPS_PROXY), then re-run the same command"
        ) from None
    if classify(reply.status) is not Action.DELIVERED:  # a 400/422: nothing can fix it
        raise DeliveryError(f"the API refused the preflight GET of the dataset ({reply.problem()})")
    doc = reply.json()
    if not (isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]):
        # A web front end answers 200 to anything: only the dataset itself passes.
        raise BaseUrlError(
            "the preflight GET of the dataset: "
            + reply.not_the_api('the dataset as a JSON object with its "id"')
        )
    if config.dataset_version_id:
        versions = doc.get("versions")
        if isinstance(versions, list):
            ids = {v.get("id") for v in versions if isinstance(v, dict)}
            if config.dataset_version_id not in ids:
                raise DatasetNotFoundError(
                    f"dataset {config.dataset_id!r} has no version "
                    f"{config.dataset_version_id!r}; check --dataset-version-id"
                )
        return config.dataset_version_id
    versions = doc.get("versions")
    newest = versions[0] if isinstance(versions, list) and versions else None
    version = newest.get("id") if isinstance(newest, dict) else None
    return version if isinstance(version, str) and version else None
