"""The official `arize` SDK works against the fake server, so the fake's shapes are real ones.

The SDK validates every response with models generated from Arize's OpenAPI
spec; if the fake answered with a field missing, renamed or mistyped, these
calls would raise. Skipped when the SDK is not installed, except on CI.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest
from conftest import FakeService

pytestmark = pytest.mark.arize

if os.environ.get("CI") == "true":
    import arize  # noqa: F401  (on CI a missing SDK must fail, not skip)
else:
    pytest.importorskip("arize")

from arize import ArizeClient  # noqa: E402  (only after the skip above)


def sdk_client(fake: FakeService) -> ArizeClient:
    """An SDK client pointed at the fake server over plain HTTP."""
    port = int(fake.url.rsplit(":", 1)[1])
    return ArizeClient(api_key=fake.api_key, api_scheme="http", api_host="127.0.0.1", api_port=port)


async def test_sdk_appends_then_reads_back_the_rows(fake: FakeService) -> None:
    """append_examples, get and list_examples (the search endpoint) all succeed and agree."""
    rows: list[dict[str, Any]] = [
        {"question": "What is 2 + 2?", "answer": "4", "topic": "arithmetic", "score": 0.9},
        {"question": "If 3x = 12, what is x?", "answer": "4", "topic": "algebra", "score": 0.4},
        {
            "question": "Square root of 16?",
            "answer": "4",
            "topic": "geometry",
            "nested": {"a": [1]},
        },
    ]

    def use_sdk() -> tuple[Any, Any, Any, Any]:
        client = sdk_client(fake)
        appended = client.datasets.append_examples(dataset=fake.dataset_id, examples=rows)
        dataset = client.datasets.get(dataset=fake.dataset_id)
        listed = client.datasets.list_examples(dataset=fake.dataset_id, limit=2)
        filtered = client.datasets.list_examples(
            dataset=fake.dataset_id, filter="score >= 0.5 OR topic = 'geometry'"
        )
        return appended, dataset, listed, filtered

    appended, dataset, listed, filtered = await anyio.to_thread.run_sync(use_sdk)

    assert appended.id == fake.dataset_id
    assert len(appended.example_ids) == 3
    assert appended.dataset_version_id == dataset.versions[0].id
    assert dataset.id == fake.dataset_id
    assert [e.id for e in listed.examples] == appended.example_ids[:2]
    assert listed.pagination.has_more is True
    assert [e.additional_properties for e in listed.examples] == rows[:2]
    assert [e.additional_properties["topic"] for e in filtered.examples] == [
        "arithmetic",
        "geometry",
    ]
    assert fake.state.example_count(fake.dataset_id) == 3


async def test_sdk_pages_with_the_returned_cursor(fake: FakeService) -> None:
    """The SDK can page through list_examples with the fake's next_cursor until has_more ends."""

    def use_sdk() -> list[str]:
        client = sdk_client(fake)
        client.datasets.append_examples(
            dataset=fake.dataset_id, examples=[{"i": i} for i in range(7)]
        )
        seen: list[str] = []
        cursor = None
        while True:
            page = client.datasets.list_examples(dataset=fake.dataset_id, limit=3, cursor=cursor)
            seen += [e.id for e in page.examples]
            if not page.pagination.has_more:
                return seen
            cursor = page.pagination.next_cursor

    seen = await anyio.to_thread.run_sync(use_sdk)
    assert seen == [e["id"] for e in fake.state.examples(fake.dataset_id)]


async def test_sdk_sees_the_fakes_refusals_as_api_errors(fake: FakeService) -> None:
    """A reserved field is refused with 422, which the SDK parses as a problem body."""
    from arize._generated.api_client.exceptions import ApiException

    def use_sdk() -> ApiException:
        client = sdk_client(fake)
        with pytest.raises(ApiException) as raised:
            client.datasets.append_examples(dataset=fake.dataset_id, examples=[{"id": "x"}])
        return raised.value

    error = await anyio.to_thread.run_sync(use_sdk)
    assert error.status == 422
    assert "examples[0]" in (error.body or "")
    assert fake.state.example_count(fake.dataset_id) == 0


async def test_sdk_creates_deletes_and_updates(fake: FakeService) -> None:
    """create (over REST), update_examples and delete_examples parse the fake's answers."""

    def use_sdk() -> tuple[Any, Any, Any]:
        client = sdk_client(fake)
        created = client.datasets.create(
            name="sdk-made",
            space="U3BhY2U6MTphQmNE",
            examples=[{"q": "a"}, {"q": "b"}],
            force_http=True,
        )
        ids = [e.id for e in client.datasets.list_examples(dataset=created.id).examples]
        updated = client.datasets.update_examples(
            dataset=created.id, examples=[{"id": ids[0], "q": "A"}]
        )
        deleted = client.datasets.delete_examples(
            dataset=created.id, dataset_version_id=created.versions[0].id, examples=[ids[1]]
        )
        return created, updated, deleted

    created, updated, deleted = await anyio.to_thread.run_sync(use_sdk)
    assert created.name == "sdk-made"
    assert len(updated.example_ids) == 1
    assert deleted.completed is True and len(deleted.deleted_example_ids) == 1
    assert [e["q"] for e in fake.state.examples(created.id)] == ["A"]
