"""ingest: fast, resumable bulk uploads of JSONL records into Arize AI datasets.

import ingest
summary = await ingest.upload(input="rows.jsonl", dataset_id="RGF0YXNldDox...")
print(summary.to_text())
"""

from ingest.config import RunConfig
from ingest.errors import (
    AuthError,
    BaseUrlError,
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    DatasetRefusedError,
    DeliveryError,
    IngestError,
    RejectsFileError,
    RetriesExhaustedError,
    SourceError,
    UnbalancedError,
)
from ingest.pipeline import upload
from ingest.report import Summary
from ingest.verify import verify
from ingest.verify_report import RepairPlan, VerifyReport
from ingest.version import VERSION as __version__

__all__ = [
    "AuthError",
    "BaseUrlError",
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "DatasetRefusedError",
    "DeliveryError",
    "IngestError",
    "RejectsFileError",
    "RepairPlan",
    "RetriesExhaustedError",
    "RunConfig",
    "SourceError",
    "Summary",
    "UnbalancedError",
    "VerifyReport",
    "__version__",
    "upload",
    "verify",
]
