"""The dry run's report from config and tokenizer alone, upload checks, and the check server's time limit."""

from __future__ import annotations

import json
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
