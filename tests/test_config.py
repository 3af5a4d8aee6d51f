"""Configuration: TOML, flags over it, validation and the API key rule."""

from __future__ import annotations

from pathlib import Path

import pytest

import ingest
from ingest.config import RunConfig, build_config, load_toml


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    """A flag wins over the same key in the TOML file; paths are relative to the file."""
    (tmp_path / "run.toml").write_text(
        'input = "data/rows.jsonl"\ndataset_id = "ds"\nbatch_rows = 10\n'
    )
    config = build_config(
        load_toml(str(tmp_path / "run.toml")), {"batch_rows": 20, "rate": None}, source="run.toml"
    )
    assert config.batch_rows == 20
    assert config.input == str(tmp_path / "data" / "rows.jsonl")


def test_api_key_in_a_config_file_is_refused(tmp_path: Path) -> None:
    """The key may only come from the environment; a file holding one is an error."""
    (tmp_path / "run.toml").write_text('api_key = "secret"\n')
    with pytest.raises(ingest.ConfigError, match="ARIZE_API_KEY") as info:
        load_toml(str(tmp_path / "run.toml"))
    assert "secret" not in str(info.value)


def test_unknown_keys_and_bad_toml_name_the_file(tmp_path: Path) -> None:
    """A typo in a key, or broken TOML, is an error naming the file."""
    (tmp_path / "a.toml").write_text("batch_row = 10\n")
    with pytest.raises(ingest.ConfigError, match=r"a\.toml: unknown setting 'batch_row'"):
        load_toml(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text("batch_rows = \n")
    with pytest.raises(ingest.ConfigError, match=r"b\.toml: not valid TOML"):
        load_toml(str(tmp_path / "b.toml"))


def test_wrong_types_are_refused(tmp_path: Path) -> None:
    """A string where a number belongs is refused with the key's name."""
    with pytest.raises(ingest.ConfigError, match="batch_rows must be int"):
        build_config({"input": "x", "dataset_id": "d", "batch_rows": "10"}, {}, source="f.toml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_rows": 1001}, "batch_rows must be 1..1000"),
        ({"batch_rows": 0}, "batch_rows must be 1..1000"),
        ({"concurrency": 0}, "concurrency must be 1..256"),
        ({"base_url": "ftp://x"}, "base_url must be an http"),
        ({"rate": -1.0}, "rate must be a positive number"),
        ({"rate": float("nan")}, "rate must be a positive number"),
        ({"request_timeout": float("inf")}, "request_timeout must be a positive number"),
    ],
)
def test_settings_out_of_range_are_refused(change: dict[str, object], message: str) -> None:
    """Each setting is checked against its range, and the message says which."""
    with pytest.raises(ingest.ConfigError, match=message):
        RunConfig(input="x", dataset_id="d", **change)  # type: ignore[arg-type]


def test_toml_takes_sizes_and_its_range_errors_name_the_file(tmp_path: Path) -> None:
    """batch_bytes may be written "4MiB" in TOML too; an out-of-range value names the file."""
    (tmp_path / "a.toml").write_text('input = "x"\ndataset_id = "d"\nbatch_bytes = "2MiB"\n')
    config = build_config(load_toml(str(tmp_path / "a.toml")), {}, source="a.toml")
    assert config.batch_bytes == 2 << 20
    (tmp_path / "b.toml").write_text('input = "x"\ndataset_id = "d"\nshutdown_grace = -1\n')
    with pytest.raises(
        ingest.ConfigError, match=r"^b\.toml: shutdown_grace must be 0..604800 seconds"
    ):
        build_config(load_toml(str(tmp_path / "b.toml")), {}, source="b.toml")


def test_default_checkpoint_is_per_dataset() -> None:
    """The same input sent to two datasets gets two checkpoints by default."""
    a = RunConfig(input="rows.jsonl", dataset_id="one")
    b = RunConfig(input="rows.jsonl", dataset_id="two")
    assert a.checkpoint_path != b.checkpoint_path
    assert a.checkpoint_path.startswith("rows.jsonl.ingest-")


def test_public_api_is_sorted_and_importable() -> None:
    """``ingest.__all__`` is sorted and every name in it exists."""
    assert ingest.__all__ == sorted(ingest.__all__)
    for name in ingest.__all__:
        assert hasattr(ingest, name)
