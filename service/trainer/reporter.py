"""How the trainer tells the outside world what it is doing (progress, metrics, events)."""

from __future__ import annotations

from typing import Any, Protocol


class TrainingReporter(Protocol):
    """Receives progress and metrics from a running fit; implementations must be cheap to call."""

    def progress(self, *, epoch: int, epochs: int, step: int, steps_per_epoch: int | None,
                 examples_per_second: float | None = None, eta_seconds: float | None = None,
                 step_seconds: float | None = None) -> None:
        """Record that ``step`` batches of 1-based ``epoch`` out of ``epochs`` are done, and the pace."""

    def step_metrics(self, *, epoch: int, step: int, values: dict[str, float]) -> None:
        """Record per-step values (at least ``loss``); ``step`` counts batches from the start of training."""

    def epoch_metrics(self, *, epoch: int, values: dict[str, float]) -> None:
        """Record the end-of-epoch values (loss, accuracy, val_loss, val_accuracy, ...)."""

    def phase_seconds(self, phase: str, seconds: float) -> None:
        """Record how long a phase of the job took (data, tokenize, model_load, fit, ...)."""

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record a notable moment (data loaded, model loaded, fit started, artifacts published)."""

    def flush(self) -> object:
        """Write anything buffered; callers ignore what it returns."""
