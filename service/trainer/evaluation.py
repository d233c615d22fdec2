"""The evaluation report of a fine-tuned classifier on its validation split, and class weights.

Accuracy alone hides a model that always predicts the majority class: on a 90/10 split it
scores 0.9 while never finding the minority. The report therefore carries macro F1, the
per-class precision and recall, the confusion matrix and the validation rows the model got
wrong most confidently. Everything here is numpy and scikit-learn on arrays the trainer
already holds, so it runs (and is tested) without TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, SupportsInt

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.utils.class_weight import compute_class_weight

ERROR_TEXT_CHARS = 1000
DECIMALS = 6


def evaluation_report(
    true_ids: np.ndarray,
    probabilities: np.ndarray,
    id2label: Mapping[int, str],
    texts: Sequence[str],
    pair_texts: Sequence[str] | None = None,
    rows: Iterable[SupportsInt] | None = None,
    worst: int = 20,
    epoch: SupportsInt | None = None,
) -> dict[str, Any]:
    """A JSON-ready report of how the predicted probabilities score against the true label ids."""
    true_ids = np.asarray(true_ids, dtype=np.int64).reshape(-1)
    # float32 softmax rows miss 1.0 by more than log_loss tolerates without a warning.
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    n, k = probabilities.shape
    if n == 0:
        raise ValueError("an evaluation report needs at least one validation row")
    if len(true_ids) != n or len(texts) != n or (pair_texts is not None and len(pair_texts) != n):
        raise ValueError(f"true_ids, probabilities and texts must all have {n} rows")
    row_numbers = list(range(1, n + 1)) if rows is None else [int(r) for r in rows]
    labels = [str(id2label[i]) for i in range(k)]
    class_ids = list(range(k))
    predicted_ids = probabilities.argmax(axis=1)

    precision, recall, f1, support = precision_recall_fscore_support(
        true_ids, predicted_ids, labels=class_ids, zero_division=0)
    macro_precision, macro_recall, macro_f1, _ = precision_recall_fscore_support(
        true_ids, predicted_ids, labels=class_ids, average="macro", zero_division=0)
    accuracy = accuracy_score(true_ids, predicted_ids)
    weighted_f1 = f1_score(true_ids, predicted_ids, labels=class_ids, average="weighted", zero_division=0)
    matrix = confusion_matrix(true_ids, predicted_ids, labels=class_ids)
    # ROC AUC ranks one score per row, so it exists only for two classes that both occur.
    roc_auc = (roc_auc_score(true_ids, probabilities[:, 1])
               if k == 2 and len(np.unique(true_ids)) == 2 else None)
    loss = log_loss(true_ids, probabilities, labels=class_ids)

    return {
        "rows": n,
        "labels": labels,
        "accuracy": _number(accuracy),
        "macro_f1": _number(macro_f1),
        "weighted_f1": _number(weighted_f1),
        "macro_precision": _number(macro_precision),
        "macro_recall": _number(macro_recall),
        "per_class": {
            name: {"precision": _number(precision[i]), "recall": _number(recall[i]),
                   "f1": _number(f1[i]), "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": {"labels": labels, "matrix": matrix.astype(int).tolist()},
        "roc_auc": _number(roc_auc),
        "loss": _number(loss),
        "most_confident_errors": _most_confident_errors(
            true_ids, predicted_ids, probabilities, labels, texts, pair_texts, row_numbers, worst),
        "metrics": {
            "val_accuracy": _number(accuracy),
            "val_macro_f1": _number(macro_f1),
            "val_weighted_f1": _number(weighted_f1),
            "val_roc_auc": _number(roc_auc),
            "val_loss": _number(loss),
        },
        "epoch": None if epoch is None else int(epoch),
    }


def acceptance_check(report: Mapping[str, Any], metric: str, minimum: float) -> dict[str, Any]:
    """Whether the report's `metric` (e.g. "macro_f1" or "val_macro_f1") reaches `minimum`."""
    name = metric.removeprefix("val_")
    if name not in report or not (report[name] is None or isinstance(report[name], (int, float))):
        raise KeyError(f"the evaluation report has no metric {metric!r}")
    value = report[name]
    return {"metric": metric, "min": minimum, "value": value,
            "passed": value is not None and value >= minimum}


def class_weights(
    labels: np.ndarray,
    num_labels: int,
    setting: str | Mapping[str, float],
    label2id: Mapping[str, int],
) -> dict[int, float] | None:
    """Keras `class_weight` for a "none", "balanced" or {label name: weight} setting."""
    weights = {i: 1.0 for i in range(num_labels)}
    if isinstance(setting, Mapping):
        for name, weight in setting.items():
            if name not in label2id:
                raise KeyError(name)
            weights[int(label2id[name])] = float(weight)
        return weights
    if setting == "none":
        return None
    if setting == "balanced":
        labels = np.asarray(labels).reshape(-1)
        # compute_class_weight refuses classes missing from labels; those keep weight 1.0.
        present = np.unique(labels)
        balanced = compute_class_weight("balanced", classes=present, y=labels)
        weights.update({int(i): float(w) for i, w in zip(present, balanced, strict=True)})
        return weights
    raise ValueError(f"class_weights must be 'none', 'balanced' or a mapping, not {setting!r}")


def _most_confident_errors(
    true_ids: np.ndarray,
    predicted_ids: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    texts: Sequence[str],
    pair_texts: Sequence[str] | None,
    row_numbers: list[int],
    worst: int,
) -> list[dict[str, Any]]:
    """The misclassified rows, most confident prediction first, at most `worst` of them."""
    confidence = probabilities[np.arange(len(predicted_ids)), predicted_ids]
    wrong = np.flatnonzero(predicted_ids != true_ids)
    # A stable sort keeps equally confident errors in validation order.
    ordered = wrong[np.argsort(-confidence[wrong], kind="stable")][:max(worst, 0)]
    errors = []
    for i in ordered:
        error: dict[str, Any] = {"row": row_numbers[i], "text": str(texts[i])[:ERROR_TEXT_CHARS]}
        if pair_texts is not None:
            error["text_pair"] = str(pair_texts[i])[:ERROR_TEXT_CHARS]
        error.update({"true_label": labels[true_ids[i]], "predicted_label": labels[predicted_ids[i]],
                      "probability": _number(confidence[i])})
        errors.append(error)
    return errors


def _number(value: Any) -> float | None:
    """A plain float rounded for the report, or None where the value is undefined."""
    if value is None:
        return None
    value = float(value)
    return round(value, DECIMALS) if math.isfinite(value) else None
