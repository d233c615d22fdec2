"""The training recipe on a tiny BERT: accumulation, the best epoch, early stopping, resume, gates, determinism."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure
from service.trainer.fit import run_training
from tests.integration.test_trainer_fit import RecordingReporter, make_spec
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.tensorboard_events import read_run

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def still_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT without dropout, so that two fits of the same rows compute the same gradients."""
    folder = tmp_path_factory.mktemp("still-bert") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def noisy_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Sentiment rows whose labels are drawn at random: the texts predict nothing, so a fit overfits."""
    rng = random.Random(seed)
    return [{**row, "label": rng.choice(["positive", "negative"])} for row in sentiment_rows(n, seed)]


def train(spec: dict[str, Any], root: Path, reporter: RecordingReporter | None = None) -> dict[str, Any]:
    """run_training of ``spec`` with its folders under ``root``."""
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    return run_training(spec, data_root=root / "data", work_dir=root / "work", checkpoint_dir=root / "checkpoints",
                         publish_dir=root / "artifacts" / "job", reporter=reporter or RecordingReporter(),
                         threads=2)


def published_weights(root: Path) -> dict[str, np.ndarray]:
    """Every weight of the published TF model, by name."""
    return weights_of(root / "artifacts" / "job" / "model")


def weights_of(folder: Path) -> dict[str, np.ndarray]:
    """Every weight of a saved TF model folder, by its name without the model's own (numbered) name."""
    import h5py

    weights: dict[str, np.ndarray] = {}

    def keep(name: str, item: Any) -> None:
        if isinstance(item, h5py.Dataset):
            weights[re.sub(r"tf_bert_(for_sequence_classification|model)(_\d+)?/", "", name)] = item[()]

    with h5py.File(folder / "tf_model.h5", "r") as handle:
        handle.visititems(keep)
    return weights


def test_four_accumulated_batches_of_8_update_as_one_batch_of_32(still_model_dir: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(200, seed=5)
    results = {}
    for name, batch_size, accumulate in (("big", 32, 1), ("accumulated", 8, 4)):
        root = tmp_path / name
        write_table(rows, root / "data" / "train.csv")
        reporter = RecordingReporter()
        spec = make_spec(str(still_model_dir), {"path": "train.csv"}, epochs=2, batch_size=batch_size,
                         gradient_accumulation_steps=accumulate, precision="float32", learning_rate=1e-3)
        results[name] = (train(spec, root, reporter), published_weights(root), reporter)
    big, accumulated = results["big"], results["accumulated"]
    # 160 training rows: 5 updates an epoch either way, in 5 steps of 32 rows or 20 micro-steps of 8.
    assert [call["data"]["updates_per_epoch"] for call in big[2].of("event") if call["kind"] == "fit_started"] == [5]
    assert [call["data"]["steps_per_epoch"] for call in accumulated[2].of("event")
            if call["kind"] == "fit_started"] == [20]
    initial = weights_of(still_model_dir)
    changed = 0
    for name, weight in big[1].items():
        assert np.allclose(accumulated[1][name], weight, rtol=1e-3, atol=2e-5), name
        if name in initial and not np.allclose(initial[name], weight, atol=1e-4):
            changed += 1
    assert changed > 10, "the fits moved the encoder's weights"
    for metric in ("val_loss", "val_accuracy"):
        assert accumulated[0][metric] == pytest.approx(big[0][metric], abs=1e-4)
    # Without accumulation, batches of 8 make 4x the updates and end elsewhere.
    root = tmp_path / "small"
    write_table(rows, root / "data" / "train.csv")
    train(make_spec(str(still_model_dir), {"path": "train.csv"}, epochs=2, batch_size=8, precision="float32",
                    learning_rate=1e-3), root)
    small = published_weights(root)
    assert any(not np.allclose(small[name], weight, rtol=1e-3, atol=2e-5) for name, weight in big[1].items())


def reload_and_evaluate(model_dir: Path, rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Cross-entropy and accuracy of the saved model on ``rows``, computed from a fresh load."""
    import tensorflow as tf
    from transformers import AutoTokenizer, TFAutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = TFAutoModelForSequenceClassification.from_pretrained(str(model_dir))
    inputs = tokenizer([row["text"] for row in rows], padding=True, truncation=True, max_length=32,
                       return_tensors="tf")
    logits = tf.cast(model(**inputs, training=False).logits, tf.float32).numpy()
    labels = np.array([model.config.label2id[row["label"]] for row in rows])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-log_probabilities[np.arange(len(rows)), labels].mean())
    return loss, float((logits.argmax(axis=1) == labels).mean())


OVERFIT = {"epochs": 12, "learning_rate": 3e-3, "lr_schedule": "constant", "warmup_steps": 0,
           "precision": "float32", "early_stopping": {"metric": "val_loss", "mode": "auto", "patience": 2,
                                                      "min_delta": 0.0}}


def test_early_stopping_publishes_the_best_epoch_not_the_last(tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = noisy_rows(60, seed=11)
    write_table(noisy_rows(80, seed=10), tmp_path / "data" / "train.csv")
    write_table(validation, tmp_path / "data" / "validation.csv")
    reporter = RecordingReporter()
    result = train(make_spec(str(tiny_model_dir), {"path": "train.csv"}, {"path": "validation.csv"}, **OVERFIT),
                   tmp_path, reporter)

    epochs = {call["epoch"]: call["values"] for call in reporter.of("epoch_metrics")}
    losses = [epochs[epoch]["val_loss"] for epoch in sorted(epochs)]
    assert result["stopped_early"] is True and "val_loss did not improve" in result["stop_reason"]
    assert result["epochs_trained"] == len(epochs) < 12
    best = result["best_epoch"]
    assert best == 1 + int(np.argmin(losses)) and best < result["epochs_trained"]
    assert result["epochs_trained"] - best == 2  # patience 2: two epochs without improvement, then stop
    assert result["val_loss"] == pytest.approx(epochs[best]["val_loss"])
    # The published weights are the best epoch's: a fresh load scores that epoch's val_loss.
    loss, accuracy = reload_and_evaluate(tmp_path / "artifacts" / "job" / "model", validation)
    assert loss == pytest.approx(epochs[best]["val_loss"], abs=2e-3)
    assert loss < losses[-1] - 1e-3, "the last epoch was worse, and is not the one published"
    assert accuracy == pytest.approx(epochs[best]["val_accuracy"], abs=1e-6)
    report = json.loads((tmp_path / "artifacts" / "job" / "evaluation.json").read_text())
    assert report["epoch"] == best and report["loss"] == pytest.approx(loss, abs=2e-3)
    assert [call["kind"] for call in reporter.of("event")].count("stopped_early") == 1


KILLABLE_TRAINER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    spec, root = json.loads(sys.argv[1]), Path(sys.argv[2])
    from service.trainer.fit import run_training

    class LineReporter:
        def __init__(self, path): self.file = open(path, "a", buffering=1)
        def _write(self, kind, **data): self.file.write(json.dumps({"kind": kind, **data}) + "\\n")
        def progress(self, **data): pass
        def step_metrics(self, *, epoch, step, values): self._write("step", epoch=epoch, step=step, values=values)
        def epoch_metrics(self, *, epoch, values): self._write("epoch", epoch=epoch, values=values)
        def phase_seconds(self, phase, seconds): pass
        def event(self, kind, message, data=None): self._write("event", event=kind, data=data)
        def flush(self): pass

    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    run_training(spec, data_root=root / "data", work_dir=root / "work", checkpoint_dir=root / "checkpoints",
                 publish_dir=root / "artifacts" / "job", reporter=LineReporter(root / "calls.jsonl"), threads=2,
                 checkpoint_steps=3)
""")


def test_a_trainer_killed_after_its_best_epoch_resumes_the_schedule_and_publishes_that_epoch(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    validation = noisy_rows(60, seed=11)
    write_table(noisy_rows(80, seed=10), tmp_path / "data" / "train.csv")
    write_table(validation, tmp_path / "data" / "validation.csv")
    # A decaying schedule with warmup, so a restart from step 0 would show in the rates.
    spec = make_spec(str(tiny_model_dir), {"path": "train.csv"}, {"path": "validation.csv"},
                     **{**OVERFIT, "lr_schedule": "linear", "warmup_steps": 4, "epochs": 10,
                        "early_stopping": {"metric": "val_loss", "mode": "auto", "patience": 4, "min_delta": 0.0}})
    calls = tmp_path / "calls.jsonl"
    process = subprocess.Popen([sys.executable, "-c", KILLABLE_TRAINER, json.dumps(spec), str(tmp_path)],
                               cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    best_record = tmp_path / "checkpoints" / "best" / "best.json"
    deadline = time.monotonic() + 300
    killed_after = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            epochs = [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
            done = [call["epoch"] for call in epochs if call["kind"] == "epoch"]
            if best_record.exists() and done and json.loads(best_record.read_text())["epoch"] < max(done):
                # Mid-epoch too: a step checkpoint every 3 steps lies between epoch ends.
                steps = [call["step"] for call in epochs if call["kind"] == "step"]
                if steps and steps[-1] % 10 not in (0, 9):
                    process.send_signal(signal.SIGKILL)
                    killed_after = (max(done), steps[-1], json.loads(best_record.read_text())["epoch"])
                    break
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert killed_after is not None, "the trainer was killed after an epoch that was worse than the best"
    first = [json.loads(line) for line in calls.read_text().splitlines()]
    calls.rename(tmp_path / "first-attempt.jsonl")

    resuming = subprocess.run([sys.executable, "-c", KILLABLE_TRAINER, json.dumps(spec), str(tmp_path)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert resuming.returncode == 0, resuming.stderr[-3000:]
    second = [json.loads(line) for line in calls.read_text().splitlines()]
    resumed = [call for call in second if call["kind"] == "event" and call["event"] == "resumed"]
    assert resumed, "the second attempt resumed from the checkpoint"

    # 80 rows per epoch in batches of 8: 10 updates an epoch, 100 in all, 4 of warmup, then linear decay.
    def schedule(update: int) -> float:
        if update < 4:
            return 3e-3 * (update + 1) / 4
        return 3e-3 * max(0, 100 - update) / (100 - 4)

    second_steps = [call for call in second if call["kind"] == "step"]
    assert second_steps[0]["step"] > 10, "the resumed attempt continued after the first epoch"
    for call in [c for c in first if c["kind"] == "step"] + second_steps:
        assert call["values"]["learning_rate"] == pytest.approx(schedule(call["step"] - 1), rel=1e-4), call
    best_events = [call["data"]["epoch"] for call in first + second if call["kind"] == "event"
                   and call["event"] == "best_epoch"]
    history = {call["epoch"]: call["values"] for call in first + second if call["kind"] == "epoch"}
    best = 1 + int(np.argmin([history[epoch]["val_loss"] for epoch in sorted(history)]))
    assert best_events[-1] == best
    loss, _ = reload_and_evaluate(tmp_path / "artifacts" / "job" / "model", validation)
    assert loss == pytest.approx(history[best]["val_loss"], abs=2e-3)
    assert json.loads((tmp_path / "artifacts" / "job" / "metrics.json").read_text())["final"]["best_epoch"] == best
    # The event files hold every step once, the value of the attempt that trained it last (as the metrics series).
    latest = {call["step"]: call["values"]["loss"] for call in first + second if call["kind"] == "step"}
    train = read_run(tmp_path / "artifacts" / "job" / "tensorboard" / "train")
    assert train.series("batch_loss") == {step: float(np.float32(loss)) for step, loss in latest.items()}
    assert sorted(latest) == list(range(1, max(latest) + 1))
    assert train.series("epoch_loss") == {epoch: float(np.float32(values["loss"])) for epoch, values in history.items()}


def test_a_model_below_the_acceptance_minimum_fails_with_its_report_kept(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    write_table(noisy_rows(80, seed=3), tmp_path / "data" / "train.csv")
    spec = make_spec(str(tiny_model_dir), {"path": "train.csv"}, epochs=1)
    spec["acceptance"] = {"metric": "val_macro_f1", "min": 0.99}
    with pytest.raises(TrainingFailure) as caught:
        train(spec, tmp_path)
    failure = caught.value
    assert failure.code is FailureCode.BELOW_THRESHOLD and "val_macro_f1" in failure.message
    assert failure.result is not None, "a model that trained keeps its result"
    check = failure.result["acceptance"]
    assert check["passed"] is False and check["value"] < 0.99
    assert check["value"] == failure.result["evaluation"]["macro_f1"]
    published = tmp_path / "artifacts" / "job"
    assert json.loads((published / "evaluation.json").read_text())["macro_f1"] == check["value"]
    assert (published / "model" / "tf_model.h5").is_file()


def test_the_same_spec_and_seed_give_the_same_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    histories = []
    for run in ("first", "second"):
        root = tmp_path / run
        write_table(sentiment_rows(120, seed=2), root / "data" / "train.csv")
        reporter = RecordingReporter()
        train(make_spec(str(tiny_model_dir), {"path": "train.csv"}, epochs=2), root, reporter)
        histories.append([{name: round(value, 4) for name, value in call["values"].items()}
                          for call in reporter.of("epoch_metrics")])
    assert histories[0] == histories[1]
    assert histories[0][1]["loss"] < histories[0][0]["loss"]


def test_balanced_class_weights_weigh_the_minority_class_up(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(200, seed=4)
    imbalanced = [row for row in rows if row["label"] == "positive"] + \
        [row for row in rows if row["label"] == "negative"][:25]
    write_table(imbalanced, tmp_path / "data" / "train.csv")
    reporter = RecordingReporter()
    result = train(make_spec(str(tiny_model_dir), {"path": "train.csv"}, epochs=2, class_weight="balanced"),
                   tmp_path, reporter)
    weights = [call["data"] for call in reporter.of("event") if call["kind"] == "class_weights"]
    assert len(weights) == 1
    # The training rows are the 90% not held out; balanced weights are rows / (classes * class rows).
    report = result["evaluation"]
    assert set(report["per_class"]) == {"negative", "positive"}
    assert weights[0]["negative"] > 1 > weights[0]["positive"]
    assert weights[0]["negative"] / weights[0]["positive"] == pytest.approx(
        (100 - report["per_class"]["positive"]["support"]) / (25 - report["per_class"]["negative"]["support"]),
        rel=1e-6)
    assert math.isclose(sum(report["per_class"][label]["support"] for label in report["per_class"]),
                        report["rows"])
