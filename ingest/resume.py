"""Resume: find the checkpoint of a run and take it, before anything is read or sent.

Takes the run's config; gives back the config (with the checkpoint found, when
the input was renamed since), the locked journal and what it says is done. The
input is fingerprinted here (blocking: run in a thread).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ingest.checkpoint import CheckpointJournal, JournalState
from ingest.config import RunConfig
from ingest.errors import CheckpointError, ConfigError
from ingest.identity import fingerprint, matching_checkpoints

log = logging.getLogger("ingest")


def open_checkpoint(config: RunConfig) -> tuple[RunConfig, CheckpointJournal, JournalState]:
    """Fingerprint the input and take its checkpoint (blocking: run in a thread).

    The config comes back with the checkpoint found, if it is not the default one.
    """
    if config.input != "-" and not os.path.isfile(config.input):
        what = "is not a file" if os.path.exists(config.input) else "input file not found"
        raise ConfigError(f"{config.input}: {what}")
    fp = fingerprint(config.input, config.dataset_id, config.dataset_version_id)
    found = renamed_input_checkpoint(config, fp)
    journal, state = CheckpointJournal.open(
        found.checkpoint_path,
        fp,
        rejects_path=found.rejects_path,
        restart=found.restart,
        input_path=found.input,
    )
    if found is not config:
        # Renamed after the input (under the lock), the checkpoint is found by name from
        # now on, so an edit of the renamed input is refused rather than started afresh.
        try:
            journal.move_to(config.checkpoint_path, config.rejects_path)
        except OSError as exc:
            log.warning("could not rename %s after its input: %s", found.checkpoint_path, exc)
            return found, journal, state
        log.info("%s is renamed %s", found.checkpoint_path, config.checkpoint_path)
    return config, journal, state


def renamed_input_checkpoint(config: RunConfig, fp: dict[str, Any]) -> RunConfig:
    """The config with the checkpoint of this input under an earlier name, if there is one.

    Only when the default checkpoint does not exist: the input's folder is searched
    for default checkpoints of this dataset whose header holds this input's identity.
    """
    if config.checkpoint or config.input == "-" or os.path.exists(config.checkpoint_path):
        return config
    folder = os.path.dirname(config.input) or "."
    found = matching_checkpoints(folder, config.checkpoint_suffix, fp)
    if not found:
        return config
    if len(found) > 1:
        raise CheckpointError(
            f"several checkpoints in {folder} are for this input's content: "
            f"{', '.join(found)}; pass --checkpoint with the one to resume"
        )
    earlier = os.path.basename(found[0]).removesuffix(config.checkpoint_suffix)
    log.info("resuming from %s: %s is %s renamed (same content)", found[0], config.input, earlier)
    # The rejects file belongs with the checkpoint: it moves along unless given.
    return config.replace(checkpoint=found[0])


def check_key_field(state: JournalState, config: RunConfig) -> None:
    """Refuse to look up an earlier run's batches in flight by another field than it wrote."""
    before, now = state.key_field, config.lookup_field
    if not state.in_flight or not state.keys_recorded or before == now or before is None:
        return  # nothing to look up, no record of it, or an at-least-once run's rows
    if now is None:
        return  # --no-key now: at-least-once from here, as asked
    raise ConfigError(
        f"the last run keyed its rows by the field {before!r} and left batches in flight; "
        f"they can only be looked up by it: pass the key option that run had "
        f"(--key-field-name {before}, or --key-from {before}), or --restart to start over"
    )
