"""Keras callbacks that report a fit's progress and metrics, and keep the batches on the fit's epoch."""

from __future__ import annotations

import time
from typing import Any

import tf_keras

from service.trainer.batching import BucketedBatches
from service.trainer.checkpoints import StepCheckpoints
from service.trainer.reporter import TrainingReporter


class FollowEpochs(tf_keras.callbacks.Callback):
    """Tells the training batches which epoch Keras starts, and how many of its steps a checkpoint holds.

    Placed before the checkpoint callback's epoch hooks run, after its on_train_begin restored:
    a resumed attempt continues the interrupted epoch with the batches it had not trained on.
    """

    def __init__(self, batches: BucketedBatches, checkpoints: StepCheckpoints) -> None:
        super().__init__()
        self.batches = batches
        self.checkpoints = checkpoints
        self.first = True

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        skip = 0
        restored = self.checkpoints.restored
        if self.first and restored is not None and restored[0] == epoch:
            skip = restored[1]
        self.first = False
        self.batches.start_epoch(epoch, skip)


class ReportProgress(tf_keras.callbacks.Callback):
    """Per-step loss, progress, examples/s and ETA while fitting; per-epoch metrics at each epoch end.

    Training and validation time are measured apart, so examples/s counts training alone and
    the ETA adds the validations still to come at the pace of the last one.
    """

    def __init__(self, reporter: TrainingReporter, epochs: int, steps_per_epoch: int, rows: int,
                 batch_size: int) -> None:
        super().__init__()
        self.reporter = reporter
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.rows = rows
        self.batch_size = batch_size
        self.epoch = 0
        self.train_seconds = 0.0
        self.evaluate_seconds = 0.0
        self.examples = 0
        self.steps_done = 0  # steps this attempt trained
        self.last_validation = 0.0
        self._mark = 0.0

    @property
    def examples_per_second(self) -> float | None:
        """Training examples per second of this attempt so far."""
        return round(self.examples / self.train_seconds, 2) if self.train_seconds > 0 else None

    def _batch_rows(self, batch: int) -> int:
        # Every batch is full but an epoch's last (service.trainer.batching keeps the short one last).
        return min(self.batch_size, self.rows - batch * self.batch_size)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = int(epoch) + 1  # a resumed fit passes NumPy integers
        self._mark = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Counted from the epoch, so a run resumed from a checkpoint numbers steps as the
        # interrupted run did. Keras' batch `loss` is the running mean of the epoch so far.
        now = time.monotonic()
        self.train_seconds += now - self._mark
        self._mark = now
        batch = int(batch)
        self.examples += self._batch_rows(batch)
        self.steps_done += 1
        step = (self.epoch - 1) * self.steps_per_epoch + batch + 1
        if logs and "loss" in logs:
            values = {"loss": float(logs["loss"])}
            rate = self._last_update_rate()
            if rate is not None:
                values["learning_rate"] = rate
            self.reporter.step_metrics(epoch=self.epoch, step=step, values=values)
        self.reporter.progress(epoch=self.epoch, epochs=self.epochs, step=batch + 1,
                               steps_per_epoch=self.steps_per_epoch, **self._pace(step, validation_pending=True))

    def _last_update_rate(self) -> float | None:
        """The learning rate of the optimizer's latest update (None before the first)."""
        from service.trainer.optimization import learning_rate_of_update

        optimizer = self.model.optimizer
        updates = int(tf_keras.backend.get_value(optimizer.iterations))
        return learning_rate_of_update(optimizer, updates - 1) if updates > 0 else None

    def _pace(self, step: int, validation_pending: bool) -> dict[str, float | None]:
        """examples/s, seconds per step so far and the ETA; ``validation_pending``: this epoch's validation
        is still to run."""
        rate = self.examples_per_second
        if rate is None:
            return {"examples_per_second": None, "eta_seconds": None, "step_seconds": None}
        steps_left = self.epochs * self.steps_per_epoch - step
        seconds_per_step = self.train_seconds / self.steps_done
        validations_left = self.epochs - self.epoch + (1 if validation_pending else 0)
        eta = steps_left * seconds_per_step + validations_left * self.last_validation
        return {"examples_per_second": rate, "eta_seconds": round(eta, 1), "step_seconds": round(seconds_per_step, 4)}

    def validation_finished(self, seconds: float) -> None:
        """An epoch's validation took ``seconds`` (told by service.trainer.validation.ValidateEachEpoch)."""
        self.last_validation = seconds
        self.evaluate_seconds += seconds

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        values = {name: float(value) for name, value in (logs or {}).items()}
        rate = self._last_update_rate()
        if rate is not None:
            values["learning_rate"] = rate
        step = epoch * self.steps_per_epoch + self.steps_per_epoch
        self.reporter.progress(epoch=epoch + 1, epochs=self.epochs, step=self.steps_per_epoch,
                               steps_per_epoch=self.steps_per_epoch, **self._pace(step, validation_pending=False))
        self.reporter.epoch_metrics(epoch=epoch + 1, values=values)
