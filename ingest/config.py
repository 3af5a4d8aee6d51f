"""RunConfig: every setting of a run, from a TOML file and flags, validated.

A TOML config holds the same keys as ``RunConfig``'s fields (``batch_rows``,
``dataset_id``, ...); flags override it. Relative paths in a config file are
relative to the file. The API key is never a setting: it comes from
``ARIZE_API_KEY`` in the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.batcher import MAX_BATCH_ROWS
from ingest.errors import ConfigError

API_KEY_ENV = "ARIZE_API_KEY"
DEFAULT_BASE_URL = "https://api.arize.com"
_PATH_FIELDS = ("input", "checkpoint", "rejects")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """One upload: what to read, where to send it, and how hard to push.

    config = RunConfig(input="rows.jsonl", dataset_id="RGF0YXNldDoxOmFCY0Q=")
    summary = await ingest.upload(config)
    """

    input: str
    dataset_id: str
    base_url: str = DEFAULT_BASE_URL
    dataset_version_id: str | None = None
    checkpoint: str | None = None  # default: beside the input, named after the dataset
    rejects: str | None = None  # default: beside the checkpoint
    batch_rows: int = 500
    batch_bytes: int = 4 * 1024 * 1024
    concurrency: int = 8
    rate: float | None = 20.0  # requests per second across all workers; 0 or None = unlimited
    request_timeout: float = 60.0
    max_attempts: int = 8  # per batch, 429s not counted (they are bounded by max_retry_seconds)
    max_retry_seconds: float = 600.0  # per batch, from its first attempt
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    # On Ctrl-C / SIGTERM: how long in-flight requests may finish. Under Kubernetes'
    # default 30 s termination grace, with room left to flush the journal.
    shutdown_grace: float = 20.0
    restart: bool = False  # discard a checkpoint of another run (kept as <checkpoint>.bak)

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def checkpoint_path(self) -> str:
        """Where the journal lives: given, or ``<input>.ingest-<dataset tag>.ckpt``."""
        if self.checkpoint:
            return self.checkpoint
        return f"{self._stem()}.ckpt"

    @property
    def rejects_path(self) -> str:
        """Where rejected lines go: given, or beside the checkpoint."""
        if self.rejects:
            return self.rejects
        if self.checkpoint:
            return str(Path(self.checkpoint).with_suffix(".rejects.jsonl"))
        return f"{self._stem()}.rejects.jsonl"

    @property
    def checkpoint_suffix(self) -> str:
        """How every default checkpoint for this dataset and version ends."""
        return f".ingest-{self._tag()}.ckpt"

    def _tag(self) -> str:
        target = f"{self.dataset_id}\0{self.dataset_version_id or ''}".encode()
        return hashlib.sha256(target).hexdigest()[:8]

    def _stem(self) -> str:
        base = "stdin" if self.input == "-" else self.input
        return f"{base}.ingest-{self._tag()}"

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed (and validated again)."""
        return dataclasses.replace(self, **changes)


def _problems(c: RunConfig) -> list[str]:
    out = []
    if not c.input:
        out.append("input is required (--input PATH, or - for stdin)")
    if not c.dataset_id:
        out.append("dataset_id is required (--dataset-id ID)")
    url = urlsplit(c.base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        out.append(f"base_url must be an http(s) URL, not {c.base_url!r}")
    if not 1 <= c.batch_rows <= MAX_BATCH_ROWS:
        out.append(f"batch_rows must be 1..{MAX_BATCH_ROWS} (the API's limit), not {c.batch_rows}")
    if c.batch_bytes < 1024:
        out.append(f"batch_bytes must be at least 1024, not {c.batch_bytes}")
    if not 1 <= c.concurrency <= 256:
        out.append(f"concurrency must be 1..256, not {c.concurrency}")
    if c.rate is not None and not 0 <= c.rate < math.inf:
        out.append(f"rate must be a positive number (or 0 for no limit), not {c.rate}")
    out.extend(
        f"{name} must be a positive number, not {getattr(c, name)}"
        for name in ("request_timeout", "max_retry_seconds", "backoff_base", "backoff_max")
        if not 0 < getattr(c, name) < math.inf
    )
    if c.max_attempts < 1:
        out.append(f"max_attempts must be at least 1, not {c.max_attempts}")
    if not 0 <= c.shutdown_grace < math.inf:
        out.append(f"shutdown_grace must be 0 or more seconds, not {c.shutdown_grace}")
    return out


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config into RunConfig keyword arguments; paths resolved against its folder."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for key in data:
        if key in ("api_key", "arize_api_key"):
            raise ConfigError(
                f"{path}: remove {key!r}; the API key is read only from the "
                f"{API_KEY_ENV} environment variable, never from a file"
            )
        if key not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
    folder = Path(path).parent
    for key in _PATH_FIELDS:
        value = data.get(key)
        if isinstance(value, str) and value != "-" and not os.path.isabs(value):
            data[key] = os.path.normpath(folder / value)
    return data


def build_config(toml: dict[str, Any], overrides: dict[str, Any], *, source: str) -> RunConfig:
    """RunConfig from a config file's values with flags on top; type errors name ``source``."""
    merged = {**toml, **{k: v for k, v in overrides.items() if v is not None}}
    if isinstance(merged.get("batch_bytes"), str):
        try:
            merged["batch_bytes"] = parse_size(merged["batch_bytes"])
        except ValueError as exc:
            raise ConfigError(f"{source}: batch_bytes: {exc}") from exc
    for key, value in merged.items():
        _check_type(key, value, source)
    try:
        return RunConfig(**merged)
    except (TypeError, ConfigError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4194304``, ``4MiB``, ``512k`` → bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4MiB or 4194304)")
    unit = (match.group(2) or "b")[0].lower()
    return int(match.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def _check_type(key: str, value: Any, source: str) -> None:
    annotation = str(_FIELDS[key].type)
    ok = True
    if "bool" in annotation:
        ok = isinstance(value, bool)
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif "float" in annotation:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif "str" in annotation:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{source}: {key} must be {annotation}, not {value!r}")
