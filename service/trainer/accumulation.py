"""Gradient accumulation: one optimizer update from several micro-batches, as if from one big batch.

The batches come from service.trainer.batching with ``accumulate`` > 1: each micro-batch carries
its share of the update's rows (``update_weight``) and whether the update is applied after it
(``apply_update``). The loss of a micro-batch is its rows' mean, so the sum of the micro-batches'
gradients, each weighted by its share, is the gradient of the big batch's mean loss; the
optimizer (its schedule, clipping and step count) sees one update per group, as it would with
the big batch.
"""

from __future__ import annotations

from typing import Any

from service.trainer.batching import APPLY_UPDATE, UPDATE_WEIGHT


def install_accumulating_train_step(model: Any) -> None:
    """Replace the compiled model's train step with one that accumulates gradients.

    Call after ``model.compile``. The optimizer's variables are created here, outside the
    train function: the update is applied inside a ``tf.cond`` branch, where a traced function
    may not create variables.
    """
    import tensorflow as tf
    import tf_keras

    from service.trainer.optimization import inner_optimizer

    variables = model.trainable_variables
    inner_optimizer(model.optimizer).build(variables)
    with model.distribute_strategy.scope():
        # One local sum per device under a mirrored strategy; the optimizer all-reduces at apply.
        sums = [tf.Variable(tf.zeros(variable.shape, tf.float32), trainable=False,
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.SUM, name=f"gradient_sum_{index}")
                for index, variable in enumerate(variables)]
    scaling = isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)

    def train_step(data: Any) -> dict[str, Any]:
        x, y, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(data)
        x = dict(x)
        weight = x.pop(UPDATE_WEIGHT)
        apply_update = x.pop(APPLY_UPDATE)
        with tf.GradientTape() as tape:
            logits = model(x, training=True).logits
            loss = model.compiled_loss(y, logits, sample_weight, regularization_losses=model.losses)
            scaled = model.optimizer.get_scaled_loss(loss) if scaling else loss
        gradients = tape.gradient(scaled, variables)
        if scaling:
            gradients = model.optimizer.get_unscaled_gradients(gradients)
        for total, gradient in zip(sums, gradients, strict=True):
            if gradient is not None:
                total.assign_add(tf.cast(tf.convert_to_tensor(gradient), tf.float32) * weight)

        def apply() -> Any:
            model.optimizer.apply_gradients(zip([total.read_value() for total in sums], variables, strict=True))
            for total in sums:
                total.assign(tf.zeros_like(total))
            return tf.constant(True)

        tf.cond(apply_update, apply, lambda: tf.constant(False))
        model.compiled_metrics.update_state(y, logits, sample_weight)
        results: dict[str, Any] = {}
        for metric in model.metrics:
            value = metric.result()
            if isinstance(value, dict):
                results.update(value)
            else:
                results[metric.name] = value
        return results

    model.train_step = train_step
    model.train_function = None  # rebuilt from the new step at the next fit
