"""Loading and checking a spec's data: every file type, every invalid_data check, labels and splits."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from service.jobs import FailureCode
from service.locations import Locations
from service.trainer.data import PreparedData, inspect_data, prepare_data
from service.trainer.failures import TrainingFailure
from tests.support.sentiment_data import sentiment_rows, write_table


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """The folder spec paths are resolved under."""
    root = tmp_path / "data"
    root.mkdir()
    return root


def make_spec(train: dict[str, Any], validation: dict[str, Any] | None = None, *, num_labels: int | None = None,
              pair: str | None = None, seed: int = 7) -> dict[str, Any]:
    """A spec as the API hands it over (all keys present), around the given data sources."""
    return {
        "model": "unused-by-these-tests",
        "num_labels": num_labels,
        "data": {"train": train, "validation": validation or {"split_fraction": 0.25},
                 "text_column": "text", "text_pair_column": pair, "label_column": "label"},
        "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32, "seed": seed},
    }


def prepare(spec: dict[str, Any], data_root: Path) -> PreparedData:
    """prepare_data with the datasets cache inside the test's temporary folder."""
    return prepare_data(spec, data_root, cache_dir=data_root.parent / "cache")


def invalid_data(spec: dict[str, Any], data_root: Path, *fragments: str) -> str:
    """The message of the invalid_data failure ``spec`` causes, checked to contain every fragment."""
    with pytest.raises(TrainingFailure) as caught:
        prepare(spec, data_root)
    assert caught.value.code is FailureCode.INVALID_DATA
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def records(*rows: dict[str, Any]) -> dict[str, Any]:
    """An inline-records source."""
    return {"records": list(rows)}


GOOD = sentiment_rows(12, seed=1)


# --- sources -----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_every_file_type_loads(data_root: Path, suffix: str) -> None:
    write_table(sentiment_rows(20, seed=1), data_root / f"train{suffix}")
    write_table(sentiment_rows(6, seed=2), data_root / "nested" / f"validation{suffix}")
    data = prepare(make_spec({"path": f"train{suffix}"}, {"path": f"nested/validation{suffix}"}), data_root)
    assert (data.train_rows, data.validation_rows) == (20, 6)
    assert data.label_names == ["negative", "positive"]
    assert data.train["text"] == [row["text"] for row in sentiment_rows(20, seed=1)]


def test_absolute_path_inside_the_data_root_loads(data_root: Path) -> None:
    path = write_table(GOOD, data_root / "train.jsonl")
    data = prepare(make_spec({"path": str(path)}), data_root)
    assert (data.train_rows, data.validation_rows) == (9, 3)


def test_inline_records_load(data_root: Path) -> None:
    data = prepare(make_spec(records(*GOOD), records(*sentiment_rows(4, seed=3))), data_root)
    assert (data.train_rows, data.validation_rows) == (12, 4)


def test_missing_file(data_root: Path) -> None:
    invalid_data(make_spec({"path": "nope.csv"}), data_root, "train", "'nope.csv'", "does not exist")


def test_missing_validation_file(data_root: Path) -> None:
    write_table(GOOD, data_root / "train.csv")
    invalid_data(make_spec({"path": "train.csv"}, {"path": "val.csv"}), data_root, "validation", "'val.csv'",
                 "does not exist")


def test_path_leaving_the_data_root_is_refused(data_root: Path) -> None:
    write_table(GOOD, data_root.parent / "outside.csv")
    invalid_data(make_spec({"path": "../outside.csv"}), data_root, "train", "'../outside.csv'", "outside the data root")
    invalid_data(make_spec({"path": str(data_root.parent / "outside.csv")}), data_root, "outside the data root")


def test_symlink_leaving_the_data_root_is_refused(data_root: Path) -> None:
    target = write_table(GOOD, data_root.parent / "secret" / "rows.csv")
    os.symlink(target, data_root / "link.csv")
    invalid_data(make_spec({"path": "link.csv"}), data_root, "'link.csv'", "outside the data root")


def test_symlink_inside_the_data_root_is_followed(data_root: Path) -> None:
    target = write_table(GOOD, data_root / "real" / "rows.csv")
    os.symlink(target, data_root / "link.csv")
    assert prepare(make_spec({"path": "link.csv"}), data_root).train_rows == 9


def test_unsupported_file_type(data_root: Path) -> None:
    (data_root / "train.txt").write_text("hello\n")
    invalid_data(make_spec({"path": "train.txt"}), data_root, "'.txt'", ".csv", ".jsonl", ".parquet")


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("broken.jsonl", '{"text": "fine", "label": 1}\n{"text": oops\n', "JSON parse error"),
    ("broken.parquet", "not a parquet file", "Parquet magic bytes"),
    ("broken.csv", 'text,label\n"never closed,1\n', "EOF inside string"),
])
def test_unreadable_file(data_root: Path, name: str, content: str, expected: str) -> None:
    (data_root / name).write_text(content)
    invalid_data(make_spec({"path": name}), data_root, "train", repr(name), "could not be read", expected)


def test_empty_file(data_root: Path) -> None:
    (data_root / "train.jsonl").write_text("")
    invalid_data(make_spec({"path": "train.jsonl"}), data_root, "train", "'train.jsonl'", "empty")


def test_csv_with_only_a_header_has_no_rows(data_root: Path) -> None:
    (data_root / "train.csv").write_text("text,label\n")
    invalid_data(make_spec({"path": "train.csv"}), data_root, "train", "'train.csv'", "no rows")


def test_empty_records(data_root: Path) -> None:
    invalid_data(make_spec(records()), data_root, "train data has no rows")
    invalid_data(make_spec(records(*GOOD), records()), data_root, "validation data has no rows")


# --- columns and texts -------------------------------------------------------------------------

@pytest.mark.parametrize("column", ["text", "label", "context"])
def test_missing_column_lists_the_columns_there_are(data_root: Path, column: str) -> None:
    rows = [{key: value for key, value in row.items() if key != column} for row in sentiment_rows(8, 1, pair=True)]
    write_table(rows, data_root / "train.csv")
    spec = make_spec({"path": "train.csv"}, pair="context")
    message = invalid_data(spec, data_root, "train", f"no column {column!r}")
    for present in {"text", "label", "context"} - {column}:
        assert repr(present) in message


def test_missing_column_in_validation(data_root: Path) -> None:
    spec = make_spec(records(*GOOD), records({"sentence": "great film", "label": "positive"}))
    invalid_data(spec, data_root, "validation", "no column 'text'", "'sentence'", "'label'")


@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_text(data_root: Path, empty: str) -> None:
    rows = [dict(row) for row in GOOD]
    rows[2]["text"] = empty
    invalid_data(make_spec(records(*rows)), data_root, "train", "'text'", "row 3", repr(empty), "empty")


def test_null_text(data_root: Path) -> None:
    rows = [dict(row) for row in GOOD]
    rows[4]["text"] = None
    invalid_data(make_spec(records(*rows)), data_root, "train", "'text'", "row 5", "None is not text")


def test_non_string_text_in_a_file(data_root: Path) -> None:
    write_table([{"text": 10 + index, "label": "positive" if index % 2 else "negative"} for index in range(6)],
                data_root / "train.csv")
    invalid_data(make_spec({"path": "train.csv"}), data_root, "train", "'text'", "row 1", "10 is not text")


def test_non_string_text_in_records(data_root: Path) -> None:
    rows = [dict(row) for row in GOOD]
    rows[1]["text"] = 42
    invalid_data(make_spec(records(*rows)), data_root, "train records", "'text'", "row 2", "42 is int")


def test_empty_text_in_the_pair_column_of_validation(data_root: Path) -> None:
    validation = sentiment_rows(4, seed=2, pair=True)
    validation[3]["context"] = " "
    spec = make_spec(records(*sentiment_rows(8, 1, pair=True)), records(*validation), pair="context")
    invalid_data(spec, data_root, "validation", "'context'", "row 4", "empty")


# --- labels ------------------------------------------------------------------------------------

def test_null_label_in_records(data_root: Path) -> None:
    rows = [dict(row) for row in GOOD]
    rows[3]["label"] = None
    invalid_data(make_spec(records(*rows)), data_root, "train", "'label'", "row 4", "null")


def test_missing_label_cell_in_a_csv(data_root: Path) -> None:
    (data_root / "train.csv").write_text("text,label\ngreat film,1\ndull film,\nlovely plot,0\n")
    invalid_data(make_spec({"path": "train.csv"}), data_root, "train", "'label'", "row 2", "null")


def test_mixed_int_and_string_labels_in_a_file(data_root: Path) -> None:
    write_table([{"text": "great film", "label": 1}, {"text": "dull film", "label": "negative"},
                 {"text": "lovely plot", "label": 0}], data_root / "train.jsonl")
    invalid_data(make_spec({"path": "train.jsonl"}), data_root, "train", "'label'", "row 2", "'negative'",
                 "all strings or all integers")


def test_mixed_int_and_string_labels_in_records(data_root: Path) -> None:
    spec = make_spec(records({"text": "great film", "label": 1}, {"text": "dull film", "label": "negative"}))
    invalid_data(spec, data_root, "train records", "'label'", "row 2", "'negative' is str", "row 1 holds int")


@pytest.mark.parametrize("label", [0.5, True, [1]])
def test_label_that_is_neither_string_nor_integer(data_root: Path, label: Any) -> None:
    rows = [{"text": "great film", "label": 1}, {"text": "dull film", "label": 0},
            {"text": "lovely plot", "label": label}]
    write_table(rows, data_root / "train.jsonl")
    invalid_data(make_spec({"path": "train.jsonl"}), data_root, "train", "'label'", "row 3", repr(label))


def test_validation_label_missing_from_training(data_root: Path) -> None:
    validation = records({"text": "great film", "label": "positive"}, {"text": "the film", "label": "neutral"})
    invalid_data(make_spec(records(*GOOD), validation), data_root, "validation", "'label'", "row 2", "'neutral'",
                 "'negative', 'positive'")


def test_validation_int_label_missing_from_training(data_root: Path) -> None:
    train = records(*({"text": row["text"], "label": index % 2} for index, row in enumerate(GOOD)))
    validation = records({"text": "great film", "label": 1}, {"text": "the film", "label": 2})
    invalid_data(make_spec(train, validation, num_labels=3), data_root, "validation", "row 2", "label 2")


def test_a_single_class_is_refused(data_root: Path) -> None:
    rows = [dict(row, label="positive") for row in GOOD]
    invalid_data(make_spec(records(*rows)), data_root, "train", "'label'", "'positive'", "at least 2 classes")


def test_num_labels_other_than_the_string_classes(data_root: Path) -> None:
    invalid_data(make_spec(records(*GOOD), num_labels=3), data_root, "num_labels is 3", "2 labels",
                 "'negative', 'positive'")


def test_int_label_not_below_num_labels(data_root: Path) -> None:
    rows = [{"text": row["text"], "label": index % 2} for index, row in enumerate(GOOD)]
    rows[5]["label"] = 3
    invalid_data(make_spec(records(*rows), num_labels=3), data_root, "train", "'label'", "row 6", "label 3",
                 "num_labels 3")


def test_negative_int_label(data_root: Path) -> None:
    rows = [{"text": row["text"], "label": index % 2} for index, row in enumerate(GOOD)]
    rows[0]["label"] = -1
    invalid_data(make_spec(records(*rows)), data_root, "train", "row 1", "label -1", "0 <= label")


def test_string_labels_map_to_ids_in_sorted_order(data_root: Path) -> None:
    rows = [{"text": f"film {word}", "label": word} for word in ["zebra", "apple", "mango"] * 4]
    data = prepare(make_spec(records(*rows), records(*rows[:3])), data_root)
    assert data.id2label == {0: "apple", 1: "mango", 2: "zebra"}
    assert data.label2id == {"apple": 0, "mango": 1, "zebra": 2}
    assert data.num_labels == 3
    assert [data.id2label[i] for i in data.train["labels"]] == [row["label"] for row in rows]
    assert data.validation["labels"] == [2, 0, 1]
    assert data.train.column_names == ["text", "labels"]


def test_int_labels_keep_their_values_and_infer_num_labels(data_root: Path) -> None:
    rows = [{"text": f"film {index}", "label": label} for index, label in enumerate([0, 2, 2, 0, 2, 0])]
    data = prepare(make_spec(records(*rows), records(*rows[:2])), data_root)
    assert data.num_labels == 3
    assert data.id2label == {0: "0", 1: "1", 2: "2"}
    assert data.label2id == {"0": 0, "1": 1, "2": 2}
    assert data.train["labels"] == [0, 2, 2, 0, 2, 0]


def test_int_labels_with_a_larger_num_labels(data_root: Path) -> None:
    rows = [{"text": f"film {index}", "label": index % 2} for index in range(6)]
    data = prepare(make_spec(records(*rows), records(*rows[:2]), num_labels=4), data_root)
    assert data.num_labels == 4
    assert data.id2label == {0: "0", 1: "1", 2: "2", 3: "3"}


def test_text_pairs_are_kept(data_root: Path) -> None:
    rows = sentiment_rows(8, 1, pair=True)
    data = prepare(make_spec(records(*rows), records(*rows[:2]), pair="context"), data_root)
    assert data.train.column_names == ["text", "context", "labels"]
    assert data.validation["context"] == [row["context"] for row in rows[:2]]


# --- split_fraction ----------------------------------------------------------------------------

def test_split_fraction_is_stratified(data_root: Path) -> None:
    rows = sentiment_rows(100, seed=1)
    rows += [{"text": f"the plot {word}", "label": "mixed"} for word in ["is", "was", "and", "very"] * 5]
    data = prepare(make_spec(records(*rows), {"split_fraction": 0.25}), data_root)
    assert (data.train_rows, data.validation_rows) == (90, 30)
    held_out = Counter(data.id2label[label] for label in data.validation["labels"])
    # 25% of 50, 50 and 20 rows: 12.5 rounds one way for one class and the other way for the other.
    assert held_out["mixed"] == 5
    assert sorted([held_out["negative"], held_out["positive"]]) == [12, 13]


def test_split_fraction_is_deterministic_for_a_seed(data_root: Path) -> None:
    rows = [{"text": f"text number {index}", "label": "positive" if index % 2 else "negative"} for index in range(60)]

    def validation_texts(seed: int) -> list[str]:
        texts = prepare(make_spec(records(*rows), {"split_fraction": 0.2}, seed=seed), data_root).validation["text"]
        return list(texts)

    assert validation_texts(3) == validation_texts(3)
    assert validation_texts(3) != validation_texts(4)
    train = list(prepare(make_spec(records(*rows), {"split_fraction": 0.2}, seed=3), data_root).train["text"])
    assert sorted(train + validation_texts(3)) == sorted(row["text"] for row in rows)


def test_split_fraction_without_stratifying_when_a_class_has_one_row(data_root: Path) -> None:
    rows = [{"text": f"text number {index}", "label": "common"} for index in range(9)]
    rows.append({"text": "the only rare one", "label": "rare"})
    data = prepare(make_spec(records(*rows), {"split_fraction": 0.3}), data_root)
    assert (data.train_rows, data.validation_rows) == (7, 3)
    assert data.num_labels == 2


def test_split_fraction_too_small_for_the_rows(data_root: Path) -> None:
    rows = [{"text": "great film", "label": "positive"}, {"text": "dull film", "label": "negative"}]
    invalid_data(make_spec(records(*rows), {"split_fraction": 0.9}), data_root, "split_fraction 0.9",
                 "2 training rows")


# --- uploads, save_to_disk folders, every problem at once, continuing from a job ---------------

def locations_of(data_root: Path) -> Locations:
    """Locations with uploads and artifacts beside the data root."""
    return Locations(data_root=data_root, uploads_dir=data_root.parent / "uploads",
                     artifacts_dir=data_root.parent / "artifacts", model_roots=(data_root.parent / "models",))


def test_an_upload_loads_from_its_folder_with_its_table_cache(data_root: Path) -> None:
    where = locations_of(data_root)
    dataset_id = "ds_" + "1" * 32
    write_table(sentiment_rows(20, seed=1), where.uploads_dir / dataset_id / "data.parquet")
    data = prepare_data(make_spec({"upload": dataset_id}), where)
    assert (data.train_rows, data.validation_rows) == (15, 5)
    assert (where.uploads_dir / dataset_id / "arrow-cache").is_dir()


def test_a_missing_upload(data_root: Path) -> None:
    with pytest.raises(TrainingFailure) as caught:
        prepare_data(make_spec({"upload": "ds_" + "2" * 32}), locations_of(data_root))
    assert caught.value.code is FailureCode.INVALID_DATA
    assert "ds_2222" in caught.value.message and "does not exist" in caught.value.message


def save_to_disk(folder: Path, splits: dict[str, list[dict[str, Any]]] | list[dict[str, Any]]) -> Path:
    from datasets import Dataset, DatasetDict

    saved = (DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})
             if isinstance(splits, dict) else Dataset.from_list(splits))
    saved.save_to_disk(str(folder))
    return folder


def test_save_to_disk_folders_load_whole_or_by_split(data_root: Path) -> None:
    save_to_disk(data_root / "single", sentiment_rows(16, seed=1))
    save_to_disk(data_root / "dict", {"train": sentiment_rows(12, seed=1), "validation": sentiment_rows(4, seed=2),
                                      "extra": sentiment_rows(8, seed=3)})
    files_before = {path for path in data_root.rglob("*")}
    assert prepare(make_spec({"path": "single"}), data_root).train_rows == 12
    data = prepare(make_spec({"path": "dict"}, {"path": "dict"}), data_root)
    assert (data.train_rows, data.validation_rows) == (12, 4)
    assert prepare(make_spec({"path": "dict", "split": "extra"}), data_root).train_rows == 6
    assert {path for path in data_root.rglob("*")} == files_before, "nothing is written into the data folder"


def test_save_to_disk_problems(data_root: Path) -> None:
    save_to_disk(data_root / "dict", {"train": sentiment_rows(12, seed=1)})
    save_to_disk(data_root / "single", sentiment_rows(12, seed=1))
    (data_root / "plain").mkdir()
    invalid_data(make_spec({"path": "dict"}, {"path": "dict"}), data_root, "validation folder 'dict'",
                 "no split 'validation'", "'train'")
    invalid_data(make_spec({"path": "single", "split": "train"}), data_root, "single dataset")
    invalid_data(make_spec({"path": "plain"}), data_root, "train folder 'plain'",
                 "not a folder written by save_to_disk")


def test_inspect_data_collects_every_problem(data_root: Path) -> None:
    rows = [dict(row) for row in sentiment_rows(12, seed=1)]
    rows[2]["text"] = " "
    rows[4]["label"] = None
    validation = [{"text": "fine film", "label": "neutral"}, {"sentence": "no text column", "label": "positive"}]
    spec = make_spec(records(*rows), records(validation[0]))
    found = inspect_data(spec, locations_of(data_root), data_root.parent / "cache")
    assert [(p.check, p.split, p.column, p.row, p.value) for p in found.problems] == [
        ("empty_text", "train", "text", 3, " "), ("null_label", "train", "label", 5, None)]
    assert found.prepared is None and found.train_labels is None
    found = inspect_data(make_spec(records(*GOOD), {"path": "absent.csv"}), locations_of(data_root))
    assert [p.check for p in found.problems] == ["file_not_found"] and found.label_names == ["negative", "positive"]
    problem = found.problems[0].as_dict()
    assert problem["code"] == "invalid_data" and problem["split"] == "validation" and problem["value"] == "absent.csv"


def publish_job_model(data_root: Path, id2label: dict[int, str]) -> str:
    """A job's published model folder holding only a config with these labels."""
    job_id = "job_" + "3" * 32
    folder = data_root.parent / "artifacts" / job_id / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "id2label": id2label,
                                                    "label2id": {v: k for k, v in id2label.items()}}))
    return job_id


def test_continuing_from_a_job_keeps_its_label_ids(data_root: Path) -> None:
    job_id = publish_job_model(data_root, {0: "apple", 1: "mango", 2: "zebra"})
    rows = [{"text": f"fruit {word}", "label": word} for word in ["zebra", "mango"] * 4]
    spec = {**make_spec(records(*rows), records(*rows[:2])), "model": {"job": job_id}}
    data = prepare_data(spec, locations_of(data_root))
    assert data.num_labels == 3 and data.label2id == {"apple": 0, "mango": 1, "zebra": 2}
    assert data.train["labels"] == [2, 1] * 4


def test_continuing_from_a_job_with_other_labels_needs_num_labels(data_root: Path) -> None:
    job_id = publish_job_model(data_root, {0: "negative", 1: "positive"})
    rows = [{"text": f"text {i}", "label": label} for i, label in enumerate(["negative", "positive", "neutral"] * 3)]
    spec = {**make_spec(records(*rows), records(*rows[:3])), "model": {"job": job_id}}
    with pytest.raises(TrainingFailure) as caught:
        prepare_data(spec, locations_of(data_root))
    assert "row 3" in caught.value.message and "'neutral'" in caught.value.message
    assert "set num_labels" in caught.value.message
    data = prepare_data({**spec, "num_labels": 3}, locations_of(data_root))
    assert data.label2id == {"negative": 0, "neutral": 1, "positive": 2}


def test_data_paths_into_proc_are_refused_when_the_job_loads_them(data_root: Path) -> None:
    os.symlink("/proc/self/environ", data_root / "environ.csv")
    invalid_data(make_spec({"path": "environ.csv"}), data_root, "'environ.csv'", "leads into /proc")
    invalid_data(make_spec({"path": "/proc/self/status"}), data_root, "leads into /proc")
