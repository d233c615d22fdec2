"""Loading a spec's train and validation data with `datasets`, and checking it before any model loads.

Sources: inline ``records``, a file or ``save_to_disk`` folder under the data root (``path``),
an uploaded dataset (``upload``) and a Hugging Face Hub dataset (``dataset``, which also loads
offline from a prepared cache). Every problem is a DataProblem naming the split, the column,
the offending value and its row; ``prepare_data`` raises the first as an invalid_data
TrainingFailure, ``inspect_data`` collects them all for the dry run. Rows are counted from 1
in the order of the source; a CSV header line is not a row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from service.jobs import FailureCode
from service.locations import (
    UPLOAD_CACHE,
    Locations,
    PathRefused,
    check_data_url,
    data_url_storage,
    in_system_folder,
    job_model_dir,
    passes_through_system_folder,
    upload_file,
)
from service.trainer.failures import TrainingFailure

FILE_LOADERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LABELS = "labels"
MAX_VALUE_CHARS = 200

Label = int | str


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a spec's data, and where it was found."""

    check: str  # what failed: missing_column, empty_text, unknown_label, single_class, ...
    message: str
    split: str | None = None
    column: str | None = None
    row: int | None = None
    value: Any = None
    code: str = FailureCode.INVALID_DATA.value

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; values JSON cannot hold are given as their repr."""
        value = self.value if isinstance(self.value, (str, int, float, bool, type(None))) else repr(self.value)
        if isinstance(value, float) and not math.isfinite(value):
            value = repr(value)
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            value = value[:MAX_VALUE_CHARS] + "..."
        return {"code": self.code, "check": self.check, "message": self.message, "split": self.split,
                "column": self.column, "row": self.row, "value": value}


class InvalidData(TrainingFailure):
    """An invalid_data failure carrying the DataProblem behind it."""

    def __init__(self, problem: DataProblem) -> None:
        super().__init__(FailureCode.INVALID_DATA, problem.message)
        self.problem = problem


def invalid(check: str, message: str, **where: Any) -> InvalidData:
    """An invalid_data failure for a new DataProblem."""
    return InvalidData(DataProblem(check, message, **where))


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


@dataclass
class DataInspection:
    """Everything the checks found: the loaded splits, their raw labels, problems, and the result if clean."""

    train: Dataset | None = None
    validation: Dataset | None = None
    train_labels: list[Label] | None = None
    validation_labels: list[Label] | None = None
    label_names: list[str] | None = None  # in id order, once the training labels could be mapped
    prepared: PreparedData | None = None
    problems: list[DataProblem] = field(default_factory=list)


def as_locations(data_root: Path | Locations) -> Locations:
    """Locations for a bare data root: the other folders come from this process's settings."""
    if isinstance(data_root, Locations):
        return data_root
    from service.config import Settings

    return Locations.from_settings(Settings.from_env(), data_root=data_root)


def prepare_data(spec: dict[str, Any], data_root: Path | Locations, cache_dir: Path | None = None) -> PreparedData:
    """Load, check and label-encode the train and validation data of a spec; raises the first problem."""
    inspection = inspect_data(spec, as_locations(data_root), cache_dir)
    if inspection.problems:
        raise InvalidData(inspection.problems[0])
    assert inspection.prepared is not None
    return inspection.prepared


def inspect_data(spec: dict[str, Any], locations: Locations, cache_dir: Path | None = None) -> DataInspection:
    """Run every data check of a spec, collecting each problem instead of stopping at the first."""
    data = spec["data"]
    text_columns = [data["text_column"]] + ([data["text_pair_column"]] if data["text_pair_column"] else [])
    label_column = data["label_column"]
    found = DataInspection()

    found.train = collect(found.problems, load_split, data["train"], "train", locations, cache_dir)
    if found.train is not None:
        found.train_labels, problems = inspect_split(found.train, "train", text_columns, label_column)
        found.problems += problems
    mapping = None
    if found.train_labels is not None:
        inherited = collect(found.problems, inherited_label2id, spec, locations)
        mapping = collect(found.problems, label_mapping, found.train_labels, spec["num_labels"], label_column,
                          inherited)
    train = validation = None
    if mapping is not None:
        found.label_names = mapping[1]
    if mapping is not None and found.train is not None and found.train_labels is not None:
        train = encode_labels(found.train, text_columns, found.train_labels, mapping[2], mapping[1])

    source = data["validation"]
    if "split_fraction" in source:
        if train is not None:
            parts = collect(found.problems, split_off_validation, train, source["split_fraction"],
                            spec["hyperparameters"]["seed"])
            if parts is not None:
                train, validation = parts
    else:
        found.validation = collect(found.problems, load_split, source, "validation", locations, cache_dir)
        if found.validation is not None:
            found.validation_labels, problems = inspect_split(found.validation, "validation", text_columns,
                                                              label_column)
            found.problems += problems
        if found.validation_labels is not None and found.train_labels is not None:
            unknown = unknown_label_problem(found.validation_labels, set(found.train_labels), label_column)
            found.problems += [unknown] if unknown else []
        if mapping is not None and found.validation is not None and found.validation_labels is not None \
                and not found.problems:
            validation = encode_labels(found.validation, text_columns, found.validation_labels, mapping[2],
                                       mapping[1])
    if not found.problems and train is not None and validation is not None and mapping is not None:
        found.prepared = PreparedData(train=train, validation=validation, num_labels=mapping[0],
                                      id2label={i: name for i, name in enumerate(mapping[1])}, label2id=mapping[2])
    return found


def collect(problems: list[DataProblem], check: Any, *args: Any) -> Any:
    """``check(*args)``, or None with its problem appended when it raises InvalidData."""
    try:
        return check(*args)
    except InvalidData as failure:
        problems.append(failure.problem)
        return None


# --- sources -------------------------------------------------------------------------------------

def load_split(source: dict[str, Any], split: str, locations: Locations, cache_dir: Path | None) -> Dataset:
    """The rows of one source: inline records, a file or folder under the data root, an object store URL,
    an upload, or a Hub dataset."""
    if "records" in source:
        return load_records(source["records"], split)
    if "url" in source:
        return load_url(source["url"], split, locations, cache_dir)
    if "upload" in source:
        return load_upload(source["upload"], split, locations)
    if "dataset" in source:
        return load_hub_dataset(source, split)
    path = resolve_data_path(source["path"], locations.data_root, split)
    if path.is_dir():
        return load_saved(path, f"{split} folder {source['path']!r}", split, source.get("split"))
    if "split" in source:
        raise invalid("unknown_split", f"{split} file {source['path']!r} is a single table; 'split' only picks a "
                                       "split of a save_to_disk folder", split=split, value=source["split"])
    return load_table(path, f"{split} file {source['path']!r}", split, cache_dir)


def load_table(path: Path, named: str, split: str, cache_dir: Path | None) -> Dataset:
    """A CSV, JSON, JSON Lines or Parquet file read by `datasets`; ``named`` is how messages call it."""
    loader = FILE_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise invalid("unsupported_file", f"{named} has the unsupported type {path.suffix!r}; "
                                          f"use one of {', '.join(sorted(FILE_LOADERS))}", split=split)
    if path.stat().st_size == 0:
        raise invalid("empty_file", f"{named} is empty (0 bytes)", split=split)
    try:
        return load_dataset(loader, data_files=str(path), split="train",
                            cache_dir=str(cache_dir) if cache_dir else None)
    except Exception as exc:  # pandas, pyarrow and datasets each raise their own types
        if caused_by_memory(exc):
            raise  # the process's memory limit, not a property of the file
        if "corresponds to no data" in str(exc):
            # datasets' way of saying the file parsed but held no rows (a CSV with only a header).
            raise invalid("no_rows", f"{named} has no rows", split=split) from exc
        raise invalid("unreadable_file", f"{named} could not be read as {loader}: "
                                         f"{without_path(root_cause(exc), path)}",
                      split=split) from exc


def load_saved(folder: Path, named: str, split: str, wanted: str | None) -> Dataset:
    """A folder written by ``save_to_disk``: one Dataset, or one split of a DatasetDict (default: ``split``)."""
    try:
        # In memory, so later transforms never write cache files into the caller's data folder.
        saved = load_from_disk(str(folder), keep_in_memory=True)
    except Exception as exc:  # FileNotFoundError, arrow and JSON errors
        raise invalid("unreadable_folder", f"{named} is not a folder written by save_to_disk: "
                                           f"{without_path(root_cause(exc), folder)}",
                      split=split) from exc
    if isinstance(saved, DatasetDict):
        name = wanted or split
        if name not in saved:
            raise invalid("unknown_split", f"{named} has no split {name!r}; its splits are "
                                           f"{', '.join(map(repr, saved))}", split=split, value=name)
        return saved[name]
    if wanted is not None:
        raise invalid("unknown_split", f"{named} holds a single dataset, not splits; drop 'split' {wanted!r}",
                      split=split, value=wanted)
    return saved


def load_upload(dataset_id: str, split: str, locations: Locations) -> Dataset:
    """An uploaded dataset's file, read with its table cache kept next to it."""
    named = f"{split} upload {dataset_id!r}"
    try:
        path = upload_file(locations.uploads_dir, dataset_id)
    except PathRefused as exc:
        raise invalid("upload_not_found", f"{named}: {exc}", split=split, value=dataset_id) from exc
    if path is None:
        raise invalid("upload_not_found", f"{named} does not exist (it was never uploaded, or was deleted)",
                      split=split, value=dataset_id)
    return load_table(path, named, split, path.parent / UPLOAD_CACHE)


def load_url(url: str, split: str, locations: Locations, cache_dir: Path | None) -> Dataset:
    """A file in an object store under an allowed prefix, copied to scratch space and read like a local file.

    The prefixes are checked again here, when the job reads its data, as paths are.
    """
    named = f"{split} URL {url!r}"
    try:
        url = check_data_url(url, locations.data_url_prefixes)
    except PathRefused as exc:
        raise invalid("url_refused", f"{named} {exc}", split=split, value=url) from exc
    suffix = PurePosixPath(url).suffix.lower()
    if suffix not in FILE_LOADERS:
        raise invalid("unsupported_file", f"{named} has the unsupported type {suffix!r}; "
                                          f"use one of {', '.join(sorted(FILE_LOADERS))}", split=split)
    folder = (cache_dir or Path(tempfile.gettempdir()) / "fitjobs-data-urls") / "urls"
    local = folder / hashlib.sha256(url.encode()).hexdigest()[:24] / f"data{suffix}"
    try:
        storage, key = data_url_storage(url)
        storage.get_file(key, local)
    except FileNotFoundError as exc:
        raise invalid("file_not_found", f"{named} does not exist", split=split, value=url) from exc
    except Exception as exc:  # s3fs, gcsfs and botocore raise their own types (credentials, network)
        raise invalid("unreadable_url", f"{named} could not be read: {root_cause(exc)}", split=split,
                      value=url) from exc
    return load_table(local, named, split, cache_dir)


def load_hub_dataset(source: dict[str, Any], split: str) -> Dataset:
    """A Hub dataset's split; offline (HF_DATASETS_OFFLINE) it comes from the local cache."""
    from datasets.exceptions import DatasetNotFoundError

    name, config = source["dataset"], source.get("config")
    wanted = source.get("split") or split
    named = f"{split} dataset {name!r}" + (f" (config {config!r})" if config else "")
    try:
        return load_dataset(name, config, split=wanted, revision=source.get("revision"))
    except (DatasetNotFoundError, FileNotFoundError, ConnectionError) as exc:
        raise invalid("dataset_not_found", f"{named} was found neither on the Hub nor in the local cache: "
                                           f"{root_cause(exc)}", split=split, value=name) from exc
    except Exception as exc:  # datasets raises ValueError for unknown splits and configs
        text = str(exc)
        check = ("unknown_split" if "Unknown split" in text
                 else "unknown_config" if "config" in text.lower() else "unreadable_dataset")
        raise invalid(check, f"{named}, split {wanted!r}: {root_cause(exc)}", split=split, value=name) from exc


def resolve_data_path(name: str, data_root: Path, split: str) -> Path:
    """The real path of a data file or folder; refuses one that resolves (symlinks followed) outside ``data_root``
    or into /proc, /sys or /dev. Runs when the job loads its data, so a link changed after submit is caught."""
    root = data_root.resolve()
    system = invalid("path_outside_root", f"{split} file {name!r} leads into /proc, /sys or /dev, which hold no "
                                          "data files", split=split, value=name)
    if passes_through_system_folder(str(root / name)):
        raise system
    try:
        path = (root / name).resolve()
    except OSError as exc:  # a link this process may not read
        raise invalid("path_outside_root", f"{split} file {name!r} cannot be resolved: a link on the way cannot be "
                                           "read", split=split, value=name) from exc
    if in_system_folder(path):
        raise system
    if not path.is_relative_to(root):
        raise invalid("path_outside_root", f"{split} file {name!r} resolves outside the data root",
                      split=split, value=name)
    if not path.exists():
        raise invalid("file_not_found", f"{split} file {name!r} does not exist under the data root",
                      split=split, value=name)
    return path


def load_records(records: list[dict[str, Any]], split: str) -> Dataset:
    """Inline rows as a Dataset; a column mixing value types is reported with its first odd row."""
    try:
        return Dataset.from_list(records)
    except Exception as exc:
        if caused_by_memory(exc):
            raise  # pyarrow raises ArrowInvalid or ArrowTypeError here
        raise invalid("mixed_types", f"{split} records: {describe_mixed_types(records) or root_cause(exc)}",
                      split=split) from exc


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


def caused_by_memory(exc: BaseException) -> bool:
    """Whether an exception is, or was raised while handling, a failed allocation."""
    current: BaseException | None = exc
    for _ in range(20):
        if current is None:
            return False
        if isinstance(current, MemoryError):
            return True
        current = current.__cause__ or current.__context__
    return False


def without_path(text: str, path: Path) -> str:
    """``text`` with the file's server-side path (as given and resolved) and its folder left out."""
    for spelling in sorted({str(path), os.path.realpath(path), str(path.parent), os.path.realpath(path.parent)},
                           key=len, reverse=True):
        text = text.replace(spelling, "<file>" if spelling.endswith(path.name) else "<folder>")
    return text


def root_cause(exc: BaseException) -> str:
    """The innermost chained cause as 'Type: message', which is what names the real problem."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- columns, texts, labels ----------------------------------------------------------------------

def check_split(dataset: Dataset, split: str, text_columns: list[str], label_column: str) -> list[Label]:
    """Check rows, columns and texts of a split; return its labels as ints or strings (raises the first problem)."""
    labels, problems = inspect_split(dataset, split, text_columns, label_column)
    if problems:
        raise InvalidData(problems[0])
    assert labels is not None
    return labels


def inspect_split(dataset: Dataset, split: str, text_columns: list[str],
                  label_column: str) -> tuple[list[Label] | None, list[DataProblem]]:
    """The split's labels (None when they cannot be used) and every problem of its rows and columns."""
    if len(dataset) == 0:
        return None, [DataProblem("no_rows", f"{split} data has no rows", split=split)]
    present = ", ".join(repr(name) for name in dataset.column_names)
    missing = [DataProblem("missing_column", f"{split} data has no column {column!r}; its columns are {present}",
                           split=split, column=column, value=column)
               for column in [*text_columns, label_column] if column not in dataset.column_names]
    if missing:
        return None, missing
    # Whole columns as lists at once: datasets 5's dataset[column] is a lazy Column read row by row.
    values = dataset.select_columns([*text_columns, label_column])[:]
    problems = [problem for column in text_columns
                if (problem := text_problem(values[column], split, column)) is not None]
    labels, label_problem = read_labels(values[label_column], split, label_column)
    if label_problem is not None:
        problems.append(label_problem)
    # Labels are usable even when texts are not: the label checks then run too, so all problems show at once.
    return (labels if label_problem is None else None), problems


def text_problem(values: list[Any], split: str, column: str) -> DataProblem | None:
    """The first value that is not a string with something besides whitespace, if any."""
    for row, value in enumerate(values, start=1):
        where = {"split": split, "column": column, "row": row, "value": value}
        if not isinstance(value, str):
            return DataProblem("not_text", f"{split} data, column {column!r}, row {row}: {value!r} is not text",
                               **where)
        if not value.strip():
            return DataProblem("empty_text", f"{split} data, column {column!r}, row {row}: the text {value!r} "
                                             "is empty", **where)
    return None


def read_labels(values: list[Any], split: str, column: str) -> tuple[list[Label], DataProblem | None]:
    """Labels as all ints or all strings; the first null, fraction, boolean or mixture is a problem."""
    labels: list[Label] = []
    for row, value in enumerate(values, start=1):
        where = f"{split} data, column {column!r}, row {row}"
        located = {"split": split, "column": column, "row": row, "value": value}
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return labels, DataProblem("null_label", f"{where}: the label is null", **located)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # pandas stores an int column with a missing cell as floats
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return labels, DataProblem("bad_label", f"{where}: the label {value!r} is neither a string nor "
                                                    "an integer", **located)
        if labels and type(value) is not type(labels[0]):
            return labels, DataProblem(
                "mixed_labels", f"{where}: the label {value!r} is {type(value).__name__} but row 1 holds "
                                f"{labels[0]!r} ({type(labels[0]).__name__}); labels must be all strings or all "
                                "integers", **located)
        labels.append(value)
    return labels, None


def check_labels(values: list[Any], split: str, column: str) -> list[Label]:
    """Labels as all ints or all strings; raises the first null, fraction, boolean or mixture."""
    labels, problem = read_labels(values, split, column)
    if problem is not None:
        raise InvalidData(problem)
    return labels


def inherited_label2id(spec: dict[str, Any], locations: Locations) -> dict[str, int] | None:
    """The label2id of the job a spec continues from (``"model": {"job": ...}``) unless it sets num_labels."""
    model = spec.get("model")
    if not isinstance(model, dict) or "job" not in model or spec.get("num_labels") is not None:
        return None
    config_file = job_model_dir(locations.artifacts_dir, model["job"]) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None  # the model loader reports a missing or broken model with its own code
    id2label = config.get("id2label") or {}
    return {str(name): int(index) for index, name in id2label.items()}


def sorted_labels(labels: Iterable[Label]) -> list[Label]:
    """The distinct labels in order; read_labels leaves them all ints or all strings."""
    distinct = set(labels)
    ints = sorted(label for label in distinct if isinstance(label, int))
    strings = sorted(label for label in distinct if isinstance(label, str))
    return [*ints, *strings]


def label_mapping(labels: list[Label], num_labels: int | None, column: str,
                  inherited: dict[str, int] | None = None) -> tuple[int, list[str], dict[str, int]]:
    """num_labels, label names in id order and label2id, from the training labels and the spec.

    With ``inherited`` (the labels of the model a job continues from) the mapping is that
    model's, so its classification head is kept; every training label must be one of them.
    """
    classes = sorted_labels(labels)
    if len(classes) < 2:
        raise invalid("single_class", f"train data, column {column!r}: every row has the label {classes[0]!r}; "
                                      "at least 2 classes are needed", split="train", column=column,
                      value=classes[0])
    if inherited is not None:
        return inherited_mapping(labels, inherited, column)
    if isinstance(classes[0], str):
        if num_labels is not None and num_labels != len(classes):
            raise invalid("num_labels_mismatch",
                          f"num_labels is {num_labels} but train data, column {column!r}, has {len(classes)} "
                          f"labels: {', '.join(map(repr, classes))}", split="train", column=column, value=num_labels)
        names = [str(label) for label in classes]
        return len(names), names, {name: index for index, name in enumerate(names)}
    count = num_labels if num_labels is not None else int(classes[-1]) + 1
    for row, label in enumerate(labels, start=1):
        if not 0 <= int(label) < count:
            bound = f"num_labels {num_labels}" if num_labels is not None else "the number of labels"
            raise invalid("label_out_of_range",
                          f"train data, column {column!r}, row {row}: the label {label!r} is outside "
                          f"0..{count - 1}; integer labels must be 0 <= label < {bound}",
                          split="train", column=column, row=row, value=label)
    names = [str(index) for index in range(count)]
    return count, names, {name: index for index, name in enumerate(names)}


def inherited_mapping(labels: list[Label], inherited: dict[str, int],
                      column: str) -> tuple[int, list[str], dict[str, int]]:
    """The continued model's mapping, when every training label is one of its labels with the same id."""
    names = [name for name, _ in sorted(inherited.items(), key=lambda item: item[1])]
    int_model = names == [str(index) for index in range(len(names))]
    listed = ", ".join(map(repr, names))
    for row, label in enumerate(labels, start=1):
        known = (0 <= label < len(names) and int_model) if isinstance(label, int) else label in inherited
        if not known:
            raise invalid("labels_differ",
                          f"train data, column {column!r}, row {row}: the label {label!r} is not one of the labels "
                          f"of the model this job continues from ({listed}); set num_labels to train a new "
                          "classification head", split="train", column=column, row=row, value=label)
    return len(names), names, dict(inherited)


def unknown_label_problem(labels: list[Label], known: set[Label], column: str) -> DataProblem | None:
    """The first validation label that does not occur in the training data, with how many rows have one."""
    unknown_rows = [(row, label) for row, label in enumerate(labels, start=1) if label not in known]
    if not unknown_rows:
        return None
    row, label = unknown_rows[0]
    listed = ", ".join(map(repr, sorted_labels(known)))
    more = (f"; {len(unknown_rows)} validation rows have labels the training data lacks"
            if len(unknown_rows) > 1 else "")
    return DataProblem("unknown_label", f"validation data, column {column!r}, row {row}: the label {label!r} does "
                                        f"not occur in the training data (its labels: {listed}){more}",
                       split="validation", column=column, row=row, value=label)


def check_known_labels(labels: list[Label], known: set[Label], column: str) -> None:
    """Every validation label occurs in the training data."""
    problem = unknown_label_problem(labels, known, column)
    if problem is not None:
        raise InvalidData(problem)


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
        raise invalid("split_too_small",
                      f"split_fraction {fraction} of {len(train)} training rows cannot make a validation "
                      f"split: {exc}; give more rows or a validation source", split="validation",
                      value=fraction) from exc
    return parts["train"], parts["test"]
