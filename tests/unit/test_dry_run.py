"""The dry run's report from config and tokenizer alone, upload checks, and the check server's time limit."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from service.check_runner import CheckFailed, CheckRunner
from service.locations import Locations
from service.trainer.dry_run import TokenizerCache, dry_run, inspect_upload
from tests.support.sentiment_data import WORDS, sentiment_rows, write_table
from tests.support.tiny_bert import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def config_only_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT config and tokenizer without weights: all a dry run reads."""
    from transformers import BertConfig, BertTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "config-only"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=128).save_pretrained(str(folder))
    BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), hidden_size=32, num_hidden_layers=1,
               num_attention_heads=2, intermediate_size=32).save_pretrained(str(folder))
    return folder


def locations_in(tmp_path: Path, model: Path) -> Locations:
    return Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "uploads",
                     artifacts_dir=tmp_path / "artifacts", model_roots=(model.parent,))


def spec_for(model: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]] | None = None,
             max_length: int = 8) -> dict[str, Any]:
    return {"model": str(model), "num_labels": None,
            "data": {"train": {"records": train},
                     "validation": {"records": validation} if validation else {"split_fraction": 0.25},
                     "text_column": "text", "text_pair_column": None, "label_column": "label"},
            "hyperparameters": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "max_length": max_length,
                                "seed": 3}}


def test_report_of_clean_data(config_only_model: Path, tmp_path: Path) -> None:
    train, validation = sentiment_rows(40, seed=1), sentiment_rows(10, seed=2)
    validation[3] = dict(train[7])
    report = dry_run(spec_for(config_only_model, train, validation, max_length=64),
                     locations_in(tmp_path, config_only_model), tmp_path / "cache", TokenizerCache())
    assert report["valid"] and report["problems"] == [] and report["num_labels"] == 2
    assert report["splits"]["train"]["labels"] == {"negative": 20, "positive": 20}
    assert report["steps_per_epoch"] == 10 and report["epochs"] == 2
    lengths = [len(row["text"].split()) + 2 for row in train]  # one token per word, plus [CLS] and [SEP]
    tokens = report["splits"]["train"]["tokens"]
    assert tokens["max"] == max(lengths) and tokens["truncated_rows"] == 0 and tokens["measured_rows"] == 40
    assert report["duplicates"] == {"rows": 1, "share": 0.1, "first_rows": [4]}
    assert [warning["code"] for warning in report["warnings"]] == ["duplicates"]
    assert report["model"]["model_type"] == "bert" and report["model"]["source"] == "local"


def test_truncation_and_split_fraction(config_only_model: Path, tmp_path: Path) -> None:
    report = dry_run(spec_for(config_only_model, sentiment_rows(40, seed=1), max_length=8),
                     locations_in(tmp_path, config_only_model), tmp_path / "cache", TokenizerCache())
    assert (report["splits"]["train"]["rows"], report["splits"]["validation"]["rows"]) == (30, 10)
    truncation = [w for w in report["warnings"] if w["code"] == "truncation"]
    assert truncation and "max_length 8" in truncation[0]["message"]
    assert report["duplicates"]["first_rows"] == []  # a held-out split has no row numbers of its own


def test_model_problems_are_reported_with_the_data_statistics(config_only_model: Path, tmp_path: Path) -> None:
    unsupported = tmp_path / "models" / "llama"
    unsupported.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (unsupported / name).write_bytes((config_only_model / name).read_bytes())
    (unsupported / "config.json").write_text(json.dumps({"model_type": "llama"}))
    where = locations_in(tmp_path, unsupported)
    report = dry_run(spec_for(unsupported, sentiment_rows(20, seed=1)), where, None, TokenizerCache())
    assert [p["code"] for p in report["problems"]] == ["unsupported_model"]
    assert report["splits"]["train"]["rows"] == 15 and report["splits"]["train"]["tokens"] is None
    outside = dry_run(spec_for(Path("/etc"), sentiment_rows(20, seed=1)), where, None, TokenizerCache())
    assert outside["problems"][0]["code"] == "model_not_found" and "outside the model root" in \
        outside["problems"][0]["message"]


def test_tokenizers_are_loaded_once_per_model(config_only_model: Path, tmp_path: Path) -> None:
    from service.locations import model_source

    cache = TokenizerCache()
    source = model_source(str(config_only_model), locations_in(tmp_path, config_only_model))
    first = cache.get(source)
    assert cache.get(source) is first
    (config_only_model / "tokenizer_config.json").touch()  # a changed folder is read again
    time.sleep(0.01)
    assert cache.get(source) is not first


def test_inspect_upload(tmp_path: Path) -> None:
    good = write_table(sentiment_rows(30, seed=1), tmp_path / "a" / "data.jsonl")
    assert inspect_upload(good) == {"rows": 30, "columns": ["text", "label"],
                                    "features": {"text": "Value('string')", "label": "Value('string')"}}
    narrow = tmp_path / "b" / "data.csv"
    narrow.parent.mkdir()
    narrow.write_text("text\nhello\n")
    assert "1 column" in inspect_upload(narrow)["problem"]


def test_a_check_that_runs_too_long_is_killed_and_the_next_one_starts_afresh(config_only_model: Path,
                                                                            tmp_path: Path) -> None:
    import os

    runner = CheckRunner(dict(os.environ))
    # The first dry run of a server loads the tokenizer: far longer than the 50 ms it is given.
    slow = {"spec": spec_for(config_only_model, sentiment_rows(2000, seed=1)),
            "locations": locations_in(tmp_path, config_only_model).to_dict()}
    try:
        first = runner.run("ping", {}, timeout=60)["pid"]
        assert runner.run("ping", {}, timeout=60)["pid"] == first, "the check server is kept between requests"
        with pytest.raises(CheckFailed) as caught:
            runner.run("dry_run", slow, timeout=0.05)
        assert caught.value.timed_out
        deadline = time.monotonic() + 5
        while Path(f"/proc/{first}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{first}").exists() or "Z" in Path(f"/proc/{first}/stat").read_text().split()[2]
        assert runner.run("ping", {}, timeout=60)["pid"] != first
        with pytest.raises(CheckFailed, match="KeyError"):
            runner.run("dry_run", {"spec": {}, "locations": {}}, timeout=60)
    finally:
        runner.close()


def test_token_lengths_of_a_large_split_come_from_a_seeded_sample(config_only_model: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import service.trainer.dry_run as dry_run_module

    monkeypatch.setattr(dry_run_module, "MAX_MEASURED_ROWS", 12)
    spec = spec_for(config_only_model, sentiment_rows(40, seed=1), sentiment_rows(10, seed=2), max_length=64)
    reports = [dry_run(spec, locations_in(tmp_path, config_only_model), tmp_path / "cache", TokenizerCache())
               for _ in range(2)]
    assert reports[0]["splits"]["train"]["tokens"]["measured_rows"] == 12
    assert reports[0]["splits"]["validation"]["tokens"]["measured_rows"] == 10
    assert reports[0]["splits"] == reports[1]["splits"]
    assert reports[0]["duplicates"]["rows"] == 0 and reports[0]["splits"]["train"]["rows"] == 40


def labelled_rows(counts: dict[Any, int]) -> list[dict[str, Any]]:
    """Rows with ``counts[label]`` rows of each label, their texts drawn from the tiny model's words."""
    rows = []
    for label, count in counts.items():
        rows += [{"text": f"{WORDS[index % len(WORDS)]} film", "label": label} for index in range(count)]
    return rows


def with_settings(spec: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """``spec`` with hyperparameters (and a top-level `acceptance`) changed."""
    acceptance = settings.pop("acceptance", None)
    return {**spec, "hyperparameters": {**spec["hyperparameters"], **settings}, "acceptance": acceptance}


def test_a_training_split_with_a_rare_class_is_warned_about(config_only_model: Path, tmp_path: Path) -> None:
    where = locations_in(tmp_path, config_only_model)
    skewed = spec_for(config_only_model, labelled_rows({"common": 95, "rare": 5}), labelled_rows({"common": 4,
                                                                                                   "rare": 2}))
    report = dry_run(skewed, where, None, TokenizerCache())
    assert report["splits"]["train"]["labels"] == {"common": 95, "rare": 5}, "the class balance stays reported"
    imbalance = [w for w in report["warnings"] if w["code"] == "class_imbalance"]
    assert len(imbalance) == 1 and report["valid"], report
    assert imbalance[0]["check"] == "class_imbalance" and imbalance[0]["value"] == 0.05
    assert "'rare'" in imbalance[0]["message"] and "5.0%" in imbalance[0]["message"]
    assert "class_weight: balanced" in imbalance[0]["message"]
    weighted = dry_run(with_settings(skewed, class_weight="balanced"), where, None, TokenizerCache())
    assert "class_imbalance" not in [w["code"] for w in weighted["warnings"]], "already weighted: nothing to say"
    even = spec_for(config_only_model, labelled_rows({"common": 50, "rare": 50}), labelled_rows({"common": 3,
                                                                                                 "rare": 3}))
    assert "class_imbalance" not in [w["code"] for w in dry_run(even, where, None, TokenizerCache())["warnings"]]


def test_class_weight_keys_must_be_training_labels(config_only_model: Path, tmp_path: Path) -> None:
    where = locations_in(tmp_path, config_only_model)
    spec = spec_for(config_only_model, sentiment_rows(20, seed=1), sentiment_rows(6, seed=2))
    known = dry_run(with_settings(spec, class_weight={"positive": 2.0}), where, None, TokenizerCache())
    assert known["valid"], known["problems"]
    unknown = dry_run(with_settings(spec, class_weight={"positive": 2.0, "pos": 1.0, "neg": 3.0}), where, None,
                      TokenizerCache())
    assert [(p["check"], p["column"], p["value"]) for p in unknown["problems"]] == [
        ("class_weight", None, "pos"), ("class_weight", None, "neg")]
    assert unknown["problems"][0]["message"] == "Unknown label 'pos'; the training labels are: negative, positive."
    numbered = spec_for(config_only_model, labelled_rows({0: 10, 1: 10}), labelled_rows({0: 3, 1: 3}))
    assert dry_run(with_settings(numbered, class_weight={"1": 4.0}), where, None, TokenizerCache())["valid"]
    assert dry_run(with_settings(numbered, class_weight={"2": 4.0}), where, None, TokenizerCache())["problems"][0][
        "message"] == "Unknown label '2'; the training labels are: 0, 1."


def test_roc_auc_acceptance_needs_two_labels(config_only_model: Path, tmp_path: Path) -> None:
    where = locations_in(tmp_path, config_only_model)
    bar = {"metric": "val_roc_auc", "min": 0.8}
    two = spec_for(config_only_model, labelled_rows({"a": 10, "b": 10}), labelled_rows({"a": 3, "b": 3}))
    assert dry_run(with_settings(two, acceptance=bar), where, None, TokenizerCache())["valid"]
    three = spec_for(config_only_model, labelled_rows({"a": 10, "b": 10, "c": 10}),
                     labelled_rows({"a": 3, "b": 3, "c": 3}))
    problems = dry_run(with_settings(three, acceptance=bar), where, None, TokenizerCache())["problems"]
    assert [(p["check"], p["value"]) for p in problems] == [("acceptance", "val_roc_auc")]
    assert "3: a, b, c" in problems[0]["message"]
    f1_bar = {"metric": "val_macro_f1", "min": 0.8}
    assert dry_run(with_settings(three, acceptance=f1_bar), where, None, TokenizerCache())["valid"]


def test_a_model_folder_swapped_for_a_link_out_of_the_roots_is_refused_at_load_time(config_only_model: Path,
                                                                                   tmp_path: Path) -> None:
    import shutil

    from service.jobs import FailureCode
    from service.trainer.failures import TrainingFailure
    from service.trainer.modeling import load_tokenizer, spec_model_source

    roots = tmp_path / "models"
    inside = roots / "tiny"
    shutil.copytree(config_only_model, inside)
    outside = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(config_only_model, outside)
    where = Locations(data_root=tmp_path / "data", uploads_dir=tmp_path / "uploads",
                      artifacts_dir=tmp_path / "artifacts", model_roots=(roots,))
    assert load_tokenizer(spec_model_source({"path": "tiny"}, where)) is not None
    # While the job waits in the queue, the folder becomes a link to a model outside the roots.
    shutil.rmtree(inside)
    os.symlink(outside, inside)
    for model in ({"path": "tiny"}, str(inside)):
        with pytest.raises(TrainingFailure) as caught:
            spec_model_source(model, where)
        assert caught.value.code is FailureCode.MODEL_NOT_FOUND
        assert "outside the model root" in caught.value.message and "when the job loads it" in caught.value.message
        assert str(outside) not in caught.value.message and "elsewhere" not in caught.value.message


def test_a_hub_id_is_never_read_from_the_working_folder(config_only_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from service.jobs import FailureCode
    from service.trainer.failures import TrainingFailure
    from service.trainer.modeling import load_model_config

    shutil.copytree(config_only_model, tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrainingFailure) as caught:
        load_model_config("org/name")
    assert caught.value.code is FailureCode.MODEL_NOT_FOUND and "is a Hub id" in caught.value.message
    # The dry run's check server works in an empty folder of its own: the name is a Hub id there too.
    runner = CheckRunner({**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    try:
        spec = {**spec_for(config_only_model, sentiment_rows(20, seed=1)), "model": "org/name"}
        report = runner.run("dry_run", {"spec": spec, "locations": locations_in(tmp_path, config_only_model)
                                        .to_dict()}, timeout=120)
    finally:
        runner.close()
    assert [problem["code"] for problem in report["problems"]] == ["model_not_found"]
    assert report["model"] is None
