"""The evaluation report on arrays with known counts, the acceptance check and class weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.trainer.evaluation import acceptance_check, class_weights, evaluation_report

THREE = {0: "negative", 1: "neutral", 2: "positive"}


def probabilities_for(predicted: list[int], confidence: list[float], k: int) -> np.ndarray:
    """Rows that give `confidence` to the predicted class and share the rest evenly."""
    rows = np.zeros((len(predicted), k))
    for i, (p, c) in enumerate(zip(predicted, confidence, strict=True)):
        rows[i, :] = (1.0 - c) / (k - 1)
        rows[i, p] = c
    return rows


def three_class_case() -> tuple[np.ndarray, np.ndarray, list[int]]:
    """12 rows: true counts 5/4/3, each row's prediction chosen by hand."""
    true = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    predicted = [0, 0, 0, 1, 2, 1, 1, 0, 1, 2, 2, 1]
    confidence = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5, 0.75, 0.9, 0.65, 0.8, 0.99]
    return np.array(true), probabilities_for(predicted, confidence, 3), predicted


def test_three_classes_counts_match_the_arrays() -> None:
    true, probs, predicted = three_class_case()
    texts = [f"text {i}" for i in range(len(true))]
    report = evaluation_report(true, probs, THREE, texts, epoch=2)

    assert report["rows"] == 12 and report["epoch"] == 2
    assert report["labels"] == ["negative", "neutral", "positive"]
    assert {name: c["support"] for name, c in report["per_class"].items()} == {
        THREE[i]: int(np.sum(true == i)) for i in range(3)}
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert report["confusion_matrix"]["labels"] == report["labels"]
    assert matrix.sum() == 12
    correct = [sum(1 for t, p in zip(true, predicted, strict=True) if t == p == i) for i in range(3)]
    assert matrix.diagonal().tolist() == correct
    assert matrix[0, 1] == sum(1 for t, p in zip(true, predicted, strict=True) if (t, p) == (0, 1))
    assert report["accuracy"] == pytest.approx(sum(correct) / 12, abs=1e-6)
    f1s = [c["f1"] for c in report["per_class"].values()]
    assert report["macro_f1"] == pytest.approx(sum(f1s) / 3, abs=1e-5)
    # Recall of class i is its diagonal cell over its true count.
    for i, name in THREE.items():
        assert report["per_class"][name]["recall"] == pytest.approx(correct[i] / np.sum(true == i), abs=1e-6)
    assert report["roc_auc"] is None and report["metrics"]["val_roc_auc"] is None
    expected_loss = -np.mean(np.log(probs[np.arange(12), true]))
    assert report["loss"] == pytest.approx(expected_loss, abs=1e-5)
    assert report["metrics"] == {"val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"],
                                 "val_weighted_f1": report["weighted_f1"], "val_roc_auc": None,
                                 "val_loss": report["loss"]}


def test_most_confident_errors_are_misclassified_rows_most_confident_first() -> None:
    true, probs, predicted = three_class_case()
    texts = [f"text {i}" for i in range(len(true))]
    pairs = [f"pair {i}" for i in range(len(true))]
    rows = [101 + 2 * i for i in range(len(true))]
    wrong = [i for i in range(len(true)) if predicted[i] != true[i]]

    report = evaluation_report(true, probs, THREE, texts, pair_texts=pairs, rows=rows, worst=3)
    errors = report["most_confident_errors"]
    assert len(errors) == 3 < len(wrong)
    assert [e["probability"] for e in errors] == sorted((e["probability"] for e in errors), reverse=True)
    top_three = sorted(wrong, key=lambda i: -probs[i].max())[:3]
    assert [e["row"] for e in errors] == [rows[i] for i in top_three]
    for error in errors:
        i = rows.index(error["row"])
        assert error["true_label"] == THREE[int(true[i])] != error["predicted_label"] == THREE[predicted[i]]
        assert error["text"] == texts[i] and error["text_pair"] == pairs[i]

    every = evaluation_report(true, probs, THREE, texts)["most_confident_errors"]
    assert sorted(e["row"] for e in every) == [i + 1 for i in wrong]
    assert all("text_pair" not in e for e in every)


def test_error_texts_are_cut_to_a_thousand_characters() -> None:
    report = evaluation_report(np.array([0, 1]), probabilities_for([1, 1], [0.9, 0.9], 2),
                               {0: "no", 1: "yes"}, ["x" * 5000, "short"])
    assert [len(e["text"]) for e in report["most_confident_errors"]] == [1000]


def test_binary_report_has_roc_auc_from_the_positive_probability() -> None:
    true = np.array([0, 0, 0, 0, 1, 1, 1])
    positive = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2])
    probs = np.stack([1 - positive, positive], axis=1)
    report = evaluation_report(true, probs, {0: "no", 1: "yes"}, ["t"] * 7)

    # AUC is the share of (positive, negative) pairs the score orders correctly.
    pairs = [(p, n) for p in positive[true == 1] for n in positive[true == 0]]
    assert report["roc_auc"] == pytest.approx(sum(p > n for p, n in pairs) / len(pairs), abs=1e-6)
    assert report["metrics"]["val_roc_auc"] == report["roc_auc"]
    assert report["per_class"]["yes"]["support"] == 3 and report["per_class"]["no"]["support"] == 4
    assert np.array(report["confusion_matrix"]["matrix"]).sum() == 7


def test_roc_auc_is_none_when_only_one_class_occurs() -> None:
    probs = probabilities_for([0, 1, 0], [0.9, 0.6, 0.7], 2)
    report = evaluation_report(np.array([0, 0, 0]), probs, {0: "no", 1: "yes"}, ["t"] * 3)
    assert report["roc_auc"] is None
    assert report["per_class"]["yes"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_report_is_plain_json_without_nan() -> None:
    true, probs, _ = three_class_case()
    report = evaluation_report(true, probs.astype(np.float32), THREE, [f"t{i}" for i in range(12)],
                               rows=np.arange(5, 17), epoch=np.int64(3))
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or type(value) in (int, float, str, bool)

    assert plain(report)


def test_majority_class_predictor_scores_high_accuracy_and_low_macro_f1() -> None:
    true = np.array([0] * 90 + [1] * 10)
    probs = np.tile([0.8, 0.2], (100, 1))
    report = evaluation_report(true, probs, {0: "ham", 1: "spam"}, ["t"] * 100)

    assert report["accuracy"] == pytest.approx(0.9)
    assert report["per_class"]["spam"]["recall"] == 0.0
    assert report["macro_f1"] < 0.5 < report["accuracy"]
    assert len(report["most_confident_errors"]) == 10
    assert all(e["true_label"] == "spam" for e in report["most_confident_errors"])


def test_acceptance_check_compares_with_the_minimum() -> None:
    true, probs, _ = three_class_case()
    report = evaluation_report(true, probs, THREE, ["t"] * 12)
    value = report["macro_f1"]

    assert acceptance_check(report, "macro_f1", value) == {"metric": "macro_f1", "min": value,
                                                           "value": value, "passed": True}
    assert acceptance_check(report, "macro_f1", value + 1e-3)["passed"] is False
    assert acceptance_check(report, "val_accuracy", 0.0)["value"] == report["accuracy"]
    assert acceptance_check(report, "roc_auc", 0.1) == {"metric": "roc_auc", "min": 0.1, "value": None,
                                                        "passed": False}
    with pytest.raises(KeyError, match="per_class"):
        acceptance_check(report, "per_class", 0.5)


def test_balanced_class_weights_are_rows_over_classes_times_count() -> None:
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = class_weights(labels, 3, "balanced", {"a": 0, "b": 1, "c": 2})
    assert weights is not None
    counts = {0: 6, 1: 3, 2: 1}
    assert weights == pytest.approx({i: 10 / (3 * c) for i, c in counts.items()})
    assert all(type(k) is int and type(v) is float for k, v in weights.items())


def test_a_class_absent_from_the_labels_gets_weight_one() -> None:
    weights = class_weights(np.array([0, 0, 0, 1]), 3, "balanced", {"a": 0, "b": 1, "c": 2})
    assert weights is not None and weights[2] == 1.0
    assert weights[0] == pytest.approx(4 / (2 * 3)) and weights[1] == pytest.approx(4 / (2 * 1))


def test_class_weights_by_name_map_to_ids() -> None:
    label2id = {"ham": 0, "spam": 1, "other": 2}
    assert class_weights(np.array([0, 1]), 3, {"spam": 4.0, "other": 0.5}, label2id) == {0: 1.0, 1: 4.0, 2: 0.5}
    assert class_weights(np.array([0, 1]), 3, "none", label2id) is None
    with pytest.raises(KeyError, match="eggs"):
        class_weights(np.array([0, 1]), 3, {"eggs": 2.0}, label2id)


def test_evaluation_does_not_import_tensorflow() -> None:
    probe = ("import sys, service.trainer.evaluation; "
             "print(sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


def test_weighted_and_macro_averages_follow_the_per_class_scores() -> None:
    true, probs, _ = three_class_case()
    report = evaluation_report(true, probs, THREE, ["t"] * 12)
    weighted = sum(c["f1"] * c["support"] for c in report["per_class"].values()) / 12
    assert report["weighted_f1"] == pytest.approx(weighted, abs=1e-5)
    for field in ("precision", "recall"):
        per_class = [c[field] for c in report["per_class"].values()]
        assert report[f"macro_{field}"] == pytest.approx(sum(per_class) / 3, abs=1e-5)
