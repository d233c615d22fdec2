"""Batch predictions: a prediction job runs a succeeded job's model over a data set, streaming.

The rows are read in chunks of ``CHUNK_ROWS`` from the data source (files are memory-mapped
Arrow tables, so a large set never sits in memory whole), tokenized with the model's
tokenizer, grouped by length into padded batches as training groups its validation batches
(service.trainer.batching), and predicted. Each chunk's rows are appended to
``predictions.jsonl`` in row order, one JSON object a row::

    {"row": 0, "label": "positive", "probability": 0.97, "probabilities": {"negative": 0.03, "positive": 0.97}}

After every chunk the file is flushed to disk and a state file records how many rows and bytes
are done. A later attempt of the job (after a crash, a kill, a drain) cuts the file back to
that size and goes on from the next row, so no row is written twice and none is lost; where
the file is gone (the attempt runs on another node) it starts again from row 0. Both live in
the job's checkpoint folder, which every attempt shares. The finished file is published as
the job's artifact ``predictions.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from service.locations import Locations
from service.storage import Storage
from service.trainer.batching import BucketedBatches, TokenColumns
from service.trainer.data import DataProblem, InvalidData, load_split, text_problem
from service.trainer.reporter import TrainingReporter
from service.trainer.stop import DrainRequested, StopSignal

log = logging.getLogger(__name__)

OUTPUT = "predictions.jsonl"
STATE = "predictions.state.json"
SPLIT = "predict"
# Rows read, tokenized and written at a time: the unit of progress and of resuming.
CHUNK_ROWS = 2048


@dataclass(frozen=True)
class Done:
    """How far earlier attempts came: rows written and the size of the file that holds them."""

    rows: int = 0
    size: int = 0


def read_done(folder: Path) -> Done:
    """The state an earlier attempt left, if its output file still holds what the state counts."""
    try:
        state = json.loads((folder / STATE).read_text())
        done = Done(rows=int(state["rows"]), size=int(state["bytes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Done()
    output = folder / OUTPUT
    if not output.is_file() or output.stat().st_size < done.size:
        return Done()
    return done


def write_done(folder: Path, done: Done) -> None:
    """Record ``done`` atomically (a new file renamed over the old), after the rows it counts are on disk."""
    temporary = folder / f".{STATE}.tmp"
    with open(temporary, "w") as handle:
        json.dump({"rows": done.rows, "bytes": done.size}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, folder / STATE)


def peak_rss_bytes() -> int:
    """The most resident memory this process has held (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Predictor:
    """A job's model and tokenizer, predicting padded batches with one traced function."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, pad_to_multiple: int) -> None:
        import tensorflow as tf

        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_to_multiple = pad_to_multiple
        self.labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
        self.inputs = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                       if name in tokenizer.model_input_names]
        signature = {name: tf.TensorSpec(shape=(None, None), dtype=tf.int32) for name in self.inputs}

        @tf.function(input_signature=[signature])
        def probabilities(features: dict[str, Any]) -> Any:
            logits = model(features, training=False).logits
            return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

        self._probabilities = probabilities

    def predict(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> np.ndarray:
        """Class probabilities (float32, rows x labels) of the texts, in their order."""
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        values = {name: np.fromiter((token for row in encoded[name] for token in row), dtype=np.int32,
                                    count=int(offsets[-1])) for name in self.inputs}
        columns = TokenColumns(values=values, offsets=offsets, labels=np.zeros(len(texts), dtype=np.int32))
        pad_values = {"input_ids": int(self.tokenizer.pad_token_id or 0)}
        # No seed: the rows are sorted by length, for the least padding (as validation batches are).
        batches = BucketedBatches(columns, batch_size, self.max_length, pad_values, seed=None,
                                  multiple=self.pad_to_multiple)
        result = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for batch in batches.plan(0):
            features, _ = batches.arrays(batch)
            result[batch.rows] = self._probabilities({name: features[name] for name in self.inputs}).numpy()
        return result

    def lines(self, first_row: int, probabilities: np.ndarray) -> bytes:
        """The JSON lines of consecutive rows from ``first_row``."""
        out = []
        for offset, row in enumerate(probabilities):
            best = int(row.argmax())
            out.append(json.dumps({"row": first_row + offset, "label": self.labels[best],
                                   "probability": round(float(row[best]), 6),
                                   "probabilities": {name: round(float(value), 6)
                                                     for name, value in zip(self.labels, row, strict=True)}},
                                  ensure_ascii=False))
        return ("\n".join(out) + "\n").encode()


def chunk_texts(dataset: Any, start: int, stop: int, column: str, pair_column: str | None) -> tuple[list[str],
                                                                                                  list[str] | None]:
    """The texts (and text pairs) of rows [start, stop); a row that is no text fails the job (invalid_data)."""
    rows = dataset.select_columns([column] + ([pair_column] if pair_column else []))[start:stop]
    for name in [column] + ([pair_column] if pair_column else []):
        problem = text_problem(rows[name], SPLIT, name)
        if problem is not None:
            # text_problem counts rows from 1 within the chunk; the message names the row in the data.
            row = start + int(problem.row or 1)
            raise InvalidData(DataProblem(problem.check, f"prediction data, column {name!r}, row {row}: "
                                                         f"{problem.value!r} is not a non-empty text",
                                          split=SPLIT, column=name, row=row, value=problem.value))
    return rows[column], rows[pair_column] if pair_column else None


def check_columns(dataset: Any, column: str, pair_column: str | None) -> None:
    """The data has rows and the spec's text columns (invalid_data otherwise)."""
    if len(dataset) == 0:
        raise InvalidData(DataProblem("no_rows", "prediction data has no rows", split=SPLIT))
    present = ", ".join(repr(name) for name in dataset.column_names)
    for name in [column] + ([pair_column] if pair_column else []):
        if name not in dataset.column_names:
            raise InvalidData(DataProblem("missing_column", f"prediction data has no column {name!r}; its "
                                                            f"columns are {present}", split=SPLIT, column=name,
                                          value=name))


def load_predictor(spec: dict[str, Any], locations: Locations) -> Predictor:
    """The model and tokenizer of the job the spec names, in float32, padded as the device likes."""
    from service.trainer.modeling import load_classifier, load_model_config, load_tokenizer, spec_model_source
    from service.trainer.precision import ComputePlan, apply_policy, choose_compute, detect_device

    plan = choose_compute("float32", False, detect_device())
    apply_policy(ComputePlan("float32", False, plan.device, plan.reason))
    source = spec_model_source({"job": spec["job"]}, locations)
    config = load_model_config(source)
    id2label = {int(index): str(name) for index, name in config.id2label.items()}
    model = load_classifier(source, config.num_labels, id2label, {name: index for index, name in id2label.items()})
    return Predictor(model, load_tokenizer(source), int(spec["max_length"]), plan.pad_to_multiple)


def run_predictions(spec: dict[str, Any], *, locations: Locations, checkpoint_dir: Path, work_dir: Path,
                    storage: Storage, job_id: str, reporter: TrainingReporter, stop: StopSignal | None = None,
                    timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Predict every row of the spec's data with its job's model and publish ``predictions.jsonl``."""
    from service.artifacts import publish_artifacts
    from service.trainer.fit import PhaseClock

    phases = PhaseClock(reporter, timings)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    column, pair_column = spec["text_column"], spec.get("text_pair_column")
    with phases.measure("data"):
        dataset = load_split(spec["data"], SPLIT, locations, checkpoint_dir / "datasets")
        check_columns(dataset, column, pair_column)
    total = len(dataset)
    reporter.event("data_loaded", f"{total} rows to predict.", {"rows": total})
    with phases.measure("model_load"):
        predictor = load_predictor(spec, locations)
    reporter.event("model_loaded", f"Loaded the model of job {spec['job']} ({len(predictor.labels)} labels).",
                   {"job": spec["job"], "labels": predictor.labels})
    done = read_done(checkpoint_dir)
    resumed_from = done.rows
    output = checkpoint_dir / OUTPUT
    if done.rows:
        reporter.event("predictions_resumed", f"Resuming after row {done.rows} of {total}, which an earlier "
                                              "attempt wrote.", {"rows": done.rows})
    chunks = -(-total // CHUNK_ROWS)
    started = time.monotonic()
    rows_now = 0
    if stop is not None:
        stop.in_fit = True  # SIGTERM from here on stops after the current chunk
    with open(output, "r+b" if done.size else "wb") as handle:
        handle.truncate(done.size)
        handle.seek(done.size)
        for start in range(done.rows, total, CHUNK_ROWS):
            if stop is not None and stop.requested:
                raise DrainRequested(f"stopped on SIGTERM after {start} of {total} rows")
            end = min(start + CHUNK_ROWS, total)
            texts, pairs = chunk_texts(dataset, start, end, column, pair_column)
            done = write_chunk(handle, checkpoint_dir, predictor.lines(start, predictor.predict(
                texts, pairs, spec["batch_size"])), end)
            rows_now += end - start
            elapsed = time.monotonic() - started
            speed = rows_now / elapsed if elapsed > 0 else None
            reporter.progress(epoch=1, epochs=1, step=-(-end // CHUNK_ROWS), steps_per_epoch=chunks,
                              examples_per_second=speed, eta_seconds=(total - end) / speed if speed else None,
                              step_seconds=elapsed / max(1, -(-rows_now // CHUNK_ROWS)))
    phases.record("predict", time.monotonic() - started)
    if stop is not None:
        stop.in_fit = False
    with phases.measure("publish"):
        staging = work_dir / "predictions-staging"
        staging.mkdir(parents=True, exist_ok=True)
        os.replace(output, staging / OUTPUT)
        publish_artifacts(storage, staging, job_id)
        (checkpoint_dir / STATE).unlink(missing_ok=True)
    result = {"rows": total, "output": OUTPUT, "model_job": spec["job"], "labels": predictor.labels,
              "examples_per_second": round(rows_now / max(phases.seconds["predict"], 1e-9), 2),
              "resumed_from_row": resumed_from, "peak_rss_bytes": peak_rss_bytes(), "phases": phases.seconds}
    reporter.event("predictions_published", f"{total} predictions published as {OUTPUT}.",
                   {"rows": total, "artifact": OUTPUT})
    return result


def write_chunk(handle: BinaryIO, folder: Path, lines: bytes, rows: int) -> Done:
    """Append a chunk's lines, put them on disk, then record them as done."""
    handle.write(lines)
    handle.flush()
    os.fsync(handle.fileno())
    done = Done(rows=rows, size=handle.tell())
    write_done(folder, done)
    return done
