"""Deleting jobs and retention through the real service: a tiny BERT trains, its files are there, then gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService, start_service, trainer_pids

DONE = {"succeeded", "failed", "cancelled"}
PROBLEM = "application/problem+json"


def spec(model: Any) -> dict[str, Any]:
    return {"model": model,
            "data": {"train": {"path": "delete/train.csv"}, "validation": {"split_fraction": 0.25}},
            "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, "seed": 1}}


def submit(service: RunningService, body: dict[str, Any]) -> dict[str, Any]:
    response = service.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def delete(service: RunningService, job_id: str) -> requests.Response:
    return requests.delete(f"{service.url}/v1/jobs/{job_id}", timeout=30)


def files_of(home: Path, job_id: str) -> list[Path]:
    return [home / "jobs" / job_id, home / "artifacts" / job_id, home / "cache" / f"{job_id}.model.tar.gz"]


def test_a_finished_job_is_deleted_with_its_files_and_a_parent_is_kept_for_its_queued_continuation(
        service: RunningService, tiny_model_dir: Path) -> None:
    write_table(sentiment_rows(80, seed=3), service.data_root / "delete" / "train.csv")
    parent = submit(service, spec(str(tiny_model_dir)))
    busy = delete(service, parent["id"])
    assert busy.status_code == 409 and busy.headers["Content-Type"] == PROBLEM
    assert busy.json()["state"] in {"queued", "running"}
    trained = service.wait_for_state(parent["id"], DONE, timeout=300)
    assert trained["state"] == "succeeded", trained
    assert service.get(f"/v1/jobs/{parent['id']}/model.tar.gz").status_code == 200  # caches a tarball
    assert all(path.exists() for path in files_of(service.home, parent["id"]))

    child = submit(service, spec({"job": parent["id"]}))
    refused = delete(service, parent["id"])
    assert refused.status_code == 409 and refused.headers["Content-Type"] == PROBLEM
    assert refused.json()["jobs"] == [child["id"]] and child["id"] in refused.json()["detail"]
    assert delete(service, child["id"]).status_code == 409
    assert service.get(f"/v1/jobs/{parent['id']}").json()["state"] == "succeeded"
    assert all(path.exists() for path in files_of(service.home, parent["id"])), "the parent stays whole"

    assert service.post(f"/v1/jobs/{child['id']}/cancel").status_code == 200
    assert service.wait_for_state(child["id"], DONE, timeout=120)["state"] == "cancelled"
    assert delete(service, child["id"]).status_code == 204
    gone = delete(service, parent["id"])
    assert gone.status_code == 204 and gone.content == b""
    for path in (f"/v1/jobs/{parent['id']}", f"/v1/jobs/{parent['id']}/artifacts",
                 f"/v1/jobs/{parent['id']}/model.tar.gz", f"/v1/jobs/{parent['id']}/events",
                 f"/v1/jobs/{child['id']}"):
        assert service.get(path).status_code == 404, path
    assert not any(path.exists() for job_id in (parent["id"], child["id"])
                   for path in files_of(service.home, job_id))
    assert delete(service, parent["id"]).status_code == 404
    assert parent["id"] not in {job["id"] for job in service.get("/v1/jobs").json()["jobs"]}


@pytest.fixture(scope="module")
def pruning_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`fitjobs serve` keeping finished jobs 5 seconds, with a retention pass every second."""
    running = start_service(tmp_path_factory.mktemp("pruning"),
                            extra_env={"FITJOBS_RETENTION_DAYS": str(5 / 86400),
                                       "FITJOBS_RETENTION_INTERVAL_SECONDS": "1"})
    yield running
    assert running.stop() == 0, running.output()[-3000:]
    assert trainer_pids(home=running.home) == []


def test_the_supervisor_prunes_finished_jobs_past_the_retention_period(pruning_service: RunningService) -> None:
    service = pruning_service
    # Neither its data nor its model is there: the trainer starts, writes its log and fails at once.
    failing = submit(service, spec({"path": str(service.home / "models" / "missing")}))
    ended = service.wait_for_state(failing["id"], DONE, timeout=300)
    assert ended["state"] == "failed", ended
    assert (service.home / "jobs" / failing["id"]).is_dir()
    deadline = time.monotonic() + 120
    while service.get(f"/v1/jobs/{failing['id']}").status_code != 404 and time.monotonic() < deadline:
        time.sleep(0.3)  # passes run every second; the job is due 5 seconds after it ended
    assert service.get(f"/v1/jobs/{failing['id']}").status_code == 404, service.output()[-3000:]
    assert not (service.home / "jobs" / failing["id"]).exists()
    assert "retention: deleted 1 job(s)" in service.output()
