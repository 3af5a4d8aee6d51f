"""The errors `ingest` raises, and the exit code each one maps to.

    IngestError                     base; exit 1 when nothing more specific applies
    ├── ConfigError                 bad flags, TOML, settings or a missing input (exit 2)
    ├── CheckpointError             checkpoint of another run, corrupt, or in use (exit 2)
    │   └── RejectsFileError        the rejects file cannot be opened or written (exit 2)
    ├── SourceError                 input cannot be read at all (exit 2); names file and line
    ├── UnbalancedError             the dataset does not hold each input row once (exit 7)
    └── DeliveryError               the API refused or could not take the rows
        ├── AuthError               401/403: ARIZE_API_KEY is refused (exit 3)
        ├── DatasetNotFoundError    404: the dataset (or version) does not exist (exit 4)
        ├── BaseUrlError            the base URL is not the API (a 3xx, a 2xx not its JSON) or
        │                           cannot be reached: no such host, refused (exit 5)
        ├── RetriesExhaustedError   retries ran out or an unexpected refusal (exit 5, resumable)
        └── DatasetRefusedError     every row of several batches in a row refused alike: the
                                    dataset's doing (a schema, a lock), not the rows' (exit 5;
                                    re-running only helps once the dataset is fixed)

A bad *line* is not an error: it goes to the rejects file and the run goes on.
"""

from __future__ import annotations

from typing import Any


class IngestError(Exception):
    """Raised when a run cannot go on; the message says what to do next."""

    exit_code = 1
    summary: Any = None  # the run's Summary so far, when a run was under way


class ConfigError(IngestError):
    """Raised when flags, the TOML config or the settings they give are invalid."""

    exit_code = 2


class CheckpointError(IngestError):
    """Raised when a checkpoint belongs to another run, is corrupt, or is in use."""

    exit_code = 2


class RejectsFileError(CheckpointError):
    """Raised when the rejects file cannot be opened or written; resumable once fixed."""


class SourceError(IngestError):
    """Raised when the input cannot be opened or read at all."""

    exit_code = 2

    def __init__(self, message: str, *, path: str, line: int | None = None) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class UnbalancedError(IngestError):
    """Raised when the dataset does not hold each row of the input exactly once."""

    exit_code = 7


class DeliveryError(IngestError):
    """Raised when the API refused or could not take the rows."""

    exit_code = 5


class AuthError(DeliveryError):
    """Raised when the API answers 401 or 403 to our key."""

    exit_code = 3


class DatasetNotFoundError(DeliveryError):
    """Raised when the API answers 404 for the dataset or its version."""

    exit_code = 4


class BaseUrlError(DeliveryError):
    """Raised when the base URL answers as the API never does, or its host cannot be reached."""

    exit_code = 5


class RetriesExhaustedError(DeliveryError):
    """Raised when a batch could not be delivered within the retry budget."""

    exit_code = 5


class DatasetRefusedError(DeliveryError):
    """Raised when the server refuses whole batches alike: the dataset is at fault, not the rows."""

    exit_code = 5
