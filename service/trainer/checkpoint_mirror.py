"""A copy of a job's checkpoint in storage, so a later attempt resumes on any node.

The trainer checkpoints into its local scratch folder (service.trainer.checkpoints); after each
checkpoint the mirror publishes it to storage (service.storage), and an attempt that starts
on a node whose scratch folder lacks the newest checkpoint fetches it first. Two folders are
published apart, in the order the trainer writes them: the best epoch's weights
(service.trainer.selection) before the checkpoint of that epoch, so a stored checkpoint always
has its best weights stored too. The tokens cache beside the checkpoint stays local: it is
rebuilt where it is missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from service.artifacts import TENSORBOARD_FOLDER
from service.locations import CHECKPOINTS
from service.storage import Storage

log = logging.getLogger(__name__)

STATE = "state"  # Keras' BackupAndRestore files and the per-epoch history
BEST = "best"  # the best epoch's weights and their record
BEST_FOLDER = "best"  # as service.trainer.selection names it (not imported: that module imports TensorFlow)
# What BackupAndRestore and StepCheckpoints write at the top, and the event files flushed before each
# checkpoint (service.trainer.summaries), so a resume on another node keeps the earlier steps' summaries.
STATE_NAMES = ("chief", "epochs.json", TENSORBOARD_FOLDER)
MARKER = ".mirrored.json"  # the stored versions the local folder holds


class CheckpointMirror:
    """Publishes a job's local checkpoint folder to storage and fetches it back where it is behind."""

    def __init__(self, storage: Storage, job_id: str, local_dir: Path, reporter: Any = None) -> None:
        self.storage = storage
        self.job_id = job_id
        self.local_dir = local_dir
        self.reporter = reporter

    def key(self, part: str) -> str:
        """The storage key of one published part (STATE or BEST) of the checkpoint."""
        return f"{CHECKPOINTS}/{self.job_id}/{part}"

    def restore(self) -> bool:
        """Replace what the local folder holds with the stored checkpoint where they differ; True if fetched."""
        self.local_dir.mkdir(parents=True, exist_ok=True)
        marker = self._read_marker()
        fetched = False
        best = self.storage.published(self.key(BEST))
        if best is not None and marker.get(BEST) != best.version:
            self.storage.fetch_published(self.key(BEST), self.local_dir / BEST_FOLDER)
            marker[BEST] = best.version
            fetched = True
        state_folder = self.local_dir / f".{STATE}.fetched"
        state = self.storage.published(self.key(STATE))
        if state is not None and marker.get(STATE) != state.version:
            state = self.storage.fetch_published(self.key(STATE), state_folder)
        else:
            state = None
        if state is not None:
            for name in STATE_NAMES:
                old = self.local_dir / name
                if old.is_dir():
                    shutil.rmtree(old)
                else:
                    old.unlink(missing_ok=True)
            for child in state_folder.iterdir():
                os.rename(child, self.local_dir / child.name)
            shutil.rmtree(state_folder, ignore_errors=True)
            marker[STATE] = state.version
            fetched = True
        if fetched:
            self._write_marker(marker)
            log.info("fetched the checkpoint of job %s from %s", self.job_id,
                     self.storage.describe(f"{CHECKPOINTS}/{self.job_id}"))
        return fetched

    def save_state(self) -> None:
        """Publish the checkpoint just written (model, optimizer, epoch and step, history)."""
        exclude = [child.name for child in self.local_dir.iterdir() if child.name not in STATE_NAMES]
        self._publish(STATE, self.local_dir, exclude)

    def save_best(self) -> None:
        """Publish the best epoch's weights just written."""
        self._publish(BEST, self.local_dir / BEST_FOLDER, ())

    def remove(self) -> None:
        """Delete the stored checkpoint (the job's model is published); a failure only leaves it behind."""
        try:
            for part in (BEST, STATE):
                self.storage.remove_published(self.key(part))
            self.storage.remove(f"{CHECKPOINTS}/{self.job_id}")
        except OSError as exc:
            log.warning("could not delete the stored checkpoint of job %s: %s", self.job_id, exc)

    def _publish(self, part: str, folder: Path, exclude: Any) -> None:
        try:
            version = self.storage.publish_folder(folder, self.key(part), exclude=exclude)
        except Exception as exc:  # noqa: BLE001 - s3fs and gcsfs raise many types; training goes on
            # The local checkpoint still resumes this node; only a move to another node loses it.
            log.warning("could not copy the %s checkpoint of job %s to storage: %s", part, self.job_id, exc)
            if self.reporter is not None:
                self.reporter.event("checkpoint_not_stored", f"The checkpoint could not be copied to storage "
                                    f"({type(exc).__name__}: {exc}); training goes on, and a resume on another "
                                    "node starts from the last stored one.", {"part": part})
            return
        marker = self._read_marker()
        marker[part] = version
        self._write_marker(marker)

    def _read_marker(self) -> dict[str, str]:
        try:
            data = json.loads((self.local_dir / MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_marker(self, marker: dict[str, str]) -> None:
        staged = self.local_dir / f"{MARKER}.tmp"
        staged.write_text(json.dumps(marker))
        os.replace(staged, self.local_dir / MARKER)
