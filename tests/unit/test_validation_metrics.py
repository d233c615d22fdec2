"""Validation metrics computed from logits agree with the Keras metrics the fit logs for training."""

from __future__ import annotations

import numpy as np
import pytest

from service.trainer.tf_runtime import prepare_tensorflow

prepare_tensorflow(0)  # selects tf-keras before TensorFlow loads

import tf_keras  # noqa: E402 - after prepare_tensorflow

from service.trainer.metrics import SparseMacroF1  # noqa: E402 - after prepare_tensorflow
from service.trainer.validation import validation_metrics  # noqa: E402 - after prepare_tensorflow


def keras_metrics(logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    accuracy = tf_keras.metrics.SparseCategoricalAccuracy()
    accuracy.update_state(labels, logits)
    f1 = SparseMacroF1(num_classes=num_labels)
    f1.update_state(labels, logits)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy.result()), "val_macro_f1": float(f1.result())}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_labels", [2, 5])
def test_metrics_from_logits_match_keras(seed: int, num_labels: int) -> None:
    rng = np.random.default_rng(seed)
    rows = 97
    labels = rng.integers(0, num_labels, rows)
    # Logits that lean towards the label, so accuracy and F1 are neither 0 nor 1.
    logits = (rng.normal(size=(rows, num_labels)) * 2 + np.eye(num_labels)[labels] * 1.5).astype(np.float32)
    ours = validation_metrics(logits, labels, num_labels)
    theirs = keras_metrics(logits, labels, num_labels)
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-5), name
    assert 0.0 < ours["val_accuracy"] < 1.0


def test_a_class_without_rows_or_predictions_counts_zero_in_macro_f1_as_in_keras() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    logits = np.array([[3, 0, -1], [2, 1, 0], [0, 2, 0], [0, 3, 1], [1, 0, 0], [0, 1, 0]], dtype=np.float32)
    ours = validation_metrics(logits, labels, 3)
    theirs = keras_metrics(logits, labels, 3)
    assert ours["val_macro_f1"] == pytest.approx(theirs["val_macro_f1"], abs=1e-5)
    # Classes 0 and 1 each have F1 2/3; class 2 has neither rows nor predictions.
    assert ours["val_macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3, abs=1e-6)
    assert ours["val_accuracy"] == pytest.approx(4 / 6)


def test_no_rows_give_no_metrics() -> None:
    assert validation_metrics(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), 3) == {}
