"""Reading a spec's data with `datasets` and checking it before any model is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, load_dataset

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure

LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LABELS = "labels"


def invalid(message: str) -> TrainingFailure:
    """An invalid_data failure."""
    return TrainingFailure(FailureCode.INVALID_DATA, message)


@dataclass(frozen=True)
class PreparedData:
    """Checked train and validation rows with integer `labels`, and the label mapping."""

    train: Dataset
    validation: Dataset
    num_labels: int
    id2label: dict[int, str]
    label2id: dict[str, int]


def resolve_data_path(relative: str, data_root: Path) -> Path:
    """The real path of a data file, refusing anything that resolves outside ``data_root``."""
    root = data_root.resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise invalid(f"data path {relative!r} leaves the data root")
    if not path.exists():
        raise invalid(f"data file {relative!r} does not exist under the data root")
    return path


def load_source(source: dict[str, Any], data_root: Path, split: str, cache_dir: Path) -> Dataset:
    """Rows of one data source: a file under the data root, or inline records."""
    if "records" in source:
        try:
            return Dataset.from_list(source["records"])
        except (ValueError, TypeError) as exc:  # pyarrow raises ArrowInvalid (a ValueError)
            raise invalid(f"{split} records cannot form a table (mixed value types?): {exc}") from exc
    path = resolve_data_path(source["path"], data_root)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise invalid(f"{split} file {source['path']!r}: unsupported type {path.suffix!r}; "
                      f"use one of {', '.join(sorted(LOADERS))}")
    try:
        return load_dataset(loader, data_files=str(path), split="train", cache_dir=str(cache_dir))
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; all mean "unreadable"
        raise invalid(f"{split} file {source['path']!r} could not be read as {loader}: "
                      f"{type(exc).__name__}: {exc}") from exc


def check_columns(dataset: Dataset, split: str, columns: list[str]) -> None:
    """Every named column exists and the split has rows."""
    for column in columns:
        if column not in dataset.column_names:
            raise invalid(f"{split} data has no column {column!r}; its columns are "
                          f"{', '.join(repr(c) for c in dataset.column_names)}")
    if len(dataset) == 0:
        raise invalid(f"{split} data has no rows")


def check_texts(dataset: Dataset, split: str, column: str) -> None:
    """Every text is a non-empty string."""
    for row, value in enumerate(dataset[column], start=1):
        if not isinstance(value, str):
            raise invalid(f"{split} row {row}: column {column!r} holds {value!r}, not text")
        if not value.strip():
            raise invalid(f"{split} row {row}: column {column!r} is empty")


def normalise_labels(values: list[Any], split: str, column: str) -> list[int | str]:
    """Labels as ints or strings; refuses nulls, mixtures and fractional numbers."""
    labels: list[int | str] = []
    for row, value in enumerate(values, start=1):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise invalid(f"{split} row {row}: column {column!r} has no label")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise invalid(f"{split} row {row}: label {value!r} in column {column!r} is not a string or integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise invalid(f"{split} row {row}: label {value!r} in column {column!r} is not an integer")
            value = int(value)
        labels.append(value)
    kinds = {type(label) for label in labels}
    if len(kinds) > 1:
        raise invalid(f"{split} column {column!r} mixes integer and string labels")
    return labels


def label_mapping(train_labels: list[int | str], num_labels: int | None,
                  column: str) -> tuple[int, dict[int, str], dict[str, int]]:
    """num_labels, id2label and label2id from the training labels (and the spec's num_labels)."""
    classes = sorted(set(train_labels))  # type: ignore[type-var]
    if len(classes) < 2:
        raise invalid(f"train column {column!r} has a single class {classes[0]!r}; at least 2 are needed")
    if isinstance(classes[0], str):
        if num_labels is not None and num_labels != len(classes):
            raise invalid(f"num_labels is {num_labels} but train column {column!r} has {len(classes)} "
                          f"classes: {', '.join(map(repr, classes))}")
        label2id = {label: index for index, label in enumerate(classes)}  # type: ignore[misc]
        return len(classes), {index: label for label, index in label2id.items()}, label2id
    if classes[0] < 0:  # type: ignore[operator]
        raise invalid(f"train column {column!r} has the negative label {classes[0]}")
    inferred = int(classes[-1]) + 1
    if num_labels is not None and inferred > num_labels:
        raise invalid(f"num_labels is {num_labels} but train column {column!r} has the label {classes[-1]}")
    count = num_labels or inferred
    id2label = {index: str(index) for index in range(count)}
    return count, id2label, {name: index for index, name in id2label.items()}


def stratified_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices for (train, validation): ``fraction`` of each class, seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    validation: list[int] = []
    for label in sorted(by_class):
        indices = rng.permutation(by_class[label]).tolist()
        take = int(round(len(indices) * fraction))
        if len(indices) >= 2:
            take = min(max(take, 1), len(indices) - 1)
        else:
            take = 0
        validation.extend(indices[:take])
    held_out = set(validation)
    return [i for i in range(len(labels)) if i not in held_out], sorted(validation)


def with_label_ids(dataset: Dataset, text_columns: list[str], ids: list[int]) -> Dataset:
    """Only the text columns, plus the integer `labels` column."""
    return dataset.select_columns(text_columns).add_column(LABELS, ids)


def prepare_data(spec: dict[str, Any], data_root: Path, cache_dir: Path) -> PreparedData:
    """Load, check and label-encode the train and validation data of a spec."""
    data = spec["data"]
    text, pair, label = data["text_column"], data["text_pair_column"], data["label_column"]
    text_columns = [text] + ([pair] if pair else [])
    train = load_source(data["train"], data_root, "train", cache_dir)
    check_columns(train, "train", text_columns + [label])
    train_labels = normalise_labels(train[label], "train", label)
    num_labels, id2label, label2id = label_mapping(train_labels, spec.get("num_labels"), label)

    def encode(labels: list[int | str]) -> list[int]:
        return [label2id[v] if isinstance(v, str) else int(v) for v in labels]

    validation_source = data["validation"]
    if "split_fraction" in validation_source:
        train_ids = encode(train_labels)
        keep, held_out = stratified_split(train_ids, validation_source["split_fraction"],
                                          spec["hyperparameters"]["seed"])
        if not held_out:
            raise invalid(f"split_fraction {validation_source['split_fraction']} of {len(train)} training "
                          "rows leaves no validation rows; give more rows or a validation source")
        full = with_label_ids(train, text_columns, train_ids)
        train_set, validation_set = full.select(keep), full.select(held_out)
    else:
        validation = load_source(validation_source, data_root, "validation", cache_dir)
        check_columns(validation, "validation", text_columns + [label])
        validation_labels = normalise_labels(validation[label], "validation", label)
        string_labels = isinstance(train_labels[0], str)
        for row, value in enumerate(validation_labels, start=1):
            known = (value in label2id) if string_labels else (
                isinstance(value, int) and 0 <= value < num_labels)
            if not known:
                raise invalid(f"validation row {row}: label {value!r} in column {label!r} does not occur "
                              f"in the training data (known: {', '.join(map(repr, sorted(label2id)))})")
        train_set = with_label_ids(train, text_columns, encode(train_labels))
        validation_set = with_label_ids(validation, text_columns, encode(validation_labels))
    for split_name, dataset in (("train", train_set), ("validation", validation_set)):
        for column in text_columns:
            check_texts(dataset, split_name, column)
    return PreparedData(train=train_set, validation=validation_set, num_labels=num_labels,
                        id2label=id2label, label2id=label2id)
