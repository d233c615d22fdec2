"""SparseMacroF1 against scikit-learn's macro F1, in eager code, a tf.function and a real Keras fit."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.metrics import f1_score

from service.trainer.tf_runtime import prepare_tensorflow

# TensorFlow reads its environment at import time, so the process is prepared first.
prepare_tensorflow(0)

import tensorflow as tf  # noqa: E402 - after prepare_tensorflow
import tf_keras  # noqa: E402 - after prepare_tensorflow

from service.trainer.metrics import SparseMacroF1  # noqa: E402 - after prepare_tensorflow

K = 4


def sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded integer labels and logits for K classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, K, size=n), rng.normal(size=(n, K)).astype(np.float32)


def sklearn_macro_f1(labels: np.ndarray, logits: np.ndarray) -> float:
    """The reference: macro F1 over all K classes of the argmax prediction."""
    return float(f1_score(labels, logits.argmax(axis=1), labels=list(range(K)), average="macro",
                          zero_division=0))


def test_matches_sklearn_in_one_batch() -> None:
    labels, logits = sample(200, seed=1)
    metric = SparseMacroF1(K)
    metric.update_state(labels, logits)
    assert metric.name == "macro_f1"
    assert float(metric.result()) == pytest.approx(sklearn_macro_f1(labels, logits), abs=1e-5)


def test_probabilities_score_the_same_as_logits() -> None:
    labels, logits = sample(100, seed=2)
    metric = SparseMacroF1(K)
    metric.update_state(labels, tf.nn.softmax(logits))
    assert float(metric.result()) == pytest.approx(sklearn_macro_f1(labels, logits), abs=1e-5)


def test_accumulates_across_batches_with_column_labels() -> None:
    labels, logits = sample(150, seed=3)
    metric = SparseMacroF1(K)
    metric.update_state(labels[:70].reshape(-1, 1), logits[:70])
    metric.update_state(labels[70:].reshape(-1, 1), logits[70:])
    whole = sklearn_macro_f1(labels, logits)
    assert float(metric.result()) == pytest.approx(whole, abs=1e-5)
    assert float(metric.result()) != pytest.approx(sklearn_macro_f1(labels[70:], logits[70:]), abs=1e-5)


def test_unit_sample_weights_change_nothing() -> None:
    labels, logits = sample(120, seed=4)
    metric = SparseMacroF1(K)
    metric.update_state(labels, logits, sample_weight=np.ones(120, dtype=np.float32))
    assert float(metric.result()) == pytest.approx(sklearn_macro_f1(labels, logits), abs=1e-5)


def test_bfloat16_logits() -> None:
    labels, logits = sample(120, seed=5)
    low = tf.cast(logits, tf.bfloat16)
    metric = SparseMacroF1(K)
    metric.update_state(labels, low)
    # Rounding to bfloat16 may flip a near tie, so the reference scores the rounded logits.
    expected = sklearn_macro_f1(labels, tf.cast(low, tf.float32).numpy())
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)
    assert metric.result().dtype == tf.float32


def test_inside_a_tf_function() -> None:
    labels, logits = sample(160, seed=6)
    metric = SparseMacroF1(K)

    @tf.function
    def update(y_true: tf.Tensor, y_pred: tf.Tensor) -> None:
        metric.update_state(y_true, y_pred)

    update(tf.constant(labels[:80]), tf.constant(logits[:80], dtype=tf.bfloat16))
    update(tf.constant(labels[80:]), tf.constant(logits[80:], dtype=tf.bfloat16))
    expected = sklearn_macro_f1(labels, tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy())
    assert float(metric.result()) == pytest.approx(expected, abs=1e-5)


def test_reset_state_forgets_earlier_batches() -> None:
    first_labels, first_logits = sample(100, seed=7)
    labels, logits = sample(100, seed=8)
    metric = SparseMacroF1(K)
    metric.update_state(first_labels, first_logits)
    metric.reset_state()
    assert float(metric.result()) == 0.0
    metric.update_state(labels, logits)
    assert float(metric.result()) == pytest.approx(sklearn_macro_f1(labels, logits), abs=1e-5)


def test_config_round_trips() -> None:
    metric = SparseMacroF1(3, name="f1_val")
    clone = tf_keras.metrics.deserialize(tf_keras.metrics.serialize(metric),
                                         custom_objects={"SparseMacroF1": SparseMacroF1})
    assert isinstance(clone, SparseMacroF1)
    assert (clone.num_classes, clone.name, clone.dtype) == (3, "f1_val", "float32")


@pytest.fixture(params=["float32", "mixed_bfloat16"])
def precision_policy(request: pytest.FixtureRequest) -> Iterator[str]:
    """The global Keras precision policy for one test, restored afterwards."""
    before = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    tf_keras.mixed_precision.set_global_policy(before)


def test_keras_fit_and_evaluate_log_macro_f1(precision_policy: str) -> None:
    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(9)
    features = rng.normal(size=(96, 6)).astype(np.float32)
    labels = (features[:, :K].argmax(axis=1)).astype(np.int32)
    model = tf_keras.Sequential([tf_keras.layers.Input(shape=(6,)), tf_keras.layers.Dense(K)])
    model.compile(optimizer=tf_keras.optimizers.Adam(0.05),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[SparseMacroF1(K)])

    assert model.layers[-1].compute_dtype == precision_policy.removeprefix("mixed_")

    history = model.fit(features[:64], labels[:64], validation_data=(features[64:], labels[64:]),
                        batch_size=16, epochs=2, verbose=0)
    assert {"macro_f1", "val_macro_f1"} <= set(history.history)
    assert len(history.history["val_macro_f1"]) == 2

    scores = model.evaluate(features[64:], labels[64:], batch_size=8, verbose=0, return_dict=True)
    predicted = model.predict(features[64:], verbose=0).astype(np.float32)
    assert scores["macro_f1"] == pytest.approx(sklearn_macro_f1(labels[64:], predicted), abs=1e-5)
    assert history.history["val_macro_f1"][-1] == pytest.approx(scores["macro_f1"], abs=1e-5)
