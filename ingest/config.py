"""RunConfig: every setting of a run, from a TOML file and flags, validated.

A TOML config holds the same keys as ``RunConfig``'s fields (``batch_rows``,
``dataset_id``, ...); flags override it. Relative paths in a config file are
relative to the file. The API key is never a setting: it comes from
``ARIZE_API_KEY`` in the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ingest.batcher import MAX_BATCH_ROWS
from ingest.errors import ConfigError
from ingest.keys import DEFAULT_KEY_FIELD
from ingest.rows import RESERVED_FIELDS, RESERVED_PREFIX

API_KEY_ENV = "ARIZE_API_KEY"
AUTO = "auto"  # a rate or concurrency the run finds by itself
DEFAULT_BASE_URL = "https://api.arize.com"
_PATH_FIELDS = ("input", "checkpoint", "rejects")
_REQUIRED = {
    "input": "input is required (--input PATH, or - for stdin)",
    "dataset_id": "dataset_id is required (--dataset-id ID)",
}
# Names of the process's own standard input: read as "-", so the checkpoint is not put in /dev.
STDIN_ALIASES = frozenset({"/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
MAX_BATCH_BYTES = 256 << 20  # a body this big already draws Arize's 500; memory is concurrency x it
_MAX_SECONDS = 7 * 24 * 3600.0  # beyond a week a wait is a typo, and asyncio's timers overflow


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
    # "auto": requests in flight follow the latency (up to 128); a number fixes them.
    concurrency: int | str = AUTO
    # "auto": found from the server's throttles; a number is a hard cap; 0 (or None) = no limit.
    rate: float | str | None = AUTO
    request_timeout: float = 60.0
    max_attempts: int = 10  # per batch, 429s not counted (they are bounded by max_retry_seconds)
    max_retry_seconds: float = 600.0  # per batch, from its first attempt
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    # On Ctrl-C / SIGTERM: how long in-flight requests may finish. Under Kubernetes'
    # default 30 s termination grace, with room left to flush the journal.
    shutdown_grace: float = 20.0
    restart: bool = False  # discard a checkpoint of another run (kept as <checkpoint>.bak)
    # Row keys (``ingest.keys``) make delivery exactly-once; without them, at-least-once.
    key_field_name: str = DEFAULT_KEY_FIELD
    no_key: bool = False
    key_from: str | None = None  # a field the rows hold, unique, as their natural key
    # Seconds a commit may take to show in a search: a look-up that misses a row this
    # soon after its request looks again before the row is sent again.
    settle_lag: float = 2.0
    # A plain http:// base_url sends the key in clear: only loopback unless this is set.
    allow_insecure_http: bool = False

    def __post_init__(self) -> None:
        # A library caller may pass pathlib.Path (any os.PathLike) for a path.
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if self.input in STDIN_ALIASES:
            object.__setattr__(self, "input", "-")
        problems = [p for name in _FIELDS if (p := _type_problem(name, getattr(self, name)))]
        if not problems:
            problems = _problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RunConfig:
        """A RunConfig from keyword settings; a missing or unknown one is a ConfigError."""
        unknown = sorted(set(settings) - set(_FIELDS))
        if unknown:
            known = ", ".join(sorted(_FIELDS))
            raise ConfigError(f"unknown setting {unknown[0]!r} (known: {known})")
        missing = [text for name, text in _REQUIRED.items() if settings.get(name) is None]
        if missing:
            raise ConfigError("; ".join(missing))
        return cls(**settings)

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

    @property
    def key_field(self) -> str | None:
        """The field ingest adds each row's key as; None with no keys or natural ones."""
        return None if self.no_key or self.key_from else self.key_field_name

    @property
    def lookup_field(self) -> str | None:
        """The field rows are looked up by: the natural key, or the added one."""
        return None if self.no_key else self.key_from or self.key_field_name

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed (and validated again)."""
        return RunConfig.from_settings({**_settings_of(self), **changes})


def _problems(c: RunConfig) -> list[str]:
    out = []
    if not c.input:
        out.append(_REQUIRED["input"])
    if not c.dataset_id:
        out.append(_REQUIRED["dataset_id"])
    out.extend(_base_url_problems(c))
    if not 1 <= c.batch_rows <= MAX_BATCH_ROWS:
        out.append(f"batch_rows must be 1..{MAX_BATCH_ROWS} (the API's limit), not {c.batch_rows}")
    if not 1024 <= c.batch_bytes <= MAX_BATCH_BYTES:
        out.append(
            f"batch_bytes must be 1024..{MAX_BATCH_BYTES} ({MAX_BATCH_BYTES >> 20}MiB), "
            f"not {c.batch_bytes}"
        )
    if c.concurrency != AUTO and not 1 <= int(c.concurrency) <= 256:
        out.append(f"concurrency must be 1..256 or auto, not {c.concurrency}")
    if c.rate not in (AUTO, None) and not 0 <= float(c.rate or 0) < math.inf:
        out.append(f"rate must be a positive number, 0 for no limit, or auto, not {c.rate}")
    out.extend(
        f"{name} must be a positive number of seconds up to {_MAX_SECONDS:.0f}, "
        f"not {getattr(c, name)}"
        for name in ("request_timeout", "max_retry_seconds", "backoff_base", "backoff_max")
        if not 0 < getattr(c, name) <= _MAX_SECONDS
    )
    if not 1 <= c.max_attempts <= 1000:
        out.append(f"max_attempts must be 1..1000, not {c.max_attempts}")
    if not c.key_field_name or not c.key_field_name.isprintable():
        out.append(f"key_field_name must be a printable field name, not {c.key_field_name!r}")
    elif c.key_field_name in RESERVED_FIELDS or c.key_field_name.startswith(RESERVED_PREFIX):
        out.append(f"key_field_name {c.key_field_name!r} is a field the API reserves; pick another")
    if c.key_from is not None and (c.no_key or not c.key_from):
        out.append("key_from names a field of the rows; it cannot go with no_key")
    if not 0 <= c.settle_lag <= _MAX_SECONDS:
        out.append(f"settle_lag must be 0..{_MAX_SECONDS:.0f} seconds, not {c.settle_lag}")
    if not 0 <= c.shutdown_grace <= _MAX_SECONDS:
        out.append(f"shutdown_grace must be 0..{_MAX_SECONDS:.0f} seconds, not {c.shutdown_grace}")
    return out


def _base_url_problems(c: RunConfig) -> list[str]:
    try:
        url = urlsplit(c.base_url)
        host, _ = url.hostname or "", url.port  # a bad port or "[::1" raises here
    except ValueError:
        url, host = None, ""
    if url is None or url.scheme not in ("http", "https") or not host:
        return [f"base_url must be an http(s) URL, not {c.base_url!r}"]
    try:
        # As the resolver will be asked: an empty or over-long label ("api..arize.com")
        # would otherwise fail deep inside aiohttp, as an unexpected error.
        host.encode("idna")
    except UnicodeError:
        return [f"base_url {c.base_url!r} has no valid host name; check --base-url"]
    if url.scheme == "http" and not c.allow_insecure_http and not _is_loopback(host):
        return [
            f"base_url {c.base_url!r} is plain http: the API key and every row would cross "
            "the network unencrypted. Use https://, or pass --allow-insecure-http "
            "(allow_insecure_http = true) for a network you trust"
        ]
    return []


def _is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: localhost, 127.0.0.0/8 or ::1."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
SETTING_NAMES = tuple(_FIELDS)  # what flags, TOML keys and upload() keywords may set


def _settings_of(config: RunConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in _FIELDS}


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config into RunConfig keyword arguments; paths resolved against its folder."""
    import tomllib  # here, not at the top: a run from flags alone never pays its ~5 ms import

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
    try:
        return RunConfig.from_settings(merged)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4194304``, ``4MiB``, ``512k`` → bytes (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 4MiB or 4194304)")
    unit = (match.group(2) or "b")[0].lower()
    return int(match.group(1)) * {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]


def _type_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not of setting ``key``'s type, or None."""
    annotation = str(_FIELDS[key].type)
    if value is None and "None" in annotation:
        return None
    if key in ("rate", "concurrency") and value == AUTO:
        return None
    if "bool" in annotation:
        ok = isinstance(value, bool)
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif "float" in annotation:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok and key in ("rate", "concurrency"):
        return f'{key} must be a number or "auto", not {value!r}'
    return None if ok else f"{key} must be {annotation}, not {value!r}"
