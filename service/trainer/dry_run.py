"""The dry run: every check a job runs before its model loads, plus statistics, without training.

Loads the data and the tokenizer and config (never the weights, never TensorFlow) and
reports rows and labels per split, token lengths, truncation, train/validation duplicates,
class imbalance and steps per epoch, with every problem found (which would fail the job) and
warnings (which would not). Checks the spec's settings that name labels (``class_weight``,
an ``acceptance`` metric) against the training labels. Also checks uploaded files. Runs in the check server process
(service.trainer.check_server), never in the API process.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset

from service.locations import UPLOAD_CACHE, Locations, ModelSource, PathRefused, model_source
from service.trainer.data import LABELS, DataInspection, InvalidData, inspect_data, load_table
from service.trainer.failures import TrainingFailure
from service.trainer.modeling import load_model_config, load_tokenizer
from service.trainer.upload_limits import check_after_reading, check_before_reading
from service.uploads import UploadLimits

# Token lengths are measured on at most this many rows per split (a seeded sample beyond it):
# enough for percentiles and the truncated share to within about a percent, in a few seconds.
MAX_MEASURED_ROWS = 10_000
# A split where more than this share of rows is cut at max_length gets a warning.
TRUNCATION_WARNING_SHARE = 0.10
TEXT_PROBLEMS = {"no_rows", "missing_column", "not_text", "empty_text"}
MAX_DUPLICATE_ROWS_LISTED = 10
# A training split whose smallest class has less than this share of the rows gets a warning.
IMBALANCE_WARNING_SHARE = 0.10
# Label names listed in a message before it is cut short.
MAX_LABELS_LISTED = 20


class TokenizerCache:
    """Tokenizers by model source, least recently used dropped first; a changed local folder is reloaded."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: OrderedDict[str, Any] = OrderedDict()

    def get(self, source: ModelSource) -> Any:
        """The source's tokenizer, loaded (with its config checked) on first use."""
        key = source.cache_key()
        folder = source.local_folder
        if folder is not None and folder.is_dir():
            key += f"#{max((entry.stat().st_mtime_ns for entry in folder.iterdir()), default=0)}"
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        tokenizer = load_tokenizer(source)
        self._entries[key] = tokenizer
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return tokenizer


def dry_run(spec: dict[str, Any], locations: Locations, cache_dir: Path | None,
            tokenizers: TokenizerCache) -> dict[str, Any]:
    """The report of a spec: statistics, problems (the job would fail) and warnings (it would not)."""
    started = time.monotonic()
    hyper = spec["hyperparameters"]
    inspection = inspect_data(spec, locations, cache_dir)
    problems = [problem.as_dict() for problem in inspection.problems]
    if inspection.label_names is not None:
        problems += label_setting_problems(spec, inspection.label_names)
    model, tokenizer, model_problem = check_model(spec["model"], locations, tokenizers)
    if model_problem is not None:
        problems.append(model_problem)

    texts = text_columns(spec)
    splits = {name: split_report(dataset, labels, texts, tokenizer, hyper["max_length"], hyper["seed"])
              for name, dataset, labels in report_splits(inspection)}
    warnings = truncation_warnings(splits, hyper["max_length"])
    if hyper.get("class_weight", "none") == "none" and "train" in splits:
        warnings += imbalance_warnings(splits["train"], spec["data"]["label_column"])
    duplicates = None
    train, validation = final_splits(inspection)
    if train is not None and validation is not None and texts_usable(inspection, "train") \
            and texts_usable(inspection, "validation"):
        duplicates = count_duplicates(train, validation, texts, from_source="split_fraction"
                                      not in spec["data"]["validation"])
        if duplicates["rows"]:
            warnings.append(duplicates_warning(duplicates))
    train_rows = splits.get("train", {}).get("rows")
    return {
        "valid": not problems,
        "num_labels": len(inspection.label_names) if inspection.label_names else None,
        "labels": inspection.label_names,
        "model": model,
        "splits": splits,
        "duplicates": duplicates,
        "steps_per_epoch": math.ceil(train_rows / hyper["batch_size"]) if train_rows else None,
        "epochs": hyper["epochs"],
        "problems": problems,
        "warnings": warnings,
        "seconds": round(time.monotonic() - started, 3),
    }


def listed_labels(names: list[str]) -> str:
    """Label names for a message, cut short after MAX_LABELS_LISTED."""
    shown = ", ".join(names[:MAX_LABELS_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LABELS_LISTED else "")


def setting_problem(check: str, message: str, value: Any) -> dict[str, Any]:
    """A problem with a spec setting that names labels the training data does not have."""
    return {"code": "invalid_data", "check": check, "message": message, "split": "train", "column": None,
            "row": None, "value": value}


def label_setting_problems(spec: dict[str, Any], label_names: list[str]) -> list[dict[str, Any]]:
    """Problems of `class_weight` keys that are not training labels, and of a val_roc_auc bar on > 2 labels."""
    problems = []
    class_weight = spec["hyperparameters"].get("class_weight")
    if isinstance(class_weight, dict):
        known = set(label_names)
        problems += [setting_problem("class_weight", f"Unknown label {label!r}; the training labels are: "
                                                     f"{listed_labels(label_names)}.", label)
                     for label in class_weight if label not in known]
    acceptance = spec.get("acceptance")
    if acceptance and acceptance["metric"] == "val_roc_auc" and len(label_names) > 2:
        problems.append(setting_problem(
            "acceptance", f"val_roc_auc is measured for two labels only; the training data has "
                          f"{len(label_names)}: {listed_labels(label_names)}. Use val_macro_f1, "
                          "val_weighted_f1 or val_accuracy.", acceptance["metric"]))
    return problems


def imbalance_warnings(train: dict[str, Any], label_column: str) -> list[dict[str, Any]]:
    """A warning when the training split's smallest class has under IMBALANCE_WARNING_SHARE of its rows."""
    counts: dict[str, int] | None = train.get("labels")
    if not counts or len(counts) < 2 or not train["rows"]:
        return []
    label, rows = min(counts.items(), key=lambda item: (item[1], item[0]))
    share = rows / train["rows"]
    if share >= IMBALANCE_WARNING_SHARE:
        return []
    return [{"code": "class_imbalance", "check": "class_imbalance", "split": "train", "column": label_column,
             "row": None, "value": round(share, 4),
             "message": f"train data: the smallest class, {label!r}, has {rows} of {train['rows']} rows "
                        f"({share:.1%}); the model may rarely predict it. Consider `class_weight: balanced` "
                        "and `selection_metric: val_macro_f1`"}]


def check_model(model: Any, locations: Locations,
                tokenizers: TokenizerCache) -> tuple[dict[str, Any] | None, Any, dict[str, Any] | None]:
    """What the spec's model is (config and tokenizer only), its tokenizer, and its problem if any."""
    try:
        source = model_source(model, locations, enforce_roots=True)
        config = load_model_config(source)
        tokenizer = tokenizers.get(source)
    except PathRefused as exc:
        return None, None, {"code": "model_not_found", "check": "model_path", "message": f"model: {exc}",
                            "split": None, "column": None, "row": None, "value": None}
    except TrainingFailure as failure:
        return None, None, {"code": failure.code.value, "check": failure.code.value, "message": failure.message,
                            "split": None, "column": None, "row": None, "value": None}
    described = {"source": source.kind, "name": source.job_id or source.ref, "model_type": config.model_type,
                 "tokenizer": type(tokenizer).__name__,
                 "max_position_embeddings": getattr(config, "max_position_embeddings", None)}
    return described, tokenizer, None


def text_columns(spec: dict[str, Any]) -> list[str]:
    """The spec's text column, and its pair column when it has one."""
    data = spec["data"]
    return [data["text_column"]] + ([data["text_pair_column"]] if data["text_pair_column"] else [])


def texts_usable(inspection: DataInspection, split: str) -> bool:
    """Whether a split's text columns exist and hold only text."""
    return not any(p.split == split and p.check in TEXT_PROBLEMS for p in inspection.problems)


def final_splits(inspection: DataInspection) -> tuple[Dataset | None, Dataset | None]:
    """The train and validation rows as training would see them, or as loaded when checks failed."""
    if inspection.prepared is not None:
        return inspection.prepared.train, inspection.prepared.validation
    return inspection.train, inspection.validation


def report_splits(inspection: DataInspection) -> list[tuple[str, Dataset, list[str] | None]]:
    """(name, rows, label names per row) of each split there is something to report on."""
    prepared = inspection.prepared
    if prepared is not None:
        return [(name, dataset, [prepared.id2label[i] for i in dataset.select_columns([LABELS])[:][LABELS]])
                for name, dataset in (("train", prepared.train), ("validation", prepared.validation))]
    return [(name, dataset, [str(label) for label in labels] if labels is not None else None)
            for name, dataset, labels in (("train", inspection.train, inspection.train_labels),
                                          ("validation", inspection.validation, inspection.validation_labels))
            if dataset is not None]


def split_report(dataset: Dataset, labels: list[str] | None, texts: list[str], tokenizer: Any,
                 max_length: int, seed: int) -> dict[str, Any]:
    """Rows, label distribution and token lengths of one split."""
    report: dict[str, Any] = {"rows": len(dataset),
                              "labels": dict(sorted(Counter(labels).items())) if labels is not None else None,
                              "tokens": None}
    if tokenizer is not None and all(column in dataset.column_names for column in texts):
        try:
            report["tokens"] = token_lengths(dataset, texts, tokenizer, max_length, seed)
        except (TypeError, ValueError):
            pass  # texts the tokenizer refuses are reported by the data checks
    return report


def token_lengths(dataset: Dataset, texts: list[str], tokenizer: Any, max_length: int, seed: int) -> dict[str, Any]:
    """Token-length percentiles (special tokens included, before truncation) and the share cut at max_length."""
    rows = len(dataset)
    if rows > MAX_MEASURED_ROWS:
        picked = np.random.default_rng(seed).choice(rows, MAX_MEASURED_ROWS, replace=False)
        dataset = dataset.select(sorted(picked.tolist()))
    columns = dataset.select_columns(texts)[:]
    pairs = columns[texts[1]] if len(texts) > 1 else None
    encoded = tokenizer(columns[texts[0]], pairs, add_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
    lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64)
    truncated = int((lengths > max_length).sum())
    p50, p90, p99 = (int(math.ceil(value)) for value in np.percentile(lengths, [50, 90, 99]))
    return {"p50": p50, "p90": p90, "p99": p99, "max": int(lengths.max()), "max_length": max_length,
            "truncated_rows": truncated, "truncated_share": round(truncated / len(lengths), 4),
            "measured_rows": len(lengths)}


def truncation_warnings(splits: dict[str, dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """A warning for each split where many rows are longer than max_length."""
    warnings = []
    for name, report in splits.items():
        tokens = report.get("tokens")
        if tokens and tokens["truncated_share"] > TRUNCATION_WARNING_SHARE:
            warnings.append({
                "code": "truncation", "split": name, "column": None, "row": None, "value": tokens["truncated_share"],
                "message": f"{name} data: {tokens['truncated_share']:.0%} of the rows measured "
                           f"({tokens['truncated_rows']} of {tokens['measured_rows']}) are longer than max_length "
                           f"{max_length} tokens and will be cut; the split's p90 length is {tokens['p90']} tokens"})
    return warnings


def row_hash(values: tuple[str, ...]) -> bytes:
    """A digest of a row's texts (the pair included), to find rows with the same text."""
    return hashlib.blake2b("\x1f".join(values).encode(), digest_size=16).digest()


def count_duplicates(train: Dataset, validation: Dataset, texts: list[str], *, from_source: bool) -> dict[str, Any]:
    """Validation rows whose text (and pair) also occurs in the training rows, found by hash."""
    train_columns = train.select_columns(texts)[:]
    seen = {row_hash(values) for values in zip(*(train_columns[c] for c in texts), strict=True)}
    validation_columns = validation.select_columns(texts)[:]
    rows = [index for index, values in enumerate(zip(*(validation_columns[c] for c in texts), strict=True), start=1)
            if row_hash(values) in seen]
    share = round(len(rows) / len(validation), 4) if len(validation) else 0.0
    # Row numbers only mean something for a validation source; a held-out split is shuffled.
    return {"rows": len(rows), "share": share,
            "first_rows": rows[:MAX_DUPLICATE_ROWS_LISTED] if from_source else []}


def duplicates_warning(duplicates: dict[str, Any]) -> dict[str, Any]:
    """The warning for validation rows that repeat training rows."""
    first = duplicates["first_rows"][0] if duplicates["first_rows"] else None
    where = f" (first at validation row {first})" if first else ""
    return {"code": "duplicates", "split": "validation", "column": None, "row": first, "value": duplicates["share"],
            "message": f"{duplicates['rows']} validation rows ({duplicates['share']:.1%}) have the same text as a "
                       f"training row{where}; validation metrics will overstate how well the model generalizes"}


def inspect_upload(path: Path, limits: UploadLimits | None = None) -> dict[str, Any]:
    """Rows, columns and column types of an uploaded file, read the way training reads it; or its problem.

    The file is held to ``limits`` (default: this process's settings) before its data is read
    and again once it is.
    """
    if limits is None:
        from service.config import Settings

        limits = UploadLimits.from_settings(Settings.from_env())
    try:
        check_before_reading(path, limits)
        table = load_table(path, "the uploaded file", "upload", path.parent / UPLOAD_CACHE)
        check_after_reading(table, limits)
    except InvalidData as failure:
        return {"problem": failure.problem.message}
    if len(table) == 0:
        return {"problem": "the uploaded file has no rows"}
    if len(table.column_names) < 2:
        return {"problem": f"the uploaded file has {len(table.column_names)} column "
                           f"({', '.join(map(repr, table.column_names))}); a training table needs at least a text "
                           "and a label column"}
    return {"rows": len(table), "columns": list(table.column_names),
            "features": {name: str(feature) for name, feature in table.features.items()}}
