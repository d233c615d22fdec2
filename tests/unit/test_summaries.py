"""TensorBoard event files: what the reporter writes, merging attempts without repeated steps, the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.trainer.tf_runtime import prepare_tensorflow

# TensorFlow reads its environment at import time, so the process is prepared first.
prepare_tensorflow(0)

from service.trainer.summaries import (  # noqa: E402 - after prepare_tensorflow
    CONFUSION_MATRIX_TAG,
    PUBLISHED_FILE,
    SummaryReporter,
    TrainingSummaries,
    publish_summaries,
)
from tests.support.tensorboard_events import read_run  # noqa: E402 - after prepare_tensorflow


class CountingReporter:
    """A TrainingReporter that counts the calls it is passed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def progress(self, **_: Any) -> None:
        """Count a progress call."""
        self.calls.append("progress")

    def step_metrics(self, **_: Any) -> None:
        """Count a step's values."""
        self.calls.append("step_metrics")

    def epoch_metrics(self, **_: Any) -> None:
        """Count an epoch's values."""
        self.calls.append("epoch_metrics")

    def phase_seconds(self, phase: str, seconds: float) -> None:
        """Count a phase."""
        self.calls.append("phase_seconds")

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Count an event."""
        self.calls.append("event")

    def flush(self) -> str:
        """Count a flush."""
        self.calls.append("flush")
        return "flushed"


def attempt(folder: Path, first_step: int, last_step: int, steps_per_epoch: int, scale: float) -> None:
    """Report steps ``first_step``..``last_step`` (loss ``scale`` * step) through a SummaryReporter."""
    summaries = TrainingSummaries(folder)
    reporter = SummaryReporter(CountingReporter(), summaries)
    for step in range(first_step, last_step + 1):
        epoch, batch = (step - 1) // steps_per_epoch + 1, (step - 1) % steps_per_epoch + 1
        reporter.step_metrics(epoch=epoch, step=step, values={"loss": scale * step, "learning_rate": 0.5 / step})
        reporter.progress(epoch=epoch, epochs=3, step=batch, steps_per_epoch=steps_per_epoch,
                          examples_per_second=100.0 + step)
        if batch == steps_per_epoch:
            # As ReportProgress does: the epoch end repeats its last step's progress.
            reporter.progress(epoch=epoch, epochs=3, step=batch, steps_per_epoch=steps_per_epoch,
                              examples_per_second=100.0 + step)
            reporter.epoch_metrics(epoch=epoch, values={"loss": scale * epoch, "accuracy": 0.5,
                                                        "val_loss": scale * epoch + 1, "val_accuracy": 0.25})
    summaries.close()


def test_a_resumed_attempt_replaces_the_steps_it_redid_and_no_step_repeats(tmp_path: Path) -> None:
    live, published = tmp_path / "live", tmp_path / "published"
    # The first attempt trained 7 steps of 4-step epochs; its checkpoint held 5, so the second
    # redoes steps 6 and 7 (with other values) and trains on to step 12.
    attempt(live, 1, 7, 4, scale=1.0)
    attempt(live, 6, 12, 4, scale=2.0)
    assert len(list((live / "train").iterdir())) == 2, "each attempt writes its own file"

    assert publish_summaries(live, published) == [f"train/{PUBLISHED_FILE}", f"validation/{PUBLISHED_FILE}"]
    train, validation = read_run(published / "train"), read_run(published / "validation")
    assert train.series("batch_loss") == {step: (1.0 if step <= 5 else 2.0) * step for step in range(1, 13)}
    assert [step for step, _ in train.scalars["batch_loss"]] == list(range(1, 13)), "in step order"
    assert train.series("batch_learning_rate") == pytest.approx({step: 0.5 / step for step in range(1, 13)})
    assert train.series("batch_examples_per_second") == {step: 100.0 + step for step in range(1, 13)}
    # Epoch 1 ended in the first attempt only; epochs 2 and 3 in the second.
    assert train.series("epoch_loss") == {1: 1.0, 2: 4.0, 3: 6.0}
    assert train.series("epoch_accuracy") == {1: 0.5, 2: 0.5, 3: 0.5}
    assert validation.series("epoch_loss") == {1: 2.0, 2: 5.0, 3: 7.0}
    assert validation.series("epoch_accuracy") == {1: 0.25, 2: 0.25, 3: 0.25}
    assert set(validation.scalars) == {"epoch_loss", "epoch_accuracy"}


def test_a_file_cut_short_by_a_killed_writer_keeps_its_complete_events(tmp_path: Path) -> None:
    live = tmp_path / "live"
    attempt(live, 1, 4, 4, scale=1.0)
    [events] = list((live / "train").iterdir())
    # A record's valid header (length and its checksum) and the first 8 of its bytes: a write cut short.
    events.write_bytes(events.read_bytes() + events.read_bytes()[:20])
    publish_summaries(live, tmp_path / "published")
    assert read_run(tmp_path / "published" / "train").series("batch_loss") == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}


def test_the_reporter_passes_every_call_on_and_flushes_the_files_first(tmp_path: Path) -> None:
    inner = CountingReporter()
    summaries = TrainingSummaries(tmp_path / "live")
    reporter = SummaryReporter(inner, summaries)
    reporter.step_metrics(epoch=1, step=1, values={"loss": 0.75})
    reporter.progress(epoch=1, epochs=1, step=1, steps_per_epoch=2)  # no pace yet: nothing kept
    reporter.phase_seconds("fit", 1.0)
    reporter.event("fit_started", "Fitting.")
    assert reporter.flush() == "flushed"
    assert inner.calls == ["step_metrics", "progress", "phase_seconds", "event", "flush"]
    # The flush wrote the kept step: a checkpoint written next finds it on disk.
    publish_summaries(tmp_path / "live", tmp_path / "published")
    run = read_run(tmp_path / "published" / "train")
    assert run.series("batch_loss") == {1: 0.75} and set(run.scalars) == {"batch_loss"}


def test_the_confusion_matrix_is_an_image_at_the_evaluated_epoch(tmp_path: Path) -> None:
    summaries = TrainingSummaries(tmp_path / "live")
    assert summaries.confusion_matrix({"epoch": 2, "rows": 0}) is False
    report = {"epoch": 2, "confusion_matrix": {"labels": ["negative", "positive", "neutral"],
                                               "matrix": [[5, 1, 0], [2, 7, 1], [0, 0, 3]]}}
    assert summaries.confusion_matrix(report) is True
    summaries.close()
    publish_summaries(tmp_path / "live", tmp_path / "published")
    [(step, png)] = read_run(tmp_path / "published" / "validation").images[CONFUSION_MATRIX_TAG]
    assert step == 2 and png.startswith(b"\x89PNG\r\n\x1a\n")
    import tensorflow as tf

    height, width, channels = tf.io.decode_png(png).shape
    assert height >= 300 and width >= 300 and channels == 4


def test_nothing_to_publish_without_event_files(tmp_path: Path) -> None:
    assert publish_summaries(tmp_path / "missing", tmp_path / "published") == []
    assert not (tmp_path / "published").exists()
