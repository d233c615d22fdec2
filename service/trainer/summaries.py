"""TensorBoard event files of a job: per-step and per-epoch scalars and the evaluation's confusion matrix.

The values are the ones the job's metrics series records (GET /v1/jobs/{id}/metrics): a
SummaryReporter sits in front of the job's reporter and writes what passes through it. Per-step
values are kept in a list (a few microseconds a step, on the host, from floats Keras already
fetched) and written at the reporter's flushes: each epoch end, and before each checkpoint.
Scalars are written as event records directly, in the form tf.summary.scalar gives them,
because an eager tf.summary.scalar costs about 0.3 ms of host time per value, some 30 times more;
the one image goes through tf.summary.image.

The runs follow Keras' TensorBoard callback: ``train/`` holds ``batch_*`` scalars at the global
step (1-based, as the metrics series counts steps) and ``epoch_*`` scalars at the 1-based
epoch; ``validation/`` holds the val_ metrics as ``epoch_*`` scalars, so TensorBoard draws
training and validation on one chart, and the confusion matrix image.

The files live beside the checkpoint, so a resumed attempt finds the earlier attempts' files
(flushed before every checkpoint they resume from, and copied to storage with it), and adds
its own. Publishing merges each run's files into one, keeping for every tag and step the
value of the latest attempt, the rule the metrics series follows: a resumed job shows no step
twice.
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2, tensor_pb2, types_pb2
from tensorflow.core.util import event_pb2

from service.trainer.reporter import TrainingReporter

TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
# One merged file per run in the published artifacts; TensorBoard reads any file named *tfevents*.
PUBLISHED_FILE = "events.out.tfevents.fitjobs.v2"
CONFUSION_MATRIX_TAG = "evaluation_confusion_matrix"
# Beyond this many classes the counts are not written into the cells: they would not be legible.
ANNOTATED_CLASSES = 30
FILE_VERSION = "brain.Event:2"  # what TensorFlow's writers put first: summaries hold tensors
SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


def scalar_event(tag: str, step: int, value: float, wall_time: float) -> Any:
    """An event holding one float32 scalar, as tf.summary.scalar writes it."""
    event = event_pb2.Event(wall_time=wall_time, step=step)
    event.summary.value.add(tag=tag, metadata=SCALAR_METADATA,
                            tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value]))
    return event


class EventFile:
    """An event file written record by record: TFRecord framing, a version event first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = tf.io.TFRecordWriter(str(path))
        self.write(event_pb2.Event(wall_time=time.time(), file_version=FILE_VERSION))

    def write(self, event: Any) -> None:
        """Append one event."""
        self._writer.write(event.SerializeToString())

    def flush(self) -> None:
        """Write what is buffered to the file."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.close()


class TrainingSummaries:
    """The event files of one attempt, written into ``folder`` (one subfolder per run)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, EventFile] = {}
        self._image_writer: Any = None
        # (tag, global step, value, wall time) of the train run, written at the next flush.
        self._pending: list[tuple[str, int, float, float]] = []

    def _file(self, run: str) -> EventFile:
        if run not in self._files:
            (self.folder / run).mkdir(parents=True, exist_ok=True)
            # Named as TensorFlow names its own: a new file for each attempt, in the order they started.
            name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.v2"
            self._files[run] = EventFile(self.folder / run / name)
        return self._files[run]

    def step(self, step: int, name: str, value: float) -> None:
        """Keep a per-step value, written as ``batch_<name>`` at the next flush."""
        self._pending.append((f"batch_{name}", int(step), float(value), time.time()))

    def epoch(self, epoch: int, values: dict[str, float]) -> None:
        """Write an epoch's values (val_ names into the validation run) and flush everything."""
        self._write_pending()
        now = time.time()
        for name, value in values.items():
            run, tag = ((VALIDATION_RUN, f"epoch_{name.removeprefix('val_')}") if name.startswith("val_")
                        else (TRAIN_RUN, f"epoch_{name}"))
            self._file(run).write(scalar_event(tag, int(epoch), float(value), now))
        self.flush()

    def confusion_matrix(self, evaluation: dict[str, Any]) -> bool:
        """Write the evaluation report's confusion matrix as an image of the validation run; False without one."""
        confusion = evaluation.get("confusion_matrix")
        if not confusion or not confusion.get("matrix"):
            return False
        png = confusion_matrix_png(confusion["labels"], confusion["matrix"])
        if self._image_writer is None:
            self._image_writer = tf.summary.create_file_writer(str(self.folder / VALIDATION_RUN))
        with self._image_writer.as_default(), tf.device("/cpu:0"):
            tf.summary.image(CONFUSION_MATRIX_TAG, tf.expand_dims(tf.io.decode_png(png, channels=4), 0),
                             step=int(evaluation.get("epoch") or 0),
                             description="Rows: true label; columns: predicted label; cells: validation rows.")
        self._image_writer.flush()
        return True

    def flush(self) -> None:
        """Write the kept per-step values and flush every file."""
        self._write_pending()
        for file in self._files.values():
            file.flush()

    def close(self) -> None:
        """Flush and close the files."""
        self.flush()
        for file in self._files.values():
            file.close()
        self._files = {}
        if self._image_writer is not None:
            self._image_writer.close()
            self._image_writer = None

    def _write_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            file = self._file(TRAIN_RUN)
            for tag, step, value, wall_time in pending:
                file.write(scalar_event(tag, step, value, wall_time))


class SummaryReporter:
    """A TrainingReporter that passes every call on to ``inner`` and writes its metrics to ``summaries``.

    The train run gets each step's values (loss, learning_rate) and examples_per_second
    from the progress of that step, and each epoch's values; everything else only passes on.
    """

    def __init__(self, inner: TrainingReporter, summaries: TrainingSummaries) -> None:
        self.inner = inner
        self.summaries = summaries
        self._paced_step = 0  # the last global step whose examples/s was kept

    def progress(self, *, epoch: int, epochs: int, step: int, steps_per_epoch: int | None,
                 examples_per_second: float | None = None, eta_seconds: float | None = None,
                 step_seconds: float | None = None) -> None:
        """Pass the progress on; keep the step's examples/s."""
        self.inner.progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch,
                            examples_per_second=examples_per_second, eta_seconds=eta_seconds,
                            step_seconds=step_seconds)
        if examples_per_second is not None and steps_per_epoch:
            global_step = (epoch - 1) * steps_per_epoch + step
            # The epoch end repeats its last step's progress.
            if global_step != self._paced_step:
                self._paced_step = global_step
                self.summaries.step(global_step, "examples_per_second", examples_per_second)

    def step_metrics(self, *, epoch: int, step: int, values: dict[str, float]) -> None:
        """Pass the step's values on and keep them."""
        self.inner.step_metrics(epoch=epoch, step=step, values=values)
        for name, value in values.items():
            self.summaries.step(step, name, value)

    def epoch_metrics(self, *, epoch: int, values: dict[str, float]) -> None:
        """Pass the epoch's values on and write them, with the steps kept so far."""
        self.inner.epoch_metrics(epoch=epoch, values=values)
        self.summaries.epoch(epoch, values)

    def phase_seconds(self, phase: str, seconds: float) -> None:
        """Pass a phase's duration on."""
        self.inner.phase_seconds(phase, seconds)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        """Pass an event on."""
        self.inner.event(kind, message, data)

    def flush(self) -> object:
        """Flush the event files, then the inner reporter (a checkpoint follows: its steps must be on disk)."""
        self.summaries.flush()
        return self.inner.flush()


def confusion_matrix_png(labels: list[str], matrix: list[list[int]]) -> bytes:
    """A PNG of a confusion matrix: true labels down, predicted labels across, counts in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    classes = len(labels)
    side = min(max(4.0, 0.5 * classes + 2.5), 20.0)
    # A Figure with its own Agg canvas: no pyplot, so no global state and no display needed.
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(counts, cmap="Blues", vmin=0)
    axes.set_xticks(range(classes), [str(label) for label in labels], rotation=45, ha="right")
    axes.set_yticks(range(classes), [str(label) for label in labels])
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    if classes <= ANNOTATED_CLASSES:
        threshold = counts.max() / 2 if counts.size else 0
        for row in range(classes):
            for column in range(classes):
                axes.text(column, row, str(counts[row, column]), ha="center", va="center",
                          color="white" if counts[row, column] > threshold else "black")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def read_events(path: Path) -> list[Any]:
    """The events of one event file; a tail cut short (a writer killed mid-record) is left out."""
    # TensorBoard's own reader: it stops at a record cut short, and reads far faster than tf.data.
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    return [event_pb2.Event.FromString(record) for record in RawEventFileLoader(str(path)).Load()]


def publish_summaries(folder: Path, target: Path) -> list[str]:
    """Merge each run's event files under ``folder`` into one file per run under ``target``.

    Files are taken in the order their attempts wrote them; for every tag and step the latest
    value wins. Returns the written files' names relative to ``target``.
    """
    written: list[str] = []
    if not folder.is_dir():
        return written
    for run in sorted(child for child in folder.iterdir() if child.is_dir()):
        files = [read_events(path) for path in sorted(run.iterdir()) if "tfevents" in path.name]
        files.sort(key=lambda events: events[0].wall_time if events else 0.0)
        latest: dict[tuple[str, int], Any] = {}
        for events in files:
            for event in events:
                if len(event.summary.value) == 1:  # as every writer here writes them
                    latest[(event.summary.value[0].tag, event.step)] = event
                    continue
                for value in event.summary.value:
                    single = event_pb2.Event(wall_time=event.wall_time, step=event.step)
                    single.summary.value.add().CopyFrom(value)
                    latest[(value.tag, event.step)] = single
        if not latest:
            continue
        (target / run.name).mkdir(parents=True, exist_ok=True)
        merged = EventFile(target / run.name / PUBLISHED_FILE)
        # Sorted by step; a stable sort keeps each step's tags in the order they were written.
        for _, event in sorted(latest.items(), key=lambda item: item[0][1]):
            merged.write(event)
        merged.close()
        written.append(f"{run.name}/{PUBLISHED_FILE}")
    return written
