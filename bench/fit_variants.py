"""The two in-process recipes bench.train compares, each run by it in a fresh process.

    python -m bench.fit_variants plain|inprocess CONFIG_JSON RESULT_JSON

``plain`` is the fine-tuning recipe as a user writes it by hand (pad every row to
max_length, one tf.data pipeline, model.fit, save_pretrained); ``inprocess`` calls the
service's own recipe, service.trainer.fit.run_training, on the same files. Both write
RESULT_JSON with wall-clock timestamps (time.time(), so the parent can subtract its own
start time) and what the fit reported. CONFIG_JSON holds the fields of bench.train.BenchJob.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class MemoryReporter:
    """A TrainingReporter that keeps everything in memory, each call stamped with time.time().

    Reporter hooks the service adds later (not in service.trainer.reporter today) are
    recorded under their own name by __getattr__, so the bench keeps running as the
    protocol grows.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def _record(self, hook: str, **values: Any) -> None:
        self.calls.append({"hook": hook, "time": time.time(), **values})

    def progress(self, **values: Any) -> None:
        """Remember a progress report."""
        self._record("progress", **values)

    def step_metrics(self, **values: Any) -> None:
        """Remember per-step values."""
        self._record("step_metrics", **values)

    def epoch_metrics(self, **values: Any) -> None:
        """Remember per-epoch values."""
        self._record("epoch_metrics", **values)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Remember an event."""
        self._record("event", kind=kind, message=message, data=data)

    def flush(self) -> None:
        """Nothing is buffered."""

    def __getattr__(self, hook: str) -> Any:
        if hook.startswith("_"):
            raise AttributeError(hook)
        return lambda *args, **values: self._record(hook, args=list(args), **values)

    def first(self, hook: str, kind: str | None = None) -> float | None:
        """Time of the first call of ``hook`` (of event ``kind``), or None."""
        return next((call["time"] for call in self.calls
                     if call["hook"] == hook and (kind is None or call.get("kind") == kind)), None)


def run_plain(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The hand-written recipe: padding to max_length, Adam, model.fit, save_pretrained."""
    marks: dict[str, Any] = {"data_started": time.time()}
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import pandas as pd
    import safetensors.numpy
    import tensorflow as tf
    import tf_keras
    from transformers import AutoConfig, AutoTokenizer, TFAutoModelForSequenceClassification
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    data_root, model_dir, length = Path(job["data_root"]), job["model_dir"], job["max_length"]
    train, validation = pd.read_csv(data_root / "train.csv"), pd.read_csv(data_root / "validation.csv")
    names = sorted(train["label"].unique())
    label2id = {name: index for index, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def dataset(frame: Any) -> tuple[Any, Any]:
        tokens = tokenizer(list(frame["text"]), padding="max_length", truncation=True, max_length=length,
                           return_tensors="np")
        labels = frame["label"].map(label2id).to_numpy(dtype=np.int32)
        return tf.data.Dataset.from_tensor_slices((dict(tokens), labels)), tokens["attention_mask"]

    train_set, mask = dataset(train)
    train_set = train_set.shuffle(len(train), seed=job["seed"]).batch(job["batch_size"])
    validation_set = dataset(validation)[0].batch(job["batch_size"])

    tf_keras.utils.set_random_seed(job["seed"])
    # TF from_pretrained cannot read this PyTorch-format safetensors file (transformers #40028),
    # so the weights are copied in as service.trainer.modeling does.
    config = AutoConfig.from_pretrained(model_dir, num_labels=len(names), label2id=label2id,
                                        id2label={i: n for n, i in label2id.items()})
    model = TFAutoModelForSequenceClassification.from_config(config)
    model(model.dummy_inputs, training=False)
    load_pytorch_state_dict_in_tf2_model(model, safetensors.numpy.load_file(f"{model_dir}/model.safetensors"),
                                         allow_missing_keys=True)
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=job["learning_rate"]),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class FirstStep(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            marks.setdefault("first_step", time.time())
            marks.setdefault("step_times", []).append(time.time())

    fit_started = time.time()
    history = model.fit(train_set, validation_data=validation_set, epochs=job["epochs"], callbacks=[FirstStep()])
    marks["fit_seconds"] = time.time() - fit_started
    model.save_pretrained(str(out_dir / "model"))
    tokenizer.save_pretrained(str(out_dir / "model"))
    marks["saved"] = time.time()
    return {**marks, "val_accuracy": float(history.history["val_accuracy"][-1]),
            "padding_efficiency": float(mask.sum() / mask.size), "result": {}}


def run_inprocess(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The service's recipe, run_training, with a spec that sets only the compared hyperparameters."""
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    # Imported before the clock starts, as a warm trainer has them: the wall time without imports
    # is what the API variant is compared with.
    import tensorflow  # noqa: F401 - imported for its import cost only
    from transformers import TFAutoModelForSequenceClassification  # noqa: F401 - import cost only

    from service.schemas import TrainingSpecSchema
    from service.trainer.fit import run_training

    spec = TrainingSpecSchema().load(service_spec(job))
    reporter = MemoryReporter()
    data_started = time.time()
    result = run_training(spec, data_root=Path(job["data_root"]), work_dir=out_dir / "work",
                          checkpoint_dir=out_dir / "checkpoint", publish_dir=out_dir / "model", reporter=reporter)
    saved = time.time()
    fit_started, fit_ended = reporter.first("event", "fit_started"), reporter.first("event", "publishing")
    step_times = [call["time"] for call in reporter.calls if call["hook"] == "step_metrics"]
    return {"data_started": data_started, "first_step": reporter.first("progress"), "saved": saved,
            "step_times": step_times,
            "fit_seconds": fit_ended - fit_started if fit_started and fit_ended else None,
            "val_accuracy": result.get("val_accuracy"), "padding_efficiency": result.get("padding_efficiency"),
            "result": result, "events": [call for call in reporter.calls if call["hook"] == "event"]}


def service_spec(job: dict[str, Any]) -> dict[str, Any]:
    """The training spec of the compared job: files under the data root, the model by absolute path."""
    return {"model": job["model_dir"],
            "data": {"train": {"path": "train.csv"}, "validation": {"path": "validation.csv"}},
            "hyperparameters": {**{name: job[name] for name in
                                   ("epochs", "batch_size", "learning_rate", "max_length", "seed")},
                                **job.get("service_hyperparameters", {})}}


RECIPES = {"plain": run_plain, "inprocess": run_inprocess}


def main(argv: list[str]) -> None:
    variant, config_path, result_path = argv
    job = json.loads(Path(config_path).read_text())
    out_dir = Path(result_path).parent
    result = RECIPES[variant](job, out_dir)
    Path(result_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
