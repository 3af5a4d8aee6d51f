"""ingest: fast, resumable bulk uploads of JSONL records into Arize AI datasets.

import ingest
summary = await ingest.upload(input="rows.jsonl", dataset_id="RGF0YXNldDox...")
print(summary.to_text())

The names below are imported when first used (PEP 562), so ``import ingest.cli``
or ``python -m ingest run`` loads only the modules its subcommand needs.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ingest.version import VERSION as __version__

if TYPE_CHECKING:
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

# Where each public name lives: the module is imported on the name's first use.
_HOMES = {
    "AuthError": "errors",
    "BaseUrlError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DatasetNotFoundError": "errors",
    "DatasetRefusedError": "errors",
    "DeliveryError": "errors",
    "IngestError": "errors",
    "RejectsFileError": "errors",
    "RepairPlan": "verify_report",
    "RetriesExhaustedError": "errors",
    "RunConfig": "config",
    "SourceError": "errors",
    "Summary": "report",
    "UnbalancedError": "errors",
    "VerifyReport": "verify_report",
    "upload": "pipeline",
    "verify": "verify",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ingest.{home}"), name)
    globals()[name] = value  # found once: later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """The package, keeping ``ingest.verify`` the function.

    Importing a submodule sets it as its package's attribute, and ``ingest/verify.py``
    shares its name with the function: imported before the function was asked for
    (``from ingest.verify import ...``), it would hide it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "verify" and isinstance(value, ModuleType):
            return  # the submodule stays reachable as sys.modules["ingest.verify"]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
