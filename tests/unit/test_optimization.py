"""The job's optimizer: the warmup/decay schedule, warmup counting, weight decay exclusion, clipping, resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.trainer.tf_runtime import prepare_tensorflow

prepare_tensorflow(0)  # selects tf-keras before TensorFlow loads

import tensorflow as tf  # noqa: E402 - after prepare_tensorflow
import tf_keras  # noqa: E402 - after prepare_tensorflow

from service.trainer.optimization import (  # noqa: E402 - after prepare_tensorflow
    WarmupDecay,
    build_optimizer,
    current_learning_rate,
    learning_rate_of_update,
)

PEAK = 0.1


def expected_rate(peak: float, warmup: int, total: int, kind: str, step: int) -> float:
    """The schedule's formulas, written out independently of the implementation."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    if kind == "linear":
        return peak * max(0, total - step) / max(1, total - warmup)
    if step >= total:
        return 0.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def rate(schedule: WarmupDecay, step: int) -> float:
    """The schedule's rate at a Python int step."""
    return float(schedule(step))


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_warmup_rises_linearly_from_the_first_update_to_the_peak(kind: str) -> None:
    schedule = WarmupDecay(PEAK, 5, 20, kind)
    rates = [rate(schedule, step) for step in range(5)]
    np.testing.assert_allclose(rates, [PEAK * (step + 1) / 5 for step in range(5)], rtol=1e-6)
    assert rates[0] > 0, "the first update must move the weights"
    assert rates[-1] == pytest.approx(PEAK)
    assert all(later > earlier for earlier, later in itertools.pairwise(rates))


def test_linear_decay_reaches_zero_at_the_last_update_and_stays_there() -> None:
    warmup, total = 4, 14
    schedule = WarmupDecay(PEAK, warmup, total, "linear")
    assert rate(schedule, warmup) == pytest.approx(PEAK)
    for step in range(warmup, total + 1):
        assert rate(schedule, step) == pytest.approx(PEAK * (total - step) / (total - warmup), abs=1e-7)
    assert rate(schedule, total) == 0.0
    assert [rate(schedule, step) for step in (total + 1, total + 100)] == [0.0, 0.0]


def test_cosine_decay_is_peak_then_half_then_zero() -> None:
    warmup, total = 4, 14
    schedule = WarmupDecay(PEAK, warmup, total, "cosine")
    assert rate(schedule, warmup) == pytest.approx(PEAK)
    assert rate(schedule, warmup + (total - warmup) // 2) == pytest.approx(PEAK / 2)
    assert rate(schedule, total) == pytest.approx(0.0, abs=1e-9)
    assert [rate(schedule, step) for step in (total + 1, total + 100)] == [0.0, 0.0]


def test_constant_stays_at_the_peak_after_warmup() -> None:
    schedule = WarmupDecay(PEAK, 3, 10, "constant")
    assert [rate(schedule, step) for step in range(3, 30)] == pytest.approx([PEAK] * 27)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 10), (3, 10), (10, 10), (7, 100)])
def test_every_step_follows_the_formula(kind: str, warmup: int, total: int) -> None:
    schedule = WarmupDecay(PEAK, warmup, total, kind)
    steps = range(total + 3)
    np.testing.assert_allclose([rate(schedule, step) for step in steps],
                               [expected_rate(PEAK, warmup, total, kind, step) for step in steps],
                               rtol=1e-5, atol=PEAK * 1e-7)  # float32 cos near pi: small absolute error


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decay_never_rises_after_warmup(kind: str) -> None:
    warmup, total = 6, 60
    schedule = WarmupDecay(PEAK, warmup, total, kind)
    rates = [rate(schedule, step) for step in range(warmup, total + 5)]
    assert all(later <= earlier for earlier, later in itertools.pairwise(rates))
    assert rates[0] > rates[len(rates) // 2] > rates[-1] == 0.0


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_schedule_runs_inside_a_tf_function_on_a_variable_step(kind: str, jit_compile: bool) -> None:
    schedule = WarmupDecay(PEAK, 4, 12, kind)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function(jit_compile=jit_compile)
    def traced() -> tf.Tensor:
        return schedule(step)

    for value in range(16):
        step.assign(value)
        assert float(traced()) == pytest.approx(expected_rate(PEAK, 4, 12, kind, value), rel=1e-5, abs=1e-9)
    assert traced.experimental_get_tracing_count() == 1
    assert float(schedule(tf.constant(5.0))) == pytest.approx(expected_rate(PEAK, 4, 12, kind, 5), rel=1e-5)


def test_schedule_config_round_trip_gives_the_same_rates() -> None:
    schedule = WarmupDecay(3e-5, 7, 50, "cosine")
    copy = WarmupDecay.from_config(schedule.get_config())
    assert [rate(copy, step) for step in range(55)] == [rate(schedule, step) for step in range(55)]
    # Through Keras' registry, as when an optimizer's config is deserialized.
    restored = tf_keras.optimizers.schedules.deserialize(tf_keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, WarmupDecay) and restored.get_config() == schedule.get_config()


def test_an_optimizer_config_round_trip_keeps_the_schedule() -> None:
    optimizer = build_optimizer({"learning_rate": PEAK, "lr_schedule": "cosine", "warmup_steps": 3}, 5, 2)
    copy = tf_keras.optimizers.AdamW.from_config(optimizer.get_config())
    assert [learning_rate_of_update(copy, step) for step in range(12)] == \
        [learning_rate_of_update(optimizer, step) for step in range(12)]


@pytest.mark.parametrize(("peak", "warmup", "total", "kind"),
                         [(PEAK, -1, 10, "linear"), (PEAK, 11, 10, "linear"), (PEAK, 1, 10, "step")])
def test_schedule_refuses_impossible_settings(peak: float, warmup: int, total: int, kind: str) -> None:
    with pytest.raises(ValueError):
        WarmupDecay(peak, warmup, total, kind)


@pytest.mark.parametrize(("extra", "updates", "epochs", "warmup"), [
    ({}, 10, 3, 2),                                  # default ratio 0.06: ceil(1.8)
    ({"warmup_ratio": None}, 10, 3, 2),              # null is the default
    ({"warmup_ratio": 0.1}, 10, 3, 3),
    ({"warmup_ratio": 0.05}, 10, 3, 2),              # ceil(1.5)
    ({"warmup_ratio": 0.07}, 20, 5, 7),              # 0.07 * 100 is 7.000000000000001 in floats
    ({"warmup_ratio": 0.0}, 10, 3, 0),
    ({"warmup_steps": 5}, 10, 3, 5),
    ({"warmup_steps": 0, "warmup_ratio": None}, 10, 3, 0),
    ({"warmup_steps": 500}, 10, 3, 30),              # capped at the run's updates
])
def test_warmup_length_from_ratio_or_steps(extra: dict[str, Any], updates: int, epochs: int, warmup: int) -> None:
    optimizer = build_optimizer({"learning_rate": PEAK, **extra}, updates, epochs)
    total = updates * epochs
    rates = [learning_rate_of_update(optimizer, step) for step in range(total + 1)]
    np.testing.assert_allclose(rates, [expected_rate(PEAK, warmup, total, "linear", step) for step in range(total + 1)],
                               rtol=1e-5, atol=1e-9)


def test_adamw_is_the_default_with_its_weight_decay_epsilon_and_clipping() -> None:
    optimizer = build_optimizer({"learning_rate": PEAK}, 10, 1)
    assert isinstance(optimizer, tf_keras.optimizers.AdamW) and type(optimizer).__name__ == "FusedAdamW"
    assert optimizer.weight_decay == pytest.approx(0.01)
    assert optimizer.epsilon == pytest.approx(1e-8)
    assert optimizer.global_clipnorm == pytest.approx(1.0)
    explicit = build_optimizer({"learning_rate": PEAK, "optimizer": "adamw", "weight_decay": 0.05,
                                "max_grad_norm": 0.5}, 10, 1)
    assert (explicit.weight_decay, explicit.global_clipnorm) == (pytest.approx(0.05), pytest.approx(0.5))
    assert build_optimizer({"learning_rate": PEAK, "weight_decay": None}, 10, 1).weight_decay == pytest.approx(0.01)


@pytest.mark.parametrize("weight_decay", [None, 0, 0.0])
def test_adam_has_no_weight_decay(weight_decay: float | None) -> None:
    optimizer = build_optimizer({"learning_rate": PEAK, "optimizer": "adam", "weight_decay": weight_decay,
                                 "max_grad_norm": 2.0}, 10, 1)
    assert isinstance(optimizer, tf_keras.optimizers.Adam) and type(optimizer).__name__ == "FusedAdam"
    assert not optimizer.weight_decay
    assert optimizer.global_clipnorm == pytest.approx(2.0)
    assert optimizer.epsilon == pytest.approx(1e-8)


def test_no_clipping_when_max_grad_norm_is_null() -> None:
    assert build_optimizer({"learning_rate": PEAK, "max_grad_norm": None}, 10, 1).global_clipnorm is None


@pytest.mark.parametrize("hyper", [
    {"optimizer": "adam", "weight_decay": 0.01},
    {"optimizer": "sgd"},
    {"lr_schedule": "exponential"},
])
def test_build_optimizer_refuses_unknown_or_contradictory_settings(hyper: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build_optimizer({"learning_rate": PEAK, **hyper}, 10, 1)


@pytest.fixture(scope="module")
def tiny_classifier() -> Any:
    """A randomly initialised 2-layer TFBertForSequenceClassification, built from a config."""
    from transformers import BertConfig, TFBertForSequenceClassification

    tf_keras.utils.set_random_seed(0)
    model = TFBertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=37))
    model(model.dummy_inputs, training=False)
    return model


def apply_zero_gradients(optimizer: Any, variables: list[tf.Variable]) -> dict[str, np.ndarray]:
    """Apply one update of all-zero gradients; returns each variable's value from before it, by name."""
    before = {variable.name: variable.numpy().copy() for variable in variables}
    optimizer.apply_gradients(zip([tf.zeros_like(variable) for variable in variables], variables, strict=True))
    return before


def test_adamw_decays_kernels_and_embeddings_but_not_layer_norms_or_biases(tiny_classifier: Any) -> None:
    lr, wd = 0.1, 0.1
    optimizer = build_optimizer({"optimizer": "adamw", "learning_rate": lr, "weight_decay": wd,
                                 "lr_schedule": "constant", "warmup_steps": 0}, 10, 1)
    variables = tiny_classifier.trainable_variables
    before = apply_zero_gradients(optimizer, variables)
    kept = {v.name for v in variables if "/LayerNorm/" in v.name or v.name.endswith("/bias:0")}
    # 2 per LayerNorm (embeddings + 2 per layer), 1 bias per dense layer (6 per layer, pooler, classifier).
    assert len(kept) == 2 * 5 + 6 * 2 + 2
    for variable in variables:
        if variable.name in kept:
            np.testing.assert_array_equal(variable.numpy(), before[variable.name], err_msg=variable.name)
        else:
            np.testing.assert_allclose(variable.numpy(), before[variable.name] * (1 - lr * wd), rtol=1e-6,
                                       err_msg=variable.name)
    by_name = {v.name.split("/", 1)[1]: v for v in variables}
    for name in ("bert/embeddings/word_embeddings/weight:0", "classifier/kernel:0",
                 "bert/encoder/layer_._0/attention/self/query/kernel:0"):
        value, old = by_name[name].numpy(), before[by_name[name].name]
        assert np.abs(old).sum() > 0 and not np.array_equal(value, old)
        np.testing.assert_allclose(value, old * 0.99, rtol=1e-6)


def test_adam_leaves_weights_alone_under_zero_gradients(tiny_classifier: Any) -> None:
    optimizer = build_optimizer({"optimizer": "adam", "learning_rate": 0.1, "lr_schedule": "constant",
                                 "warmup_steps": 0}, 10, 1)
    variables = tiny_classifier.trainable_variables
    before = apply_zero_gradients(optimizer, variables)
    assert int(optimizer.iterations) == 1
    for variable in variables:
        np.testing.assert_array_equal(variable.numpy(), before[variable.name], err_msg=variable.name)


@pytest.mark.parametrize(("name", "decayed"), [
    ("transformer/h_._0/ln_1/gamma", False),                                      # GPT-2
    ("transformer/ln_f/beta", False),
    ("distilbert/transformer/layer_._0/sa_layer_norm/gamma", False),              # DistilBERT
    ("distilbert/transformer/layer_._0/output_layer_norm/beta", False),
    ("model/decoder/layernorm_embedding/gamma", False),                           # BART
    ("encoder/final_layer_norm/weight", False),                                   # T5
    ("deberta/encoder/layer_._0/attention/self/q_bias", False),                   # DeBERTa
    ("classifier/bias", False),
    ("transformer/h_._0/attn/c_attn/weight", True),
    ("transformer/wte/weight", True),
    ("distilbert/transformer/layer_._0/attention/q_lin/kernel", True),
    ("encoder/block_._0/layer_._0/SelfAttention/relative_attention_bias/embeddings", True),
    ("gate/bias_scale", True),
    ("kiln_out/kernel", True),
])
def test_weight_decay_exclusion_by_variable_name(name: str, decayed: bool) -> None:
    lr, wd = 0.1, 0.1
    optimizer = build_optimizer({"learning_rate": lr, "weight_decay": wd, "lr_schedule": "constant",
                                 "warmup_steps": 0}, 10, 1)
    variable = tf.Variable(tf.ones([2]), name=name)
    apply_zero_gradients(optimizer, [variable])
    np.testing.assert_allclose(variable.numpy(), [1 - lr * wd if decayed else 1.0] * 2, rtol=1e-6)


def test_weight_decay_uses_the_scheduled_rate_of_each_update() -> None:
    wd = 0.5
    optimizer = build_optimizer({"learning_rate": PEAK, "weight_decay": wd, "warmup_steps": 4}, 5, 2)
    variable = tf.Variable(tf.ones([3]), name="dense/kernel")
    apply_zero_gradients(optimizer, [variable])
    apply_zero_gradients(optimizer, [variable])
    # Warmup of 4: the first two updates run at peak/4 and peak/2.
    factor = (1 - wd * PEAK / 4) * (1 - wd * PEAK / 2)
    np.testing.assert_allclose(variable.numpy(), [factor] * 3, rtol=1e-6)


def moment(optimizer: Any, slot: str, variable: tf.Variable) -> np.ndarray:
    """An Adam slot ("m" or "v") of one variable, found by the name tf_keras gives it ("Adam/m/name:0")."""
    suffix = f"/{slot}/{variable.name}"
    return next(v for v in optimizer.variables if f"/{v.name}".endswith(suffix)).numpy()


@pytest.mark.parametrize(("max_grad_norm", "scale"), [(1.0, 0.1), (20.0, 1.0), (None, 1.0)])
def test_gradients_are_clipped_to_the_global_norm_before_the_update(max_grad_norm: float | None,
                                                                    scale: float) -> None:
    optimizer = build_optimizer({"optimizer": "adam", "learning_rate": 1e-3, "max_grad_norm": max_grad_norm,
                                 "lr_schedule": "constant", "warmup_steps": 0}, 10, 1)
    first, second = tf.Variable(tf.zeros([2]), name="clip_first"), tf.Variable(tf.zeros([2]), name="clip_second")
    gradients = [np.array([6.0, 0.0], np.float32), np.array([0.0, 8.0], np.float32)]  # global norm 10
    optimizer.apply_gradients(zip([tf.constant(g) for g in gradients], [first, second], strict=True))
    beta_1, beta_2 = optimizer.beta_1, optimizer.beta_2
    for variable, gradient in zip((first, second), gradients, strict=True):
        applied = gradient * scale
        # After one update from zero moments, Adam's moments are the applied gradient, scaled.
        np.testing.assert_allclose(moment(optimizer, "m", variable), applied * (1 - beta_1), rtol=1e-5)
        # The fused kernel takes 1 - beta_2 in float32 (0.00099998713 for 0.999): 1.3e-5 relative.
        np.testing.assert_allclose(moment(optimizer, "v", variable), applied ** 2 * (1 - beta_2), rtol=5e-5)


def apply_updates(optimizer: Any, variable: tf.Variable, count: int) -> None:
    """Apply ``count`` updates with a small constant gradient."""
    for _ in range(count):
        optimizer.apply_gradients([(tf.fill(variable.shape, 0.01), variable)])


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "loss-scale"])
def test_current_rate_follows_the_schedule_update_by_update(wrap: bool) -> None:
    hyper = {"learning_rate": PEAK, "warmup_steps": 3, "lr_schedule": "linear"}
    optimizer = build_optimizer(hyper, 4, 2)
    inner = optimizer
    if wrap:
        optimizer = tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
    variable = tf.Variable(tf.ones([2]), name="dense/kernel")
    for done in range(10):
        assert current_learning_rate(optimizer) == pytest.approx(expected_rate(PEAK, 3, 8, "linear", done),
                                                                 rel=1e-5, abs=1e-9)
        apply_updates(optimizer, variable, 1)
        # The rate the optimizer really used for that update is the one reported for it.
        assert float(inner.learning_rate) == pytest.approx(learning_rate_of_update(optimizer, done), rel=1e-6)
    assert int(inner.iterations) == 10
    assert [learning_rate_of_update(optimizer, step) for step in range(9)] == \
        pytest.approx([expected_rate(PEAK, 3, 8, "linear", step) for step in range(9)], rel=1e-5, abs=1e-9)


def test_a_float_learning_rate_is_reported_as_it_is() -> None:
    optimizer = tf_keras.optimizers.Adam(learning_rate=0.003)
    wrapped = tf_keras.mixed_precision.LossScaleOptimizer(tf_keras.optimizers.Adam(learning_rate=0.004))
    assert current_learning_rate(optimizer) == pytest.approx(0.003)
    assert learning_rate_of_update(optimizer, 1000) == pytest.approx(0.003)
    assert current_learning_rate(wrapped) == pytest.approx(0.004)


def test_a_restored_optimizer_continues_the_schedule(tmp_path: Path) -> None:
    hyper = {"learning_rate": PEAK, "warmup_steps": 4, "lr_schedule": "cosine"}
    optimizer = build_optimizer(hyper, 5, 2)
    variable = tf.Variable(tf.ones([2]), name="dense/kernel")
    apply_updates(optimizer, variable, 6)
    path = tf.train.Checkpoint(optimizer=optimizer, variable=variable).save(str(tmp_path / "ckpt"))

    fresh = build_optimizer(hyper, 5, 2)
    fresh_variable = tf.Variable(tf.zeros([2]), name="dense/kernel")
    assert current_learning_rate(fresh) == pytest.approx(PEAK / 4)
    tf.train.Checkpoint(optimizer=fresh, variable=fresh_variable).restore(path).assert_existing_objects_matched()
    assert int(fresh.iterations) == 6
    assert current_learning_rate(fresh) == pytest.approx(expected_rate(PEAK, 4, 10, "cosine", 6), rel=1e-5)
    assert current_learning_rate(fresh) != pytest.approx(current_learning_rate(build_optimizer(hyper, 5, 2)))
    apply_updates(fresh, fresh_variable, 1)
    assert float(fresh.learning_rate) == pytest.approx(expected_rate(PEAK, 4, 10, "cosine", 6), rel=1e-5)
    assert int(fresh.iterations) == 7


def fresh_weights(seed: int) -> list[tf.Variable]:
    """A matrix, a bias and an embedding table, with names that decide weight decay."""
    rng = np.random.default_rng(seed)
    return [tf.Variable(rng.normal(size=(6, 4)).astype("float32"), name="dense/kernel"),
            tf.Variable(rng.normal(size=(4,)).astype("float32"), name="dense/bias"),
            tf.Variable(rng.normal(size=(10, 4)).astype("float32"), name="embeddings/weight")]


def gradients_of_step(step: int) -> list[Any]:
    """Dense gradients for the matrix and bias, and a sparse one (repeated rows) for the table."""
    rng = np.random.default_rng(100 + step)
    table = tf.IndexedSlices(tf.constant(rng.normal(size=(3, 4)).astype("float32")),
                             tf.constant([1, 7, 1]), tf.constant([10, 4]))
    return [tf.constant(rng.normal(size=(6, 4)).astype("float32")),
            tf.constant(rng.normal(size=(4,)).astype("float32")), table]


@pytest.mark.parametrize("hyper", [
    {"optimizer": "adamw", "weight_decay": 0.1, "max_grad_norm": 1.0},
    {"optimizer": "adam", "lr_schedule": "constant", "max_grad_norm": None},
], ids=["adamw-clipped", "adam"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
def test_fused_update_matches_tf_keras_own_update(hyper: dict[str, Any], traced: bool) -> None:
    hyper = {"learning_rate": 0.01, "warmup_steps": 2, **hyper}
    fused = build_optimizer(hyper, 6, 1)
    assert type(fused).__name__ in {"FusedAdam", "FusedAdamW"}
    # tf_keras' own class from the same config: the reference the fused kernel must reproduce.
    reference_class = tf_keras.optimizers.AdamW if hyper["optimizer"] == "adamw" else tf_keras.optimizers.Adam
    reference = reference_class.from_config(fused.get_config())
    if hyper["optimizer"] == "adamw":
        reference.exclude_from_weight_decay(var_names=[r"bias"])
        fused.exclude_from_weight_decay(var_names=[r"bias"])
    ours, theirs = fresh_weights(1), fresh_weights(1)
    apply_ours = tf.function(fused.apply_gradients) if traced else fused.apply_gradients
    apply_theirs = tf.function(reference.apply_gradients) if traced else reference.apply_gradients
    for step in range(6):
        apply_ours(list(zip(gradients_of_step(step), ours)))
        apply_theirs(list(zip(gradients_of_step(step), theirs)))
    for mine, expected, start in zip(ours, theirs, fresh_weights(1)):
        np.testing.assert_allclose(mine.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(mine.numpy(), start.numpy()), f"{mine.name} never moved"
    # Rows of the table that no gradient touched still move (momentum and decay), as in tf_keras.
    np.testing.assert_allclose(ours[2].numpy()[0], theirs[2].numpy()[0], rtol=1e-5, atol=1e-6)
