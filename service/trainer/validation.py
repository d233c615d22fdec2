"""Validation from one forward pass per epoch: the epoch's val_ metrics and the logits for the report.

Keras' own validation (``fit(validation_data=...)``) runs a separate test function and keeps
no predictions, so the evaluation report at the end had to predict the validation rows once
more with the selected weights: on long texts that second pass costs as much as an epoch's
validation. Here each epoch's validation is a single pass of the predict function, its
loss, accuracy and macro F1 are computed from the logits (as Keras' metrics define them), and
the logits of the best epoch so far are kept for the report.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import tf_keras

from service.trainer.batching import BucketedBatches
from service.trainer.reporter import TrainingReporter

# The validation metrics written into each epoch's logs, as Keras names them.
VALIDATION_METRICS = ("val_loss", "val_accuracy", "val_macro_f1")


class Predictor:
    """Logits of every row of a split's batches, from one traced forward pass reused across calls."""

    def __init__(self, model: Any, reporter: TrainingReporter | None = None) -> None:
        self.model = model
        self._reporter = reporter
        self._forward: Any = None  # a StepFunction, traced for the first batches' input names

    def _function(self, batches: BucketedBatches) -> Any:
        import tensorflow as tf

        from service.trainer.tracing import StepFunction

        if self._forward is None:
            model = self.model

            def logits_of(features: Any) -> Any:
                return tf.cast(model(features, training=False).logits, tf.float32)

            signature = [{name: tf.TensorSpec(shape=(None, None), dtype=tf.int32) for name in batches.columns.values}]
            self._forward = StepFunction(logits_of, name="predict", input_signature=signature, reporter=self._reporter)
        return self._forward

    def logits(self, batches: BucketedBatches) -> np.ndarray:
        """float32 logits of ``batches``' rows, in row order."""
        forward = self._function(batches)
        logits = np.zeros((len(batches.columns), self.model.config.num_labels), dtype=np.float32)
        for batch in batches.plan(0):
            features, _ = batches.arrays(batch)
            logits[batch.rows] = forward(features).numpy()
        return logits

    def traces(self) -> int:
        """Traces of the forward pass so far."""
        return 0 if self._forward is None else int(self._forward.experimental_get_tracing_count())


def validation_metrics(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """val_loss (mean cross-entropy on logits), val_accuracy and val_macro_f1, as Keras computes them.

    Macro F1 averages every class's F1, a class with neither rows nor predictions counting 0,
    as SparseMacroF1 (Keras' F1Score) does.
    """
    from sklearn.metrics import f1_score

    logits = logits.astype(np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return {}
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_normalizer = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_normalizer - shifted[np.arange(len(labels)), labels]))
    predicted = logits.argmax(axis=1)
    return {"val_loss": loss, "val_accuracy": float(np.mean(predicted == labels)),
            "val_macro_f1": float(f1_score(labels, predicted, labels=list(range(num_labels)), average="macro",
                                           zero_division=0))}


class ValidateEachEpoch(tf_keras.callbacks.Callback):
    """At each epoch end: validate, add the val_ metrics to the epoch's logs, keep the best epoch's logits.

    Must come before the callbacks that read val_ metrics in ``on_epoch_end`` (progress, the
    best epoch, checkpoints): they receive the same logs. ``timed`` is told each validation's
    seconds.
    """

    def __init__(self, predictor: Predictor, batches: BucketedBatches, selection_metric: str, timed: Any) -> None:
        super().__init__()
        self.predictor = predictor
        self.batches = batches
        self.selection_metric = selection_metric
        self.timed = timed
        self.rows: list[dict[str, float]] = []
        self.kept: dict[int, np.ndarray] = {}  # epoch (1-based) -> logits; the best epoch of this attempt

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        from service.trainer.selection import best_epoch

        if logs is None or len(self.batches.columns) == 0:
            return
        epoch = int(epoch) + 1
        started = time.monotonic()
        logits = self.predictor.logits(self.batches)
        metrics = validation_metrics(logits, self.batches.columns.labels, self.model.config.num_labels)
        logs.update(metrics)
        self.timed.validation_finished(time.monotonic() - started)
        self.rows.append({"epoch": epoch, **metrics})
        best = best_epoch(self.rows, self.selection_metric)
        if best is not None and int(best["epoch"]) == epoch:
            self.kept = {epoch: logits}

    def logits_of(self, epoch: int) -> np.ndarray | None:
        """The validation logits of ``epoch`` if this attempt kept them."""
        return self.kept.get(int(epoch))
