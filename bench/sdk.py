"""The official SDK as a yardstick: append_examples, 1000 rows a call, as its docs show.

Usage: sdk.py INPUT URL DATASET_ID; key from ARIZE_API_KEY. Needs `pip install -e '.[arize]'`.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import orjson
from arize import ArizeClient


def main(path: str, url: str, dataset: str) -> None:
    parts = urlsplit(url)
    client = ArizeClient(
        api_key=os.environ["ARIZE_API_KEY"],
        api_scheme=parts.scheme,
        api_host=parts.hostname,
        api_port=parts.port,
    )
    batch: list[dict[str, object]] = []
    with open(path, "rb") as f:
        for line in f:
            batch.append(orjson.loads(line))
            if len(batch) == 1000:  # the most it takes per call
                client.datasets.append_examples(dataset=dataset, examples=batch)
                batch = []
    if batch:
        client.datasets.append_examples(dataset=dataset, examples=batch)


if __name__ == "__main__":
    main(*sys.argv[1:4])
