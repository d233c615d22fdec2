"""Every way to give data and models, through the HTTP API of a running service: uploads, files,
save_to_disk folders, Hub datasets and models from an offline cache, continuing from a job; the
dry run; and every refusal as a 4xx problem+json."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.hf_cache import cache_hub_dataset, cache_hub_model
from tests.support.planted_data import planted_tables
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import REPO_ROOT, RunningService, start_service

PROBLEM_JSON = "application/problem+json"
TERMINAL = {"succeeded", "failed", "cancelled"}
HYPER = {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "max_length": 32, "seed": 1}


# --- helpers ---------------------------------------------------------------------------------------

def upload(service: RunningService, path: Path, *, multipart: bool = True, filename: str | None = None,
           expect: int = 201) -> dict[str, Any]:
    """Upload a file; multipart (field `file`) or as the raw body named by ?filename=."""
    name = filename or path.name
    with path.open("rb") as handle:
        if multipart:
            response = requests.post(service.url + "/v1/datasets", files={"file": (name, handle)}, timeout=120)
        else:
            response = requests.post(service.url + "/v1/datasets", params={"filename": name}, data=handle,
                                     timeout=120)
    assert response.status_code == expect, response.text
    if expect >= 400:
        assert response.headers["Content-Type"] == PROBLEM_JSON
    return response.json()


def problem(response: requests.Response, status: int) -> dict[str, Any]:
    """The problem+json body of a response that must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status and body["type"].startswith("https://") and body["title"] and body["detail"]
    assert "Traceback" not in response.text
    return body


def spec_of(model: Any, train: dict[str, Any], validation: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """A small spec; ``extra`` may set data columns (text_column, ...) and top-level fields."""
    data: dict[str, Any] = {"train": train, "validation": validation or {"split_fraction": 0.2}}
    for key in ("text_column", "text_pair_column", "label_column"):
        if key in extra:
            data[key] = extra.pop(key)
    return {"model": model, "data": data, "hyperparameters": {**HYPER, **extra.pop("hyperparameters", {})}, **extra}


def validate(service: RunningService, spec: dict[str, Any]) -> requests.Response:
    """POST /v1/jobs:validate with a timeout that covers starting the check server."""
    return requests.post(service.url + "/v1/jobs:validate", json=spec, timeout=120)


def run_job(service: RunningService, spec: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Submit a job and wait for it to end."""
    response = service.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return service.wait_for_state(response.json()["id"], TERMINAL, timeout=timeout)


def event_kinds(service: RunningService, job_id: str) -> list[str]:
    return [event["kind"] for event in service.get(f"/v1/jobs/{job_id}/events").json()["events"]]


def job_count(service: RunningService) -> int:
    return len(service.get("/v1/jobs", params={"limit": 200}).json()["jobs"])


@pytest.fixture(scope="module")
def uploads(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Sentiment train rows (CSV, multipart) and validation rows (JSON Lines, raw body) as uploads."""
    folder = tmp_path_factory.mktemp("uploads")
    train = upload(service, write_table(sentiment_rows(160, seed=21), folder / "train.csv"))
    validation = upload(service, write_table(sentiment_rows(40, seed=22), folder / "val.jsonl"), multipart=False)
    return {"train": train["id"], "validation": validation["id"]}


# --- the dry run -----------------------------------------------------------------------------------

def test_dry_run_of_20000_uploaded_rows_flags_planted_problems_within_10_s(
        service: RunningService, tiny_model_dir: Path, tmp_path: Path) -> None:
    planted = planted_tables(tmp_path)
    train = upload(service, planted["train"], multipart=False)
    validation = upload(service, planted["validation"])
    assert (train["rows"], validation["rows"]) == (20_000, 2_000)
    spec = spec_of(str(tiny_model_dir), {"upload": train["id"]}, {"upload": validation["id"]},
                   hyperparameters={"max_length": 128, "batch_size": 32})
    jobs_before = job_count(service)

    started = time.monotonic()
    response = validate(service, spec)
    seconds = time.monotonic() - started
    report = problem(response, 422)["report"]
    print(f"\ndry run of {train['rows']} + {validation['rows']} uploaded rows: {seconds:.2f} s "
          f"(checks {report['seconds']:.2f} s)")
    assert seconds < 10

    unknown = [p for p in report["problems"] if p["check"] == "unknown_label"]
    assert len(report["problems"]) == 1 and unknown, report["problems"]
    assert (unknown[0]["split"], unknown[0]["column"], unknown[0]["row"], unknown[0]["value"]) == \
        ("validation", "label", planted["unknown_label_row"], "neutral")
    assert report["splits"]["train"]["rows"] == 20_000 and report["splits"]["validation"]["rows"] == 2_000
    assert report["splits"]["train"]["labels"] == {"negative": 10_000, "positive": 10_000}
    assert report["splits"]["validation"]["labels"]["neutral"] == 1
    assert report["num_labels"] == 2 and report["labels"] == ["negative", "positive"]

    warnings = {warning["code"]: warning for warning in report["warnings"]}
    duplicates = report["duplicates"]
    assert duplicates["rows"] >= len(planted["duplicated_rows"]) == 100
    assert duplicates["first_rows"] == planted["duplicated_rows"][:len(duplicates["first_rows"])]
    assert "duplicates" in warnings and "validation rows" in warnings["duplicates"]["message"]
    tokens = report["splits"]["train"]["tokens"]
    assert 0.25 < tokens["truncated_share"] < 0.35 and tokens["p99"] > 128 and tokens["p50"] < 128
    assert tokens["p50"] <= tokens["p90"] <= tokens["p99"] <= tokens["max"]
    assert warnings["truncation"]["split"] in {"train", "validation"} and "max_length 128" in \
        warnings["truncation"]["message"]
    assert report["steps_per_epoch"] == 20_000 // 32
    assert job_count(service) == jobs_before, "a dry run queues no job"


def test_dry_run_of_a_clean_spec_is_200_with_the_report(service: RunningService, tiny_model_dir: Path,
                                                        uploads: dict[str, str]) -> None:
    spec = spec_of(str(tiny_model_dir), {"upload": uploads["train"]}, {"upload": uploads["validation"]},
                   hyperparameters={"batch_size": 32, "max_length": 8})
    response = validate(service, spec)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["valid"] is True and report["problems"] == []
    assert report["splits"]["train"]["rows"] == 160
    assert report["splits"]["train"]["labels"] == {"negative": 80, "positive": 80}
    assert report["splits"]["validation"]["rows"] == 40
    assert report["steps_per_epoch"] == 5 and report["num_labels"] == 2  # 160 rows, batch_size 32
    assert report["model"] == {"source": "local", "name": str(tiny_model_dir), "model_type": "bert",
                               "tokenizer": "BertTokenizerFast", "max_position_embeddings": 128}
    # sentiment rows have 4 to 8 words, each one token, plus [CLS] and [SEP]: some exceed max_length 8.
    tokens = report["splits"]["train"]["tokens"]
    assert tokens["measured_rows"] == 160 and 6 <= tokens["p50"] <= tokens["max"] <= 10
    assert 0 < tokens["truncated_rows"] < 160 and tokens["truncated_share"] == round(tokens["truncated_rows"] / 160, 4)
    assert report["duplicates"]["rows"] >= 0 and report["seconds"] < 10


DATA_PROBLEMS = [
    # (name, rows changed in the training records, validation records, spec changes, check, split, column, row, value)
    ("missing column", {"text_column": "review"}, None, "missing_column", "train", "review", None, "review"),
    ("empty text", {"train_row": (3, "text", "   ")}, None, "empty_text", "train", "text", 3, "   "),
    ("null label", {"train_row": (5, "label", None)}, None, "null_label", "train", "label", 5, None),
    ("mixed label types", {"train_row": (2, "label", 1)}, None, "mixed_types", "train", None, None, None),
    ("single class", {"all_labels": "positive"}, None, "single_class", "train", "label", None, "positive"),
    ("unknown validation label", {}, [{"text": "great film", "label": "positive"},
                                      {"text": "the plot", "label": "neutral"}],
     "unknown_label", "validation", "label", 2, "neutral"),
    ("num_labels other than the classes", {"num_labels": 3}, None, "num_labels_mismatch", "train", "label", None, 3),
]


@pytest.mark.parametrize("name,change,validation,check,split,column,row,value", DATA_PROBLEMS,
                         ids=[case[0] for case in DATA_PROBLEMS])
def test_dry_run_names_each_data_problem(service: RunningService, tiny_model_dir: Path, name: str,
                                         change: dict[str, Any], validation: list[dict[str, Any]] | None,
                                         check: str, split: str, column: str | None, row: int | None,
                                         value: Any) -> None:
    rows = sentiment_rows(30, seed=5)
    extra: dict[str, Any] = {}
    if "train_row" in change:
        index, key, new = change["train_row"]
        rows[index - 1][key] = new
    if "all_labels" in change:
        rows = [dict(r, label=change["all_labels"]) for r in rows]
    if "text_column" in change:
        extra["text_column"] = change["text_column"]
    if "num_labels" in change:
        extra["num_labels"] = change["num_labels"]
    spec = spec_of(str(tiny_model_dir), {"records": rows}, {"records": validation} if validation else None, **extra)
    report = problem(validate(service, spec), 422)["report"]
    found = report["problems"][0]
    assert found["code"] == "invalid_data" and found["check"] == check, report["problems"]
    assert (found["split"], found["column"], found["row"], found["value"]) == (split, column, row, value)
    if column:
        assert repr(column) in found["message"]
    if row:
        assert f"row {row}" in found["message"]


def test_dry_run_names_missing_and_unreadable_files(service: RunningService, tiny_model_dir: Path) -> None:
    (service.data_root / "broken.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": oops\n')
    write_table(sentiment_rows(20, seed=1), service.data_root / "ok.csv")
    report = problem(validate(service, spec_of(str(tiny_model_dir), {"path": "absent.csv"},
                                               {"path": "broken.jsonl"})), 422)["report"]
    checks = {(p["split"], p["check"]): p for p in report["problems"]}
    assert "does not exist" in checks[("train", "file_not_found")]["message"]
    assert "JSON parse error" in checks[("validation", "unreadable_file")]["message"]
    # A missing file is reported as a problem, not refused at submit: only paths leaving the root are.
    assert validate(service, spec_of(str(tiny_model_dir), {"path": "ok.csv"})).status_code == 200


# --- uploads ---------------------------------------------------------------------------------------

def test_uploads_in_every_format_are_listed_read_and_deleted(service: RunningService, tmp_path: Path) -> None:
    rows = sentiment_rows(24, seed=7)
    sent = [("train.csv", True), ("train.jsonl", False), ("train.json", True), ("train.parquet", False)]
    made = []
    for name, multipart in sent:
        path = write_table(rows, tmp_path / name)
        dataset = upload(service, path, multipart=multipart)
        assert dataset["rows"] == 24 and dataset["columns"] == ["text", "label"], dataset
        assert dataset["filename"] == name and dataset["format"] == name.split(".")[1]
        assert dataset["size_bytes"] == path.stat().st_size
        import hashlib

        assert dataset["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        made.append(dataset)
    disposition = requests.post(service.url + "/v1/datasets", data=(tmp_path / "train.csv").read_bytes(),
                                headers={"Content-Type": "application/octet-stream",
                                         "Content-Disposition": 'attachment; filename="named.csv"'}, timeout=60)
    assert disposition.status_code == 201 and disposition.json()["filename"] == "named.csv"
    made.append(disposition.json())

    listed = service.get("/v1/datasets", params={"limit": 200}).json()["datasets"]
    assert {d["id"] for d in made} <= {d["id"] for d in listed}
    first_page = service.get("/v1/datasets", params={"limit": 2}).json()
    assert len(first_page["datasets"]) == 2 and first_page["next"]
    second = service.get("/v1/datasets", params={"limit": 2, "cursor": first_page["next"]}).json()
    assert not {d["id"] for d in second["datasets"]} & {d["id"] for d in first_page["datasets"]}
    for dataset in made:
        assert service.get(f"/v1/datasets/{dataset['id']}").json() == dataset
        assert requests.delete(f"{service.url}/v1/datasets/{dataset['id']}", timeout=30).status_code == 204
        problem(service.get(f"/v1/datasets/{dataset['id']}"), 404)
        problem(requests.delete(f"{service.url}/v1/datasets/{dataset['id']}", timeout=30), 404)
        assert not (service.home / "uploads" / dataset["id"]).exists()


UNREADABLE = [
    ("garbage.csv", os.urandom(4096), 422, "could not be read as csv"),
    ("one-column.csv", b"just text\nmore text\n", 422, "needs at least a text and a label column"),
    ("broken.jsonl", b'{"text": "a", "label": 1}\n{"text": \n', 422, "JSON parse error"),
    ("fake.parquet", b"text,label\nnot,parquet\n", 422, "PAR1"),
    ("empty.csv", b"", 422, "empty"),
    ("header-only.csv", b"text,label\n", 422, "no rows"),
    ("notes.txt", b"text,label\na,b\n", 415, ".txt"),
]


@pytest.mark.parametrize("name,content,status,named", UNREADABLE, ids=[case[0] for case in UNREADABLE])
def test_uploads_that_are_not_readable_tables_are_refused(service: RunningService, tmp_path: Path, name: str,
                                                          content: bytes, status: int, named: str) -> None:
    before = set(os.listdir(service.home / "uploads"))
    path = tmp_path / name
    path.write_bytes(content)
    body = upload(service, path, expect=status)
    assert named in body["detail"], body
    assert set(os.listdir(service.home / "uploads")) == before, "a refused upload leaves nothing behind"


def test_uploads_without_a_file_name_or_field_are_400(service: RunningService) -> None:
    problem(requests.post(service.url + "/v1/datasets", data=b"text,label\na,b\n",
                          headers={"Content-Type": "application/octet-stream"}, timeout=30), 400)
    body = problem(requests.post(service.url + "/v1/datasets", files={"data": ("x.csv", b"text,label\na,b\n")},
                                 timeout=30), 400)
    assert "'file'" in body["detail"]


def test_uploads_over_the_limit_get_413(tmp_path: Path) -> None:
    api = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_MAX_UPLOAD_BYTES": "200000",
                                                                   "FITJOBS_MAX_REQUEST_BYTES": "100000"})
    try:
        big = b"text,label\n" + b"a long enough review text,positive\n" * 10_000  # 350 kB
        small = b"text,label\n" + b"a fine review,positive\nan awful one,negative\n" * 1000  # 43 kB
        raw = requests.post(api.url + "/v1/datasets", params={"filename": "big.csv"}, data=big, timeout=30)
        multipart = requests.post(api.url + "/v1/datasets", files={"file": ("big.csv", big)}, timeout=30)
        chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no Content-Length: chunked
        chunked = requests.post(api.url + "/v1/datasets", params={"filename": "big.csv"}, data=chunks, timeout=30)
        for response in (raw, multipart, chunked):
            assert "limit of 200000 bytes" in problem(response, 413)["detail"]
        assert os.listdir(api.home / "uploads") == []
        # Uploads have their own limit: one above FITJOBS_MAX_REQUEST_BYTES but under the upload limit is fine.
        small_upload = requests.post(api.url + "/v1/datasets", params={"filename": "small.csv"},
                                     data=small * 3, timeout=60)
        assert small_upload.status_code == 201, small_upload.text
    finally:
        assert api.stop() == 0


def test_a_50_mb_csv_upload_trains(service: RunningService, tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    rng = random.Random(3)
    notes = ["".join(rng.choice("abcdefghij klmnop") for _ in range(2600)) for _ in range(50)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "notes"])
        for index, row in enumerate(sentiment_rows(20_000, seed=9)):
            writer.writerow([row["text"], row["label"], notes[index % 50]])
    size = path.stat().st_size
    assert size > 50 * 1024 * 1024

    started = time.monotonic()
    dataset = upload(service, path, multipart=False)
    uploaded_in = time.monotonic() - started
    assert dataset["rows"] == 20_000 and dataset["columns"] == ["text", "label", "notes"]
    assert dataset["size_bytes"] == size
    spec = spec_of(str(tiny_model_dir), {"upload": dataset["id"]}, {"split_fraction": 0.05},
                   hyperparameters={"batch_size": 64, "max_length": 16})
    started = time.monotonic()
    job = run_job(service, spec, timeout=600)
    print(f"\n{size / 2**20:.1f} MiB CSV: uploaded and checked in {uploaded_in:.1f} s; "
          f"job {time.monotonic() - started:.1f} s, result {job['result']}")
    assert job["state"] == "succeeded", job
    assert job["result"]["val_accuracy"] >= 0.8
    loaded = next(e for e in service.get(f"/v1/jobs/{job['id']}/events").json()["events"]
                  if e["kind"] == "data_loaded")
    assert loaded["data"]["train_rows"] == 19_000 and loaded["data"]["validation_rows"] == 1_000


def test_deleting_an_upload_that_queued_or_running_jobs_read_is_409(
        service: RunningService, tiny_model_dir: Path, uploads: dict[str, str], tmp_path: Path) -> None:
    own = upload(service, write_table(sentiment_rows(40, seed=31), tmp_path / "own.csv"))
    long_spec = spec_of(str(tiny_model_dir), {"upload": own["id"]}, hyperparameters={"epochs": 100, "batch_size": 2})
    running = service.post("/v1/jobs", json=long_spec).json()
    queued = service.post("/v1/jobs", json=spec_of(str(tiny_model_dir), {"upload": uploads["train"]},
                                                   {"upload": own["id"]})).json()
    service.wait_for_state(running["id"], {"running"}, timeout=60)
    body = problem(requests.delete(f"{service.url}/v1/datasets/{own['id']}", timeout=30), 409)
    assert set(body["jobs"]) == {running["id"], queued["id"]}
    assert running["id"] in body["detail"]
    for job in (queued, running):
        service.post(f"/v1/jobs/{job['id']}/cancel")
        service.wait_for_state(job["id"], {"cancelled"}, timeout=30)
    assert requests.delete(f"{service.url}/v1/datasets/{own['id']}", timeout=30).status_code == 204
    body = problem(service.post("/v1/jobs", json=long_spec), 422)
    assert "data.train.upload" in body["errors"]


# --- paths and roots -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def escapes(service: RunningService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secret table outside the data root, and symlinks inside the root that lead to it."""
    outside = tmp_path_factory.mktemp("outside")
    secret = write_table(sentiment_rows(10, seed=1), outside / "secret.csv")
    os.symlink(secret, service.data_root / "link-out.csv")
    os.symlink(outside, service.data_root / "dir-out")
    return secret


REFUSED_PATHS = ["../outside.csv", "nested/../../outside.csv", "{secret}", "/etc/passwd", "%2e%2e/outside.csv",
                 "sub/%2E%2E/%2e%2e/x.csv", "..%2foutside.csv", "%252e%252e/x.csv", "\uff0e\uff0e/outside.csv",
                 "..\\outside.csv", "~/outside.csv", "link-out.csv", "dir-out/secret.csv"]


@pytest.mark.parametrize("path", REFUSED_PATHS)
@pytest.mark.parametrize("endpoint", ["/v1/jobs", "/v1/jobs:validate"])
@pytest.mark.parametrize("role", ["train", "validation"])
def test_data_paths_leaving_the_data_root_are_422_at_submit(service: RunningService, escapes: Path, path: str,
                                                            endpoint: str, role: str) -> None:
    before = job_count(service)
    good = {"records": sentiment_rows(10, seed=2)}
    bad = {"path": path.format(secret=escapes)}
    spec = spec_of("bert-base-uncased", bad if role == "train" else good, bad if role == "validation" else None)
    body = problem(service.post(endpoint, json=spec), 422)
    assert f"data.{role}.path" in body["errors"], body
    assert job_count(service) == before


def test_data_paths_inside_the_root_are_accepted_absolute_or_relative(service: RunningService,
                                                                      tiny_model_dir: Path) -> None:
    path = write_table(sentiment_rows(20, seed=4), service.data_root / "inside" / "rows.csv")
    os.symlink(path, service.data_root / "link-in.csv")
    for given in (str(path), "inside/rows.csv", "link-in.csv"):
        response = validate(service, spec_of(str(tiny_model_dir), {"path": given}))
        assert response.status_code == 200, response.text


def test_model_paths_outside_the_model_roots_are_422(service: RunningService, tiny_model_dir: Path,
                                                     tmp_path: Path) -> None:
    train = {"records": sentiment_rows(10, seed=2)}
    outside_roots = Path(os.path.realpath("/usr/share"))
    cases = [("/etc", "model"), (str(outside_roots), "model"), ({"path": "/etc"}, "model.path"),
             ({"path": "../../../etc"}, "model.path"), ({"path": "%2e%2e/x"}, "model.path")]
    link = tmp_path / "link-to-etc"
    os.symlink("/etc", link)
    cases.append((str(link), "model"))
    for model, field in cases:
        for endpoint in ("/v1/jobs", "/v1/jobs:validate"):
            body = problem(service.post(endpoint, json=spec_of(model, train)), 422)
            assert field in body["errors"], (model, body)
    assert validate(service, spec_of({"path": str(tiny_model_dir)}, train)).status_code == 200


BAD_SOURCES = [
    ("unknown upload", {"upload": "ds_" + "0" * 32}, "data.train.upload"),
    ("malformed upload id", {"upload": "../../etc"}, "data.train.upload"),
    ("config without dataset", {"records": [{"text": "a", "label": "x"}], "config": "sst2"}, "data.train.config"),
    ("split with records", {"records": [{"text": "a", "label": "x"}], "split": "train"}, "data.train.split"),
    ("two sources", {"dataset": "glue", "upload": "ds_" + "0" * 32}, "data.train"),
    ("bad dataset name", {"dataset": "a b"}, "data.train.dataset"),
    ("bad split", {"dataset": "glue", "split": "train; rm"}, "data.train.split"),
]


@pytest.mark.parametrize("name,train,field", BAD_SOURCES, ids=[case[0] for case in BAD_SOURCES])
def test_bad_sources_are_422_naming_the_field(service: RunningService, name: str, train: dict[str, Any],
                                              field: str) -> None:
    for endpoint in ("/v1/jobs", "/v1/jobs:validate"):
        body = problem(service.post(endpoint, json=spec_of("bert-base-uncased", train)), 422)
        assert field in body["errors"], body


BAD_MODELS = [
    ({"hub": "bert-base-uncased", "path": "/x"}, "model"),
    ({"job": "not-a-job"}, "model.job"),
    ({"job": "job_" + "0" * 32}, "model.job"),
    ({"hub": "bert base"}, "model.hub"),
    ({"hub": "bert-base-uncased", "revision": "main; rm"}, "model.revision"),
    ({"hub": "bert-base-uncased", "trust_remote_code": True}, "model.trust_remote_code"),
    (["bert-base-uncased"], "model"),
]


@pytest.mark.parametrize("model,field", BAD_MODELS, ids=[str(case[0]) for case in BAD_MODELS])
def test_bad_model_references_are_422_naming_the_field(service: RunningService, model: Any, field: str) -> None:
    body = problem(service.post("/v1/jobs", json=spec_of(model, {"records": sentiment_rows(4, seed=1)})), 422)
    assert field in body["errors"], body


# --- sources that train ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hub_job(service: RunningService, tiny_model_dir: Path) -> dict[str, Any]:
    """A job on a Hub dataset and a Hub model, both loaded from the service's offline cache."""
    hf_home = service.home / "hf-cache"
    splits = {split: [{"sentence": row["text"], "label": int(row["label"] == "positive")} for row in rows]
              for split, rows in (("train", sentiment_rows(160, seed=41)), ("validation", sentiment_rows(40, seed=42)))}
    cache_hub_dataset(hf_home, "fitjobs-test/reviews", "sst2", splits)
    cache_hub_model(tiny_model_dir, hf_home, "fitjobs-test/tiny-bert", revision="v1")
    spec = spec_of({"hub": "fitjobs-test/tiny-bert", "revision": "v1"},
                   {"dataset": "fitjobs-test/reviews", "config": "sst2", "split": "train"},
                   {"dataset": "fitjobs-test/reviews", "config": "sst2"}, text_column="sentence",
                   hyperparameters={"epochs": 2})
    report = validate(service, spec)
    assert report.status_code == 200, report.text
    assert report.json()["splits"]["train"]["labels"] == {"0": 80, "1": 80}
    assert report.json()["model"]["source"] == "hub"
    return run_job(service, spec)


def test_hub_dataset_and_hub_model_load_from_an_offline_cache(service: RunningService,
                                                              hub_job: dict[str, Any]) -> None:
    assert hub_job["state"] == "succeeded", hub_job
    assert hub_job["result"]["val_accuracy"] >= 0.8
    loaded = next(e for e in service.get(f"/v1/jobs/{hub_job['id']}/events").json()["events"]
                  if e["kind"] == "data_loaded")
    assert (loaded["data"]["train_rows"], loaded["data"]["validation_rows"]) == (160, 40)


def test_unknown_hub_split_and_config_are_named(service: RunningService, hub_job: dict[str, Any],
                                                tiny_model_dir: Path) -> None:
    for train, check, named in [({"dataset": "fitjobs-test/reviews", "config": "sst2", "split": "test"},
                                 "unknown_split", "test"),
                                ({"dataset": "fitjobs-test/reviews", "config": "cola"}, "unknown_config", "cola"),
                                ({"dataset": "fitjobs-test/absent"}, "dataset_not_found", "fitjobs-test/absent")]:
        report = problem(validate(service, spec_of(str(tiny_model_dir), train, text_column="sentence")), 422)["report"]
        assert report["problems"][0]["check"] == check and named in report["problems"][0]["message"], report


def test_save_to_disk_folders_and_text_pairs_train(service: RunningService, tiny_model_dir: Path) -> None:
    script = (
        "import sys, json\nfrom datasets import Dataset, DatasetDict\n"
        "rows = json.loads(sys.argv[2])\n"
        "parts = {name: Dataset.from_list(part) for name, part in rows.items()}\n"
        "DatasetDict(parts).save_to_disk(sys.argv[1] + '/pairs')\n"
        "parts['train'].save_to_disk(sys.argv[1] + '/single')\n")

    def pairs(n: int, seed: int) -> list[dict[str, Any]]:
        return [{"premise": row["text"], "hypothesis": row["context"], "label": int(row["label"] == "positive")}
                for row in sentiment_rows(n, seed=seed, pair=True)]

    rows = {"train": pairs(120, 51), "validation": pairs(30, 52)}
    subprocess.run([sys.executable, "-c", script, str(service.data_root / "saved"), json.dumps(rows)],
                   check=True, cwd=REPO_ROOT, capture_output=True, timeout=120)
    columns: dict[str, Any] = {"text_column": "premise", "text_pair_column": "hypothesis"}
    single = validate(service, spec_of(str(tiny_model_dir), {"path": "saved/single"}, **columns))
    assert single.status_code == 200 and single.json()["splits"]["train"]["rows"] == 96, single.text
    wrong = problem(validate(service, spec_of(str(tiny_model_dir), {"path": "saved/pairs", "split": "nope"},
                                              **columns)), 422)["report"]["problems"][0]
    assert wrong["check"] == "unknown_split" and "'train', 'validation'" in wrong["message"]

    job = run_job(service, spec_of(str(tiny_model_dir), {"path": "saved/pairs"}, {"path": "saved/pairs"},
                                   hyperparameters={"epochs": 6}, **columns))
    assert job["state"] == "succeeded", job
    assert job["result"]["val_accuracy"] >= 0.8


def test_continuing_from_a_job_keeps_its_labels_or_needs_num_labels(service: RunningService,
                                                                    hub_job: dict[str, Any]) -> None:
    rows = [{"sentence": row["text"], "label": int(row["label"] == "positive")} for row in sentiment_rows(80, seed=61)]
    same = spec_of({"job": hub_job["id"]}, {"records": rows}, text_column="sentence")
    report = validate(service, same)
    assert report.status_code == 200, report.text
    assert report.json()["model"]["source"] == "job" and report.json()["labels"] == ["0", "1"]
    job = run_job(service, same)
    assert job["state"] == "succeeded", job
    # The continued model already separates the classes, so its first epoch is good already.
    epoch_one = service.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"][0]
    assert epoch_one["val_accuracy"] >= 0.8

    three = [dict(row, label=index % 3) for index, row in enumerate(rows)]
    differ = problem(validate(service, spec_of({"job": hub_job["id"]}, {"records": three}, text_column="sentence")),
                     422)["report"]["problems"][0]
    assert differ["check"] == "labels_differ" and differ["row"] == 3 and differ["value"] == 2
    assert "num_labels" in differ["message"]
    new_head = spec_of({"job": hub_job["id"]}, {"records": three}, text_column="sentence", num_labels=3)
    assert validate(service, new_head).status_code == 200


# --- model and data errors as job failures ---------------------------------------------------------

@pytest.fixture
def broken_models(tiny_model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Model folders that cannot be trained: an unsupported type, corrupt weights, a corrupt config."""
    unsupported = tmp_path / "llama-like"
    corrupt = tmp_path / "corrupt-weights"
    bad_config = tmp_path / "bad-config"
    for folder in (unsupported, corrupt, bad_config):
        shutil.copytree(tiny_model_dir, folder)
    config = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps({**config, "model_type": "llama",
                                                         "architectures": ["LlamaModel"]}))
    (corrupt / "tf_model.h5").write_bytes(b"these are not weights" * 100)
    (bad_config / "config.json").write_text("{not json")
    return {"unsupported": unsupported, "corrupt": corrupt, "bad_config": bad_config}


def test_model_problems_fail_jobs_with_distinct_codes(service: RunningService, broken_models: dict[str, Path],
                                                      uploads: dict[str, str]) -> None:
    data = {"upload": uploads["train"]}, {"upload": uploads["validation"]}
    cases = [("fitjobs-test/absent-model", "model_not_found", "fitjobs-test/absent-model"),
             ({"hub": "fitjobs-test/tiny-bert", "revision": "v404"}, "model_not_found", "v404"),
             (str(broken_models["unsupported"]), "unsupported_model", "'llama'"),
             (str(broken_models["corrupt"]), "model_load_failed", "weights")]
    dry = {}
    for model, code, named in cases[:3]:
        report = problem(validate(service, spec_of(model, *data)), 422)["report"]
        dry[code] = report["problems"]
        assert [p["code"] for p in report["problems"]] == [code] and named in report["problems"][0]["message"]
    # The dry run reads no weights: corrupt weights pass it, a corrupt config does not.
    assert validate(service, spec_of(str(broken_models["corrupt"]), *data)).status_code == 200
    bad = problem(validate(service, spec_of(str(broken_models["bad_config"]), *data)), 422)["report"]["problems"]
    assert bad[0]["code"] == "model_load_failed"
    for model, code, named in cases:
        job = run_job(service, spec_of(model, *data), timeout=120)
        assert job["state"] == "failed" and job["error"]["code"] == code, job
        assert named in job["error"]["message"] and job["error"]["retryable"] is False


def test_a_data_problem_fails_the_job_before_the_model_loads(service: RunningService, tiny_model_dir: Path,
                                                             tmp_path: Path) -> None:
    validation = sentiment_rows(20, seed=71)
    validation[11]["label"] = "mixed"
    train = upload(service, write_table(sentiment_rows(60, seed=70), tmp_path / "train.parquet"))
    bad = upload(service, write_table(validation, tmp_path / "validation.csv"))
    job = run_job(service, spec_of(str(tiny_model_dir), {"upload": train["id"]}, {"upload": bad["id"]}),
                  timeout=120)
    assert job["state"] == "failed" and job["error"]["code"] == "invalid_data", job
    message = job["error"]["message"]
    assert "'label'" in message and "row 12" in message and "'mixed'" in message
    kinds = event_kinds(service, job["id"])
    assert "model_loaded" not in kinds and "data_loaded" not in kinds
