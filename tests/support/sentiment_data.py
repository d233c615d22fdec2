"""Small, learnable sentiment rows made by the tests, and files holding them (no downloads)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["wonderful", "delightful", "brilliant", "moving", "charming", "superb", "great", "lovely"]
NEGATIVE = ["boring", "awful", "dull", "clumsy", "tedious", "painful", "terrible", "bland"]
FILLER = ["the", "film", "movie", "story", "acting", "was", "is", "really", "quite", "and", "plot", "cast",
          "music", "ending", "scenes", "very"]
# Every word the rows use; the tiny model's vocabulary is built from this list.
WORDS = sorted(set(POSITIVE + NEGATIVE + FILLER))


def sentiment_rows(n: int, seed: int, pair: bool = False) -> list[dict[str, Any]]:
    """``n`` rows alternating "positive" and "negative"; each text holds two cue words among filler."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for index in range(n):
        label = "positive" if index % 2 == 0 else "negative"
        cues = POSITIVE if label == "positive" else NEGATIVE
        # Varying filler makes texts of different lengths, so batches need padding.
        words = rng.sample(FILLER, rng.randint(2, 6)) + rng.sample(cues, 2)
        rng.shuffle(words)
        row: dict[str, Any] = {"text": " ".join(words), "label": label}
        if pair:
            row["context"] = " ".join(rng.sample(FILLER, 3))
        rows.append(row)
    return rows


def write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write ``rows`` as .csv, .json, .jsonl or .parquet, chosen by the suffix; any values, even bad ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        columns = list(dict.fromkeys(column for row in rows for column in row))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"unsupported table type {suffix!r}")
    return path


def write_sentiment_files(folder: Path, train_rows: int, validation_rows: int,
                          validation_name: str = "val.csv") -> Path:
    """A training and a validation table of sentiment rows in ``folder`` (seeds 3 and 4); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    write_table(sentiment_rows(train_rows, seed=3), folder / "train.csv")
    write_table(sentiment_rows(validation_rows, seed=4), folder / validation_name)
    return folder


def tiny_job_spec(model_dir: Path, folder: str, validation_name: str = "val.csv", **hyper: Any) -> dict[str, Any]:
    """A small job's spec: the tiny model on ``folder``'s sentiment files (under the data root), 2 epochs."""
    hyperparameters = {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, "seed": 1, **hyper}
    return {"model": str(model_dir),
            "data": {"train": {"path": f"{folder}/train.csv"}, "validation": {"path": f"{folder}/{validation_name}"}},
            "hyperparameters": hyperparameters}
