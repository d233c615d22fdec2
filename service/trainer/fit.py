"""One training attempt: check data, load model, fit the Keras recipe, publish artifacts."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from service.trainer.reporter import TrainingReporter
from service.trainer.stop import StopSignal
from service.trainer.tf_runtime import prepare_tensorflow

FINAL_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def run_training(spec: dict[str, Any], *, data_root: Path, work_dir: Path, checkpoint_dir: Path,
                 publish_dir: Path, reporter: TrainingReporter, threads: int = 0,
                 checkpoint_steps: int = 0, stop: StopSignal | None = None,
                 devices: list[str] | None = None) -> dict[str, float]:
    """Train the spec's model and publish it to ``publish_dir``; returns the final metrics.

    Data problems raise TrainingFailure(invalid_data) before any model weights are read;
    model problems raise TrainingFailure(model_load_failed). A checkpoint in
    ``checkpoint_dir`` from an interrupted attempt is resumed from; it is removed once the
    model is published. With ``stop``, SIGTERM during the fit writes a checkpoint at the
    current step and raises DrainRequested. ``devices`` defaults to the visible GPUs
    (mirrored when there are several; see service.trainer.devices).
    """
    prepare_tensorflow(threads)
    from service.trainer.data import prepare_data
    from service.trainer.modeling import load_classifier, load_tokenizer

    hyper = spec["hyperparameters"]
    data = prepare_data(spec, data_root, work_dir / "datasets-cache")
    reporter.event("data_loaded", f"{len(data.train)} training and {len(data.validation)} validation rows, "
                   f"{data.num_labels} labels.",
                   {"train_rows": len(data.train), "validation_rows": len(data.validation),
                    "labels": [data.id2label[i] for i in range(data.num_labels)]})
    tokenizer = load_tokenizer(spec["model"])
    train_tokens, validation_tokens = tokenize(data, spec, tokenizer)
    import tf_keras

    # Seeded before the new classification head is drawn, so a spec's seed fixes the whole run.
    tf_keras.utils.set_random_seed(hyper["seed"])
    from service.trainer.devices import choose_strategy

    strategy = choose_strategy(devices)
    with strategy.scope():  # variables made here are mirrored; compile and fit follow the model's strategy
        model = load_classifier(spec["model"], data.num_labels, data.id2label, data.label2id)
    replicas = strategy.num_replicas_in_sync
    reporter.event("model_loaded", f"Loaded {spec['model']} ({model.config.model_type}) on {replicas} "
                   f"device(s).", {"replicas": replicas})
    history, final = fit(model, tokenizer, train_tokens, validation_tokens, hyper, reporter,
                         checkpoint_dir, checkpoint_steps, stop)
    reporter.event("publishing", "Writing the model and its files.")
    # Staged beside the published folder (same file system, so the rename is atomic).
    staging = publish_dir.with_name(f".{publish_dir.name}.staging-{os.getpid()}")
    publish(model, tokenizer, spec, history, final, staging, publish_dir)
    reporter.event("artifacts_published", "Model, tokenizer, metrics.json and spec.json published.")
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return final


def tokenize(data: Any, spec: dict[str, Any], tokenizer: Any) -> tuple[Any, Any]:
    """Tokenized train and validation datasets, truncated at max_length and not yet padded."""
    text, pair = spec["data"]["text_column"], spec["data"]["text_pair_column"]
    max_length = spec["hyperparameters"]["max_length"]

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        pairs = batch[pair] if pair else None
        return tokenizer(batch[text], pairs, truncation=True, max_length=max_length)

    columns = [text] + ([pair] if pair else [])
    return (data.train.map(encode, batched=True, remove_columns=columns),
            data.validation.map(encode, batched=True, remove_columns=columns))


def fit(model: Any, tokenizer: Any, train_tokens: Any, validation_tokens: Any, hyper: dict[str, Any],
        reporter: TrainingReporter, checkpoint_dir: Path, checkpoint_steps: int,
        stop: StopSignal | None = None) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Compile and fit the Keras recipe; returns per-epoch history and the last epoch's metrics."""
    import tf_keras

    from service.trainer.checkpoints import StepCheckpoints
    from service.trainer.progress import ReportProgress

    tf_keras.utils.set_random_seed(hyper["seed"])
    batch_size = hyper["batch_size"]
    train_set = padded_batches(train_tokens, tokenizer, batch_size, shuffle_seed=hyper["seed"])
    validation_set = padded_batches(validation_tokens, tokenizer, batch_size)
    steps_per_epoch = math.ceil(len(train_tokens) / batch_size)
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=hyper["learning_rate"]),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    epochs = hyper["epochs"]
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        # Metrics are recorded before the checkpoint is written: an epoch whose checkpoint
        # exists always has its metrics, and one redone after a crash overwrites them.
        ReportProgress(reporter, epochs, steps_per_epoch),
        # Saves model and optimizer state; a later attempt resumes where this one stopped.
        StepCheckpoints(str(checkpoint_dir), steps_per_epoch, checkpoint_steps, stop, reporter),
    ]
    reporter.event("fit_started", f"Fitting {epochs} epoch(s) of {steps_per_epoch} step(s).",
                   {"epochs": epochs, "steps_per_epoch": steps_per_epoch})
    model.fit(train_set, validation_data=validation_set, epochs=epochs, callbacks=callbacks, verbose=2)
    # From the checkpoint's record, so epochs finished by an earlier attempt are included.
    history = callbacks[1].history
    final = {name: history[-1][name] for name in FINAL_METRICS if history and name in history[-1]}
    return history, final


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def padded_batches(tokens: Any, tokenizer: Any, batch_size: int, shuffle_seed: int | None = None) -> Any:
    """A tf.data pipeline of (features, labels) batches, each padded to its own longest row.

    Built from ragged tensors, so batch shapes stay dynamic; datasets' to_tf_dataset infers
    fixed shapes from a sample of batches and then rejects batches of other lengths.
    """
    import itertools

    import numpy as np
    import tensorflow as tf

    names = [name for name in MODEL_INPUTS if name in tokens.column_names]
    pad_values = {"input_ids": tokenizer.pad_token_id or 0, "attention_mask": 0,
                  "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0}
    features = {}
    for name in names:
        rows = tokens[name]
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        features[name] = tf.RaggedTensor.from_row_lengths(flat, lengths)
    labels = tf.constant(np.asarray(tokens["labels"], dtype=np.int32))
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(tokens), seed=shuffle_seed, reshuffle_each_iteration=True)

    def pad(batch: dict[str, Any], batch_labels: Any) -> tuple[dict[str, Any], Any]:
        return {name: batch[name].to_tensor(default_value=pad_values[name]) for name in names}, batch_labels

    return dataset.ragged_batch(batch_size).map(pad).prefetch(tf.data.AUTOTUNE)


def publish(model: Any, tokenizer: Any, spec: dict[str, Any], history: list[dict[str, float]],
            final: dict[str, float], staging: Path, publish_dir: Path) -> None:
    """Write everything to ``staging``, then rename it into place, so no reader sees half a model."""
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
        model.save_pretrained(str(staging / "model"))
        tokenizer.save_pretrained(str(staging / "model"))
        (staging / "metrics.json").write_text(json.dumps({"epochs": history, "final": final}, indent=2))
        (staging / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
        publish_dir.parent.mkdir(parents=True, exist_ok=True)
        if publish_dir.exists():
            # An earlier attempt published and then lost its owner: replace its files whole.
            aside = publish_dir.with_name(f".{publish_dir.name}.replaced")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(publish_dir, aside)
            os.rename(staging, publish_dir)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(staging, publish_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
