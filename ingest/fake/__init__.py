"""An in-memory, Arize-compatible datasets API server for tests, demos and benchmarks.

It speaks the part of Arize's REST API v2 that `ingest` uses, the datasets
endpoints, with the same paths, status codes, problem+json errors, limits and
reserved fields; and it can be told to misbehave (`Faults`).

    >>> state = FakeArize(api_key="test-key", faults=Faults(fail_rate=0.1))
    >>> dataset_id = state.create_dataset()
    >>> async with serve(state) as url:  # doctest: +SKIP
    ...     ...  # point the client at url
"""

from ingest.fake.app import make_app
from ingest.fake.cli import main
from ingest.fake.faults import Faults
from ingest.fake.server import serve
from ingest.fake.storage import FakeArize, RequestLogEntry

__all__ = [
    "FakeArize",
    "Faults",
    "RequestLogEntry",
    "main",
    "make_app",
    "serve",
]
