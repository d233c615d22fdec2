"""Loading a spec's train and validation data with `datasets`, and checking it before any model loads.

Every problem is a TrainingFailure(invalid_data) whose message names the split, the column,
the offending value and its row. Rows are counted from 1 in the order of the source; a CSV
header line is not a row.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, load_dataset

from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure

FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LABELS = "labels"

Label = int | str


@dataclass(frozen=True)
class PreparedData:
    """Checked train and validation rows (text columns plus an int `labels` column) and the label mapping."""

    train: Dataset
    validation: Dataset
    num_labels: int
    id2label: dict[int, str]
    label2id: dict[str, int]

    @property
    def train_rows(self) -> int:
        """Number of training rows."""
        return len(self.train)

    @property
    def validation_rows(self) -> int:
        """Number of validation rows."""
        return len(self.validation)

    @property
    def label_names(self) -> list[str]:
        """Label names in id order."""
        return [self.id2label[index] for index in range(self.num_labels)]


def invalid(message: str) -> TrainingFailure:
    """An invalid_data failure with ``message``."""
    return TrainingFailure(FailureCode.INVALID_DATA, message)


def prepare_data(spec: dict[str, Any], data_root: Path, cache_dir: Path | None = None) -> PreparedData:
    """Load, check and label-encode the train and validation data of a spec."""
    data = spec["data"]
    text_columns = [data["text_column"]] + ([data["text_pair_column"]] if data["text_pair_column"] else [])
    label_column = data["label_column"]

    train = load_split(data["train"], "train", data_root, cache_dir)
    train_labels = check_split(train, "train", text_columns, label_column)
    num_labels, id2label, label2id = label_mapping(train_labels, spec["num_labels"], label_column)
    names = [id2label[index] for index in range(num_labels)]
    train = encode_labels(train, text_columns, train_labels, label2id, names)

    source = data["validation"]
    if "split_fraction" in source:
        train, validation = split_off_validation(train, source["split_fraction"], spec["hyperparameters"]["seed"])
    else:
        validation = load_split(source, "validation", data_root, cache_dir)
        validation_labels = check_split(validation, "validation", text_columns, label_column)
        check_known_labels(validation_labels, set(train_labels), label_column)
        validation = encode_labels(validation, text_columns, validation_labels, label2id, names)
    return PreparedData(train=train, validation=validation, num_labels=num_labels,
                        id2label=id2label, label2id=label2id)


def load_split(source: dict[str, Any], split: str, data_root: Path, cache_dir: Path | None) -> Dataset:
    """The rows of one source: a file under ``data_root`` or inline ``records``."""
    if "records" in source:
        return load_records(source["records"], split)
    path = resolve_data_path(source["path"], data_root, split)
    loader = FILE_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise invalid(f"{split} file {source['path']!r} has the unsupported type {path.suffix!r}; "
                      f"use one of {', '.join(sorted(FILE_LOADERS))}")
    if path.stat().st_size == 0:
        raise invalid(f"{split} file {source['path']!r} is empty (0 bytes)")
    try:
        return load_dataset(loader, data_files=str(path), split="train",
                            cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # noqa: BLE001 - pandas, pyarrow and datasets each raise their own types
        if "corresponds to no data" in str(exc):
            # datasets' way of saying the file parsed but held no rows (a CSV with only a header).
            raise invalid(f"{split} file {source['path']!r} has no rows") from exc
        raise invalid(f"{split} file {source['path']!r} could not be read as {loader}: {root_cause(exc)}") from exc


def resolve_data_path(name: str, data_root: Path, split: str) -> Path:
    """The real path of a data file, refusing anything that resolves (symlinks included) outside ``data_root``."""
    root = data_root.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise invalid(f"{split} file {name!r} resolves outside the data root")
    if not path.is_file():
        raise invalid(f"{split} file {name!r} does not exist under the data root")
    return path


def load_records(records: list[dict[str, Any]], split: str) -> Dataset:
    """Inline rows as a Dataset; a column mixing value types is reported with its first odd row."""
    try:
        return Dataset.from_list(records)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid or ArrowTypeError here
        raise invalid(f"{split} records: {describe_mixed_types(records) or root_cause(exc)}") from exc


def describe_mixed_types(records: list[dict[str, Any]]) -> str | None:
    """Where a column first holds a value of another type than its earlier rows, if anywhere."""
    first_seen: dict[str, tuple[type, int]] = {}
    for row, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            return f"row {row} is {type(record).__name__}, not an object"
        for column, value in record.items():
            if value is None:
                continue
            seen = first_seen.setdefault(column, (type(value), row))
            if seen[0] is not type(value):
                return (f"column {column!r}, row {row}: {value!r} is {type(value).__name__} "
                        f"but row {seen[1]} holds {seen[0].__name__}; a column must hold one type")
    return None


def root_cause(exc: BaseException) -> str:
    """The innermost chained cause as 'Type: message', which is what names the real problem."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_split(dataset: Dataset, split: str, text_columns: list[str], label_column: str) -> list[Label]:
    """Check rows, columns and texts of a split; return its labels as ints or strings."""
    if len(dataset) == 0:
        raise invalid(f"{split} data has no rows")
    for column in [*text_columns, label_column]:
        if column not in dataset.column_names:
            raise invalid(f"{split} data has no column {column!r}; its columns are "
                          f"{', '.join(repr(name) for name in dataset.column_names)}")
    # Whole columns as lists at once: datasets 5's dataset[column] is a lazy Column read row by row.
    values = dataset.select_columns([*text_columns, label_column])[:]
    for column in text_columns:
        check_texts(values[column], split, column)
    return check_labels(values[label_column], split, label_column)


def check_texts(values: list[Any], split: str, column: str) -> None:
    """Every value is a string with something besides whitespace."""
    for row, value in enumerate(values, start=1):
        if not isinstance(value, str):
            raise invalid(f"{split} data, column {column!r}, row {row}: {value!r} is not text")
        if not value.strip():
            raise invalid(f"{split} data, column {column!r}, row {row}: the text {value!r} is empty")


def check_labels(values: list[Any], split: str, column: str) -> list[Label]:
    """Labels as all ints or all strings; refuses nulls, fractions, booleans and mixtures."""
    labels: list[Label] = []
    for row, value in enumerate(values, start=1):
        where = f"{split} data, column {column!r}, row {row}"
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise invalid(f"{where}: the label is null")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # pandas stores an int column with a missing cell as floats
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise invalid(f"{where}: the label {value!r} is neither a string nor an integer")
        if labels and type(value) is not type(labels[0]):
            raise invalid(f"{where}: the label {value!r} is {type(value).__name__} but row 1 holds "
                          f"{labels[0]!r} ({type(labels[0]).__name__}); labels must be all strings or all integers")
        labels.append(value)
    return labels


def label_mapping(labels: list[Label], num_labels: int | None,
                  column: str) -> tuple[int, dict[int, str], dict[str, int]]:
    """num_labels, id2label and label2id from the training labels and the spec's num_labels."""
    classes = sorted(set(labels))  # type: ignore[type-var] - check_labels made them one type
    if len(classes) < 2:
        raise invalid(f"train data, column {column!r}: every row has the label {classes[0]!r}; "
                      "at least 2 classes are needed")
    if isinstance(classes[0], str):
        if num_labels is not None and num_labels != len(classes):
            raise invalid(f"num_labels is {num_labels} but train data, column {column!r}, has {len(classes)} "
                          f"labels: {', '.join(map(repr, classes))}")
        label2id = {str(label): index for index, label in enumerate(classes)}
        return len(classes), {index: label for label, index in label2id.items()}, label2id
    count = num_labels if num_labels is not None else int(classes[-1]) + 1
    for row, label in enumerate(labels, start=1):
        if not 0 <= int(label) < count:
            bound = f"num_labels {num_labels}" if num_labels is not None else "the number of labels"
            raise invalid(f"train data, column {column!r}, row {row}: the label {label!r} is outside "
                          f"0..{count - 1}; integer labels must be 0 <= label < {bound}")
    id2label = {index: str(index) for index in range(count)}
    return count, id2label, {name: index for index, name in id2label.items()}


def check_known_labels(labels: list[Label], known: set[Label], column: str) -> None:
    """Every validation label occurs in the training data."""
    listed = ", ".join(map(repr, sorted(known)))  # type: ignore[type-var] - one type, see check_labels
    for row, label in enumerate(labels, start=1):
        if label not in known:
            raise invalid(f"validation data, column {column!r}, row {row}: the label {label!r} does not occur "
                          f"in the training data (its labels: {listed})")


def encode_labels(dataset: Dataset, text_columns: list[str], labels: list[Label], label2id: dict[str, int],
                  names: list[str]) -> Dataset:
    """Only the text columns plus `labels` as class ids (a ClassLabel carrying the label names)."""
    ids = [label2id[label] if isinstance(label, str) else label for label in labels]
    kept = dataset.select_columns(text_columns)
    return kept.add_column(LABELS, ids).cast_column(LABELS, ClassLabel(names=names))


def split_off_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out ``fraction`` of the rows, seeded; stratified by label when every class can be split."""
    counts = Counter(train.select_columns([LABELS])[:][LABELS]).values()
    held_out = math.ceil(fraction * len(train))  # how datasets sizes a float test_size
    # datasets' stratified split needs 2 rows per class and room for every class on both sides.
    stratify = min(counts) >= 2 and len(counts) <= held_out <= len(train) - len(counts)
    try:
        parts = train.train_test_split(test_size=fraction, seed=seed,
                                       stratify_by_column=LABELS if stratify else None)
    except ValueError as exc:
        raise invalid(f"split_fraction {fraction} of {len(train)} training rows cannot make a validation "
                      f"split: {exc}; give more rows or a validation source") from exc
    return parts["train"], parts["test"]
