"""The Keras callback that reports a fit's progress and metrics to a TrainingReporter."""

from __future__ import annotations

from typing import Any

import tf_keras

from service.trainer.reporter import TrainingReporter


class ReportProgress(tf_keras.callbacks.Callback):
    """Per-step loss and progress while fitting; per-epoch metrics at each epoch end."""

    def __init__(self, reporter: TrainingReporter, epochs: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.reporter = reporter
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = int(epoch) + 1  # a resumed fit passes NumPy integers

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # Counted from the epoch, so a run resumed from a checkpoint numbers steps as the
        # interrupted run did. Keras' batch `loss` is the running mean of the epoch so far.
        batch = int(batch)
        step = (self.epoch - 1) * self.steps_per_epoch + batch + 1
        if logs and "loss" in logs:
            self.reporter.step_metrics(epoch=self.epoch, step=step, values={"loss": float(logs["loss"])})
        self.reporter.progress(epoch=self.epoch, epochs=self.epochs, step=batch + 1,
                               steps_per_epoch=self.steps_per_epoch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        values = {name: float(value) for name, value in (logs or {}).items()}
        learning_rate = getattr(self.model.optimizer, "learning_rate", None)
        if learning_rate is not None and not callable(learning_rate):
            values["learning_rate"] = float(tf_keras.backend.get_value(learning_rate))
        self.reporter.progress(epoch=epoch + 1, epochs=self.epochs, step=self.steps_per_epoch,
                               steps_per_epoch=self.steps_per_epoch)
        self.reporter.epoch_metrics(epoch=epoch + 1, values=values)
