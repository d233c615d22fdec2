"""The API's side of sources: uploads in use by queued jobs, checks that run out of time, unknown references."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from tests.support.sentiment_data import sentiment_rows, write_table


@pytest.fixture
def slow_app(tmp_path: Path) -> Iterator[Flask]:
    """An app whose checks may take 1 ms: every dry run and upload check runs out of time."""
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_CHECK_TIMEOUT": "0.001"})
    app = create_app(settings, test_config={"TESTING": True})
    yield app
    app.extensions["fitjobs.store"].engine.dispose()


def spec(train: dict[str, Any], model: Any = "bert-base-uncased") -> dict[str, Any]:
    return {"model": model, "data": {"train": train}}


def test_checks_that_run_out_of_time_are_503_and_leave_nothing(slow_app: Flask, tmp_path: Path) -> None:
    client = slow_app.test_client()
    response = client.post("/v1/jobs:validate", json=spec({"records": sentiment_rows(10, seed=1)}))
    assert response.status_code == 503 and response.mimetype == "application/problem+json"
    assert "dry run could not finish" in response.get_json()["detail"]
    path = write_table(sentiment_rows(10, seed=1), tmp_path / "rows.csv")
    response = client.post("/v1/datasets", data={"file": (path.open("rb"), "rows.csv")})
    assert response.status_code == 503 and "could not be checked" in response.get_json()["detail"]
    assert list((tmp_path / "home" / "uploads").iterdir()) == []
    assert client.get("/v1/datasets").get_json()["datasets"] == []


def test_an_upload_read_by_a_queued_job_cannot_be_deleted(client: FlaskClient, tmp_path: Path) -> None:
    path = write_table(sentiment_rows(10, seed=1), tmp_path / "rows.csv")
    dataset = client.post("/v1/datasets", data={"file": (path.open("rb"), "rows.csv")}).get_json()
    job = client.post("/v1/jobs", json=spec({"upload": dataset["id"]})).get_json()
    response = client.delete(f"/v1/datasets/{dataset['id']}")
    assert response.status_code == 409 and response.get_json()["jobs"] == [job["id"]]
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204


@pytest.mark.parametrize("model,field", [({"job": "job_" + "0" * 32}, "model.job"),
                                         ({"path": "../outside"}, "model.path")])
def test_unknown_jobs_and_escaping_model_paths_are_422(client: FlaskClient, model: Any, field: str) -> None:
    response = client.post("/v1/jobs", json=spec({"records": sentiment_rows(4, seed=1)}, model=model))
    assert response.status_code == 422 and field in response.get_json()["errors"]


def test_continuing_from_a_job_that_has_not_succeeded_is_422(client: FlaskClient) -> None:
    queued = client.post("/v1/jobs", json=spec({"records": sentiment_rows(4, seed=1)})).get_json()
    response = client.post("/v1/jobs", json=spec({"records": sentiment_rows(4, seed=1)}, model={"job": queued["id"]}))
    assert response.status_code == 422
    assert "is queued" in response.get_json()["errors"]["model.job"][0]


API_PROCESS_PROBE = """
import json, sys, tempfile
from service.api import create_app
from service.config import Settings
home = tempfile.mkdtemp()
settings = Settings.from_env({"FITJOBS_HOME": home, "HF_HUB_OFFLINE": "1", "HF_HOME": home + "/hf"})
app = create_app(settings, test_config={"TESTING": True})
client = app.test_client()
rows = [{"text": "good film" if i % 2 else "dull film", "label": i % 2} for i in range(12)]
upload = client.post("/v1/datasets?filename=rows.jsonl", data="".join(json.dumps(r) + "\\n" for r in rows),
                     content_type="application/octet-stream")
report = client.post("/v1/jobs:validate", json={"model": "org/not-cached", "data": {"train": {"records": rows}}})
print(json.dumps({"upload": upload.status_code, "validate": report.status_code,
                  "problem": report.get_json()["report"]["problems"][0]["code"],
                  "imported": sorted(m for m in ("tensorflow", "transformers", "datasets", "torch")
                                     if m in sys.modules)}))
"""


def test_the_api_process_never_imports_tensorflow_transformers_or_datasets() -> None:
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", API_PROCESS_PROBE], cwd=repo, capture_output=True, text=True,
                          timeout=120, check=True)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"upload": 201, "validate": 422, "problem": "model_not_found", "imported": []}, \
        done.stderr[-2000:]


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/self/cwd/README.md", "/proc/1/root/etc/passwd",
                                  "/sys/kernel/notes", "/dev/zero"])
@pytest.mark.parametrize("endpoint", ["/v1/jobs", "/v1/jobs:validate"])
def test_data_paths_into_proc_sys_and_dev_are_422_naming_the_rule_only(client: FlaskClient, path: str,
                                                                      endpoint: str) -> None:
    import os

    response = client.post(endpoint, json=spec({"path": path}))
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    message = response.get_json()["errors"]["data.train.path"][0]
    assert "leads into /proc, /sys or /dev" in message
    assert os.getcwd() not in response.get_data(as_text=True)
    assert client.get("/v1/jobs").get_json()["jobs"] == []
