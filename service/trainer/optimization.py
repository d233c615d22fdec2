"""The optimizer of a fine-tuning job: AdamW or Adam, a warmup-then-decay schedule, gradient clipping.

The Adam update of each variable runs as TensorFlow's fused ``ResourceApplyAdam`` kernel (one op
per variable) instead of tf_keras' six element-wise ops: on MiniLM on a 2-core CPU the update of
its 22.7M weights took 150-190 ms a step that way against about 60 ms fused, more than the
forward and backward pass of a batch of short texts (``bench/optimizer_update.py``).

Import after service.trainer.tf_runtime.prepare_tensorflow (this module imports tf_keras).

The schedule is a pure function of the optimizer's ``iterations`` (its count of applied
updates), which checkpoints save and restore: a resumed run continues the schedule at the
update it stopped at, and nothing here keeps a step count of its own.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
import tf_keras

SCHEDULE_KINDS = ("linear", "cosine", "constant")
OPTIMIZERS = ("adamw", "adam")
# What a spec written before these hyperparameters existed trains with.
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {"optimizer": "adamw", "lr_schedule": "linear", "warmup_ratio": 0.06,
                                           "max_grad_norm": 1.0}
DEFAULT_ADAMW_WEIGHT_DECAY = 0.01
ADAM_EPSILON = 1e-8  # PyTorch's and the Hugging Face Trainer's value; Keras defaults to 1e-7.
# Regular expressions that tf_keras searches for (re.search) in each variable's name; a match is
# not decayed. Variable names look like ".../encoder/layer_._0/output/LayerNorm/gamma:0".
NO_DECAY_PATTERNS = (
    # LayerNorm scopes: "LayerNorm" (BERT, RoBERTa, ELECTRA), "layer_norm"/"sa_layer_norm" (DistilBERT,
    # T5, BART), "layernorm"/"layernorm_embedding".
    r"(?i)layer_?norm",
    # GPT-2's LayerNorm scopes "ln_1", "ln_2", "ln_f", only as a whole scope, not inside another name.
    r"(?:^|/)ln_[^/]*/",
    # A variable whose own name is or ends in "bias" ("dense/bias:0", DeBERTa's "q_bias:0"); a scope
    # that merely contains the word, like T5's "relative_attention_bias/embeddings:0", is a table of
    # weights and is decayed.
    r"(?:^|[/_])bias(?::\d+)?$",
)


class FusedAdamUpdate:
    """Adam's update of each variable as one fused kernel; mixed into tf_keras' Adam and AdamW.

    The arithmetic is tf_keras' own (``epsilon`` added to sqrt(v), the bias corrections folded
    into the rate); the slots, checkpoints, clipping and loss scaling are untouched. A sparse
    gradient (the word embeddings') is made dense first: the fused dense update is cheaper
    than tf_keras' sparse one, which decays both moments of the whole table anyway. AMSGrad and
    tf_keras' adaptive epsilon keep tf_keras' update.
    """

    def update_step(self, gradient: Any, variable: Any) -> None:
        """Apply one Adam update to ``variable`` with ResourceApplyAdam."""
        if self.amsgrad or getattr(self, "adaptive_epsilon", False):  # type: ignore[attr-defined]
            super().update_step(gradient, variable)  # type: ignore[misc]
            return
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)  # type: ignore[attr-defined]
        beta_1 = tf.cast(self.beta_1, dtype)  # type: ignore[attr-defined]
        beta_2 = tf.cast(self.beta_2, dtype)  # type: ignore[attr-defined]
        index = self._index_dict[self._var_key(variable)]  # type: ignore[attr-defined]
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,  # type: ignore[attr-defined]
            v=self._velocities[index].handle,  # type: ignore[attr-defined]
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(self.learning_rate, dtype), beta1=beta_1, beta2=beta_2,  # type: ignore[attr-defined]
            epsilon=tf.cast(self.epsilon, dtype), grad=gradient, use_locking=False)  # type: ignore[attr-defined]


@tf_keras.saving.register_keras_serializable(package="fitjobs")
class FusedAdam(FusedAdamUpdate, tf_keras.optimizers.Adam):
    """tf_keras' Adam with the fused per-variable update."""


@tf_keras.saving.register_keras_serializable(package="fitjobs")
class FusedAdamW(FusedAdamUpdate, tf_keras.optimizers.AdamW):
    """tf_keras' AdamW with the fused per-variable update; the decay is one multiply per weight."""

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # tf_keras computes `variable * wd * lr`, two passes over every weight; the scalar goes first.
        if self.weight_decay is None:
            return

        def apply_weight_decay(distribution: Any, variables: list[Any], **kwargs: Any) -> None:
            def decay(variable: Any) -> None:
                if self._use_weight_decay(variable):
                    rate = tf.cast(self.learning_rate, variable.dtype) * tf.cast(self.weight_decay, variable.dtype)
                    variable.assign_sub(variable * rate)

            for variable in variables:
                distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(apply_weight_decay, self._distribution_strategy,
                                                            variables)


@tf_keras.saving.register_keras_serializable(package="fitjobs")
class WarmupDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """A linear rise to ``peak`` over ``warmup_steps`` updates, then linear or cosine decay to 0, or constant.

    Called with the optimizer's iteration count ``step`` (0-based), it gives the rate of update
    number ``step``. Warmup gives ``peak * (step + 1) / warmup_steps``: the first update already
    moves (the Hugging Face Trainer's schedules evaluate ``step / warmup_steps`` there, so its
    first update has rate 0) and the last warmup update is at ``peak``. After warmup, ``linear``
    falls by equal amounts to 0 at ``step == total_steps`` and ``cosine`` follows half a cosine
    period to 0 there; both stay at 0 past ``total_steps``. ``constant`` stays at ``peak``.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, kind: str = "linear") -> None:
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"Unknown learning-rate schedule {kind!r}; expected one of {SCHEDULE_KINDS}.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"Need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}.")
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.kind = kind

    def __call__(self, step: Any) -> tf.Tensor:
        """The learning rate of update number ``step`` (a Python int or an integer or float tensor)."""
        with tf.name_scope("WarmupDecay"):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.peak, tf.float32)
            warmup, total = float(self.warmup_steps), float(self.total_steps)
            decay_steps = max(1.0, total - warmup)
            rising = peak * (step + 1.0) / max(1.0, warmup)
            if self.kind == "constant":
                after = peak * tf.ones_like(step)
            elif self.kind == "linear":
                after = peak * tf.maximum(0.0, total - step) / decay_steps
            else:
                progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
                after = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
                # Also 0 when warmup fills the whole run, where progress has no room to reach 1.
                after = tf.where(step >= total, tf.zeros_like(after), after)
            return tf.where(step < warmup, rising, after)

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, for Keras serialization."""
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "kind": self.kind}


def warmup_updates(hyper: dict[str, Any], total_steps: int) -> int:
    """Updates spent warming up: ``warmup_steps`` if given, else ``ceil(warmup_ratio * total)``, at most ``total``."""
    steps = hyper.get("warmup_steps")
    if steps is None:
        ratio = hyper.get("warmup_ratio")
        ratio = DEFAULT_HYPERPARAMETERS["warmup_ratio"] if ratio is None else ratio
        # Rounded first, so a product such as 0.07 * 100 = 7.000000000000001 is not taken as 8.
        steps = math.ceil(round(ratio * total_steps, 9))
    return min(int(steps), total_steps)


def build_optimizer(hyper: dict[str, Any], updates_per_epoch: int, epochs: int) -> tf_keras.optimizers.Optimizer:
    """AdamW (LayerNorm weights and biases not decayed) or Adam on a WarmupDecay schedule, with clipping.

    ``hyper`` is the spec's hyperparameters; keys it lacks take DEFAULT_HYPERPARAMETERS.
    ``updates_per_epoch`` counts optimizer updates (batches / gradient accumulation steps).
    ``max_grad_norm`` None turns clipping off; ``weight_decay`` None means
    DEFAULT_ADAMW_WEIGHT_DECAY for adamw and 0 for adam.
    """
    hyper = {**DEFAULT_HYPERPARAMETERS, **hyper}
    name = hyper["optimizer"]
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
    total_steps = updates_per_epoch * epochs
    schedule = WarmupDecay(hyper["learning_rate"], warmup_updates(hyper, total_steps), total_steps,
                           hyper["lr_schedule"])
    clipnorm = hyper["max_grad_norm"] or None
    weight_decay = hyper.get("weight_decay")
    if name == "adam":
        if weight_decay:
            raise ValueError(f"Optimizer adam takes no weight decay (got {weight_decay}); use adamw.")
        return FusedAdam(learning_rate=schedule, epsilon=ADAM_EPSILON, global_clipnorm=clipnorm)
    optimizer = FusedAdamW(
        learning_rate=schedule, epsilon=ADAM_EPSILON, global_clipnorm=clipnorm,
        weight_decay=DEFAULT_ADAMW_WEIGHT_DECAY if weight_decay is None else float(weight_decay))
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_PATTERNS))
    return optimizer


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer that holds the schedule and the slots: a LossScaleOptimizer's inner one, or itself."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def learning_rate_of_update(optimizer: Any, iteration: int) -> float:
    """The learning rate of update number ``iteration`` (0-based), also through a LossScaleOptimizer."""
    inner = inner_optimizer(optimizer)
    # The schedule itself: the public `learning_rate` of a scheduled optimizer is a variable
    # holding the rate of the update last applied.
    rate = inner._learning_rate
    if isinstance(rate, tf_keras.optimizers.schedules.LearningRateSchedule):
        return float(rate(iteration))
    return float(tf_keras.backend.get_value(rate))


def current_learning_rate(optimizer: Any) -> float:
    """The learning rate the optimizer's next update will use."""
    inner = inner_optimizer(optimizer)
    return learning_rate_of_update(inner, int(tf_keras.backend.get_value(inner.iterations)))
