"""The best epoch and early stopping, decided from the per-epoch metrics of the whole run.

Both are pure functions of the epoch history that service.trainer.checkpoints keeps beside the
checkpoint, so an attempt resumed after a crash decides exactly as the first one would have.
The best epoch's weights are written to disk before that epoch's checkpoint, so a crash after
it loses nothing: the published model is always the best epoch's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tf_keras

from service.trainer.reporter import TrainingReporter

BEST_FOLDER = "best"
BEST_WEIGHTS = "weights.h5"
BEST_RECORD = "best.json"


def direction(metric: str, mode: str = "auto") -> str:
    """"min" or "max": how ``metric`` improves (``auto``: loss falls, the others rise)."""
    if mode != "auto":
        return mode
    return "min" if metric.endswith("loss") else "max"


def improves(value: float, reference: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` is better than ``reference`` by more than ``min_delta``."""
    if reference is None:
        return True
    return value < reference - min_delta if mode == "min" else value > reference + min_delta


def best_epoch(history: list[dict[str, float]], metric: str) -> dict[str, float] | None:
    """The history row that is best by ``metric``; the earliest of equals. None without the metric."""
    mode = direction(metric)
    best: dict[str, float] | None = None
    for row in history:
        if metric in row and improves(row[metric], best[metric] if best else None, mode):
            best = row
    return best


@dataclass(frozen=True)
class EarlyStop:
    """Why the run stops before its last epoch."""

    epoch: int  # the last epoch trained
    best_epoch: int  # the last epoch that improved the metric
    reason: str


def early_stop(history: list[dict[str, float]], setting: dict[str, Any] | None) -> EarlyStop | None:
    """Whether early stopping ends the run after the history's last epoch, and why.

    The run stops once the metric has not improved by more than ``min_delta`` on the best
    value so far for ``patience`` epochs in a row (patience 0: at the first that does not).
    """
    if not setting or not history:
        return None
    metric, patience = setting["metric"], setting["patience"]
    mode = direction(metric, setting.get("mode", "auto"))
    min_delta = setting.get("min_delta", 0.0)
    reference: float | None = None
    improved_at = 0
    for row in history:
        if metric not in row:
            return None
        if improves(row[metric], reference, mode, min_delta):
            reference, improved_at = row[metric], int(row["epoch"])
    last = int(history[-1]["epoch"])
    if last - improved_at < max(patience, 1):
        return None
    return EarlyStop(epoch=last, best_epoch=improved_at,
                     reason=f"{metric} did not improve by more than {min_delta:g} for {last - improved_at} "
                            f"epoch(s) after epoch {improved_at} (patience {patience})")


class KeepBestEpoch(tf_keras.callbacks.Callback):
    """Writes the weights of each epoch that is the best so far, and stops the fit early when asked.

    Placed before the checkpoint callback, whose history holds the epochs before this one.
    """

    def __init__(self, folder: Path, history: Any, selection_metric: str, early_stopping: dict[str, Any] | None,
                 reporter: TrainingReporter, saved: Any = None) -> None:
        super().__init__()
        self.saved = saved  # called after the best weights are written, e.g. to copy them to storage
        self.folder = folder
        self.history = history  # a callable giving the epochs already recorded
        self.selection_metric = selection_metric
        self.early_stopping = early_stopping
        self.reporter = reporter
        self.stopped: EarlyStop | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        epoch = int(epoch)
        row = {name: float(value) for name, value in (logs or {}).items()}
        row["epoch"] = epoch + 1
        history = [old for old in self.history() if old["epoch"] < epoch + 1] + [row]
        best = best_epoch(history, self.selection_metric)
        if best is not None and int(best["epoch"]) == epoch + 1:
            save_best(self.model, self.folder, epoch + 1, self.selection_metric, best[self.selection_metric])
            if self.saved is not None:
                self.saved()
            self.reporter.event("best_epoch", f"Epoch {epoch + 1} is the best so far by {self.selection_metric} "
                                f"({best[self.selection_metric]:.4f}); its weights are kept.",
                                {"epoch": epoch + 1, "metric": self.selection_metric,
                                 "value": best[self.selection_metric]})
        stop = early_stop(history, self.early_stopping)
        if stop is not None:
            self.stopped = stop
            self.model.stop_training = True
            self.reporter.event("stopped_early", f"Stopping after epoch {stop.epoch}: {stop.reason}.",
                                {"epoch": stop.epoch, "best_epoch": stop.best_epoch, "reason": stop.reason})


def save_best(model: Any, folder: Path, epoch: int, metric: str, value: float) -> None:
    """Write the model's weights and their record to ``folder``, replacing the earlier best whole."""
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_weights(str(staging / BEST_WEIGHTS))
    (staging / BEST_RECORD).write_text(json.dumps({"epoch": epoch, "metric": metric, "value": value}))
    aside = folder.with_name(f".{folder.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if folder.exists():
        os.rename(folder, aside)
    os.rename(staging, folder)
    shutil.rmtree(aside, ignore_errors=True)


def read_best(folder: Path) -> dict[str, Any] | None:
    """The record of the kept best epoch ({epoch, metric, value}), or None when none was kept."""
    for candidate in (folder, folder.with_name(f".{folder.name}.replaced")):
        try:
            record = json.loads((candidate / BEST_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if (candidate / BEST_WEIGHTS).is_file():
            return {**record, "weights": str(candidate / BEST_WEIGHTS)}
    return None
