"""``python -m ingest``: the same as the ``ingest`` command."""

from ingest.cli import entry_point

entry_point()
