"""Data sources in an object store (`{"url": "s3://..."}`): allowed prefixes, refusals, and reading one.

The trainer's reads run against a real S3-compatible server (moto's server mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.fingerprint import source_identity
from service.locations import Locations, PathRefused, check_data_url
from service.storage import Storage
from service.trainer.data import InvalidData, inspect_data, load_split
from tests.support.s3 import S3Server, s3_server

PREFIXES = ("s3://corpus/reviews", "gs://other-bucket/data/")


@pytest.mark.parametrize("url", ["s3://corpus/reviews/train.csv", "s3://corpus/reviews/2024/june/val.jsonl",
                                 "gs://other-bucket/data/x.parquet"])
def test_urls_under_an_allowed_prefix_pass(url: str) -> None:
    assert check_data_url(url, PREFIXES) == url


@pytest.mark.parametrize(("url", "rule"), [
    ("s3://corpus/reviewsX/train.csv", "outside the allowed"),  # a prefix matches whole components
    ("s3://corpus/train.csv", "outside the allowed"),
    ("s3://corpus/reviews", "outside the allowed"),  # the prefix itself is no file
    ("gs://corpus/reviews/train.csv", "outside the allowed"),  # another scheme
    ("s3://corpus/reviews/../secrets/k.csv", "'..'"),
    ("s3://corpus/reviews/%2e%2e/k.csv", "percent-escape"),
    ("s3://corpus/reviews//k.csv", "empty or '.'"),
    ("s3://corpus/reviews/./k.csv", "empty or '.'"),
    ("s3://corpus/reviews/a\\..\\b.csv", "backslash"),
    ("s3://corpus/reviews/\uff0e\uff0e/k.csv", "'..'"),  # fullwidth dots fold to '..'
    ("http://corpus/reviews/train.csv", "not an s3:// or gs:// URL"),
    ("/corpus/reviews/train.csv", "not an s3:// or gs:// URL"),
])
def test_urls_that_leave_the_prefixes_are_refused(url: str, rule: str) -> None:
    with pytest.raises(PathRefused, match=rule if rule[0] != "'" else "'\\.\\.'"):
        check_data_url(url, PREFIXES)


def test_no_prefixes_allow_no_url() -> None:
    with pytest.raises(PathRefused, match="FITJOBS_DATA_URL_PREFIXES is empty"):
        check_data_url("s3://corpus/reviews/train.csv", ())


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def url_app(tmp_path: Path, s3: S3Server) -> Iterator[Flask]:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                                  "FITJOBS_DATA_URL_PREFIXES": "s3://corpus/reviews"})
    application = create_app(settings, test_config={"TESTING": True})
    yield application
    application.extensions["fitjobs.store"].engine.dispose()


def test_the_api_accepts_urls_under_a_prefix_and_refuses_others(url_app: Flask) -> None:
    client: FlaskClient = url_app.test_client()
    spec = {"model": "bert-base-uncased", "data": {"train": {"url": "s3://corpus/reviews/train.csv"},
                                                   "validation": {"url": "s3://corpus/reviews/val.csv"}}}
    assert client.post("/v1/jobs", json=spec).status_code == 201
    outside = client.post("/v1/jobs", json={**spec, "data": {"train": {"url": "s3://corpus/private/k.csv"}}})
    assert outside.status_code == 422 and outside.mimetype == "application/problem+json"
    assert "lies outside the allowed data URL prefixes" in outside.get_json()["errors"]["data.train.url"][0]
    dotted = client.post("/v1/jobs", json={**spec, "data": {"train": {"url": "s3://corpus/reviews/../k.csv"}}})
    assert dotted.status_code == 422 and "data.train.url" in str(dotted.get_json()["errors"])
    both = client.post("/v1/jobs", json={**spec, "data": {"train": {"url": "s3://corpus/reviews/t.csv",
                                                                     "path": "t.csv"}}})
    assert both.status_code == 422


def test_the_trainer_reads_a_file_under_an_allowed_prefix(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    rows = "text,label\n" + "".join(f"row number {i},{'ab'[i % 2]}\n" for i in range(12))
    Storage(f"s3://{bucket}").write_bytes("reviews/train.csv", rows.encode())
    locations = Locations(data_root=tmp_path, uploads_dir=tmp_path / "u", artifacts_dir=tmp_path / "a",
                          data_url_prefixes=(f"s3://{bucket}/reviews",))
    loaded = load_split({"url": f"s3://{bucket}/reviews/train.csv"}, "train", locations, tmp_path / "cache")
    assert len(loaded) == 12 and loaded.column_names == ["text", "label"]
    with pytest.raises(InvalidData) as missing:
        load_split({"url": f"s3://{bucket}/reviews/none.csv"}, "train", locations, tmp_path / "cache")
    assert missing.value.problem.check == "file_not_found"
    # Checked again when the job reads its data: a prefix removed after submit refuses the URL.
    narrowed = Locations(data_root=tmp_path, uploads_dir=tmp_path / "u", artifacts_dir=tmp_path / "a",
                         data_url_prefixes=(f"s3://{bucket}/other",))
    found = inspect_data({"data": {"train": {"url": f"s3://{bucket}/reviews/train.csv"},
                                   "validation": {"split_fraction": 0.25}, "text_column": "text",
                                   "text_pair_column": None, "label_column": "label"},
                          "num_labels": None, "model": "m", "hyperparameters": {"seed": 1}}, narrowed, None)
    assert [problem.check for problem in found.problems] == ["url_refused"]
    identity = source_identity({"url": f"s3://{bucket}/reviews/train.csv"}, locations, lambda _: None)
    assert identity["size"] == len(rows) and identity["version"], "reuse follows the object's content hash"
