"""Checkpoints a later attempt resumes from, including one written at the step a drain stops at."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tf_keras

from service.trainer.reporter import TrainingReporter
from service.trainer.stop import DrainRequested, StopSignal


class StepCheckpoints(tf_keras.callbacks.BackupAndRestore):
    """BackupAndRestore that saves at every epoch end, every ``every_steps`` steps and on SIGTERM.

    Checkpoints carry (epoch, step), so a resumed fit continues at the next step, not at the
    start of the epoch. The epoch-end save runs in on_epoch_end, after the callbacks placed
    before this one recorded the epoch's metrics: an epoch a checkpoint counts as done always
    has its metrics.
    """

    def __init__(self, backup_dir: str, steps_per_epoch: int, every_steps: int = 0,
                 stop: StopSignal | None = None, reporter: TrainingReporter | None = None,
                 ends_update: Callable[[int, int], bool] | None = None,
                 saved: Callable[[], None] | None = None) -> None:
        # An integer save_freq makes restore resume at the saved step (the "epoch" mode only
        # remembers epochs); the base class's own counting is replaced below.
        # The checkpoint outlives the fit until the model is published (see fit.run_training).
        super().__init__(backup_dir, save_freq=steps_per_epoch, delete_checkpoint=False)
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.stop = stop
        self.reporter = reporter
        # Per-epoch metrics of every finished epoch, this attempt's and earlier ones', kept
        # beside the checkpoint so a resumed fit still reports the whole run.
        self.history_path = history_path(backup_dir)
        self.history: list[dict[str, float]] = []
        # With gradient accumulation, checkpoints fall only between optimizer updates: the
        # gradients summed so far are not saved, so a step inside an update would lose them.
        self.ends_update = ends_update or (lambda epoch, batch: True)
        # (0-based epoch, steps of it already trained) when resuming inside an epoch.
        self.restored: tuple[int, int] | None = None
        # Called after each checkpoint is written, e.g. to copy it to object storage.
        self.saved = saved

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)  # restores the checkpoint, if there is one
        if self.history_path.is_file():
            self.history = json.loads(self.history_path.read_text())
        if self.stop is not None:
            self.stop.in_fit = True
        epoch = int(tf_keras.backend.get_value(self._training_state._ckpt_saved_epoch))
        batch = int(tf_keras.backend.get_value(self._training_state._ckpt_saved_batch))
        if epoch >= 0 and batch < self.steps_per_epoch - 1:
            self.restored = (epoch, batch + 1)
        if epoch >= 0 and self.reporter is not None:
            if batch >= self.steps_per_epoch - 1:
                where = f"the start of epoch {epoch + 2}"
            else:
                where = f"step {batch + 2} of epoch {epoch + 1}"
            self.reporter.event("resumed", f"Resumed from the checkpoint; continuing at {where}.",
                                {"epoch": epoch + 1, "steps_done": batch + 1})

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        super().on_epoch_begin(int(epoch), logs)  # a restored epoch arrives as a NumPy integer

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        batch = int(batch)
        step = self._current_epoch * self.steps_per_epoch + batch + 1
        last_of_epoch = batch == self.steps_per_epoch - 1
        if not self.ends_update(self._current_epoch, batch):
            return
        if self.stop is not None and self.stop.requested:
            self._fence()
            self._backup(epoch=self._current_epoch, batch=batch)
            self._saved()
            if self.reporter is not None:
                self.reporter.event("checkpointed", f"Stopping on request: checkpoint written after step "
                                    f"{batch + 1} of epoch {self._current_epoch + 1}.",
                                    {"epoch": self._current_epoch + 1, "steps_done": batch + 1})
            # Raised rather than model.stop_training: Keras would still validate and end the
            # epoch, recording a partial epoch as a whole one.
            raise DrainRequested(f"stopped on SIGTERM after step {batch + 1} of epoch "
                                 f"{self._current_epoch + 1}; checkpoint written")
        if self.every_steps and step % self.every_steps == 0 and not last_of_epoch:
            self._fence()
            self._backup(epoch=self._current_epoch, batch=batch)
            self._saved()

    def _saved(self) -> None:
        if self.saved is not None:
            self.saved()

    def _fence(self) -> None:
        # A fenced write first: an attempt that lost its job raises StaleAttempt here instead
        # of overwriting the checkpoint the job's current attempt resumes from. (At an epoch
        # end the metrics written just before this callback ran did the same.)
        if self.reporter is not None:
            self.reporter.flush()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        row = {name: float(value) for name, value in (logs or {}).items()}
        row["epoch"] = epoch + 1
        # History first, checkpoint second: an epoch the checkpoint counts as done is always in
        # the history; an epoch redone after a crash replaces its earlier row.
        self.history = [old for old in self.history if old["epoch"] < epoch + 1] + [row]
        Path(self.backup_dir).mkdir(parents=True, exist_ok=True)
        staged = self.history_path.with_suffix(".json.tmp")
        staged.write_text(json.dumps(self.history))
        os.replace(staged, self.history_path)
        # Recorded as the epoch's last step, which restore reads as "start the next epoch".
        self._training_state._ckpt_saved_batch.assign(self.steps_per_epoch - 1)
        self._backup(epoch=epoch, batch=self.steps_per_epoch - 1)
        self._saved()


def history_path(backup_dir: str | Path) -> Path:
    """The file beside a checkpoint that holds the per-epoch metrics of every finished epoch."""
    return Path(backup_dir) / "epochs.json"


def read_history(backup_dir: str | Path) -> list[dict[str, float]]:
    """The finished epochs' metrics recorded beside a checkpoint (empty when there is none)."""
    try:
        return json.loads(history_path(backup_dir).read_text())
    except (OSError, ValueError):
        return []
