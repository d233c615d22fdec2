"""Keras metrics logged during a fit, next to the loss and accuracy.

Keras' F1Score wants one-hot labels and scores; a classifier head here gives integer labels
and logits. SparseMacroF1 converts both to one-hot, the prediction by argmax, so logits and
probabilities give the same score, and the epoch logs show `macro_f1` and `val_macro_f1`.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
import tf_keras


class SparseMacroF1(tf_keras.metrics.F1Score):
    """Macro-averaged F1 over `num_classes` classes from integer labels and logits."""

    def __init__(self, num_classes: int, name: str = "macro_f1", dtype: Any = "float32") -> None:
        # float32 whatever the global mixed-precision policy: its counts would otherwise be
        # autocast variables, which a mirrored strategy cannot sum across devices.
        super().__init__(average="macro", threshold=None, name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        # Built here rather than on the first update_state, which may run inside a tf.function.
        self.build(tf.TensorShape([None, self.num_classes]), tf.TensorShape([None, self.num_classes]))

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> Any:
        """Add a batch of integer labels, shape (batch,) or (batch, 1), and logits (batch, classes)."""
        true_ids = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        # Mixed precision hands over float16 or bfloat16 logits; the counts are kept in float32.
        predicted_ids = tf.argmax(tf.cast(y_pred, tf.float32), axis=-1, output_type=tf.int32)
        if sample_weight is not None:
            sample_weight = tf.reshape(tf.cast(sample_weight, self.dtype), [-1])
        return super().update_state(
            tf.one_hot(true_ids, self.num_classes, dtype=self.dtype),
            tf.one_hot(predicted_ids, self.num_classes, dtype=self.dtype),
            sample_weight=sample_weight,
        )

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, so the metric serializes with a model."""
        return {"num_classes": self.num_classes, "name": self.name, "dtype": self.dtype}
