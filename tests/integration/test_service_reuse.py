"""Reuse through the real service: a tiny BERT trains once, an identical spec with `reuse` takes its files at once."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService

DONE = {"succeeded", "failed", "cancelled"}


def reuse_spec(model_dir: Path, **top: Any) -> dict[str, Any]:
    return {"model": str(model_dir),
            "data": {"train": {"path": "reuse/train.csv"}, "validation": {"path": "reuse/val.jsonl"}},
            "hyperparameters": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, "seed": 1},
            **top}


@pytest.fixture(scope="module")
def train_file(service: RunningService) -> Path:
    folder = service.data_root / "reuse"
    write_table(sentiment_rows(120, seed=5), folder / "train.csv")
    write_table(sentiment_rows(40, seed=6), folder / "val.jsonl")
    return folder / "train.csv"


def submit(service: RunningService, spec: dict[str, Any]) -> dict[str, Any]:
    response = service.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def artifacts(service: RunningService, job_id: str) -> list[dict[str, Any]]:
    return service.get(f"/v1/jobs/{job_id}/artifacts").json()["artifacts"]


def test_identical_spec_reuses_changed_data_and_reuse_false_train(
        service: RunningService, tiny_model_dir: Path, train_file: Path) -> None:
    source = submit(service, reuse_spec(tiny_model_dir, reuse=True))
    assert source["state"] == "queued" and source["reused_from"] is None, "nothing to reuse yet: it trains"
    trained = service.wait_for_state(source["id"], DONE, timeout=300)
    assert trained["state"] == "succeeded", trained

    started = time.monotonic()
    response = service.post("/v1/jobs", json=reuse_spec(tiny_model_dir, reuse=True, priority=10))
    elapsed = time.monotonic() - started
    print(f"\nPOST /v1/jobs with reuse: {elapsed * 1000:.0f} ms")
    assert response.status_code == 201, response.text
    reused = response.json()
    assert reused["state"] == "succeeded" and reused["reused_from"] == source["id"]
    assert elapsed < 1.0, f"the reuse took {elapsed:.2f} s"
    assert reused["result"] == trained["result"]
    assert service.get(f"/v1/jobs/{reused['id']}").json()["reused_from"] == source["id"]
    assert [e["kind"] for e in service.get(f"/v1/jobs/{reused['id']}/events").json()["events"]] == ["reused",
                                                                                                     "state"]

    listed = artifacts(service, reused["id"])
    assert listed == artifacts(service, source["id"]) and "model/config.json" in {a["name"] for a in listed}
    spec_file = service.get(f"/v1/jobs/{reused['id']}/artifacts/spec.json")
    assert spec_file.status_code == 200
    assert spec_file.content == service.get(f"/v1/jobs/{source['id']}/artifacts/spec.json").content
    tarball = service.get(f"/v1/jobs/{reused['id']}/model.tar.gz")
    assert tarball.status_code == 200 and tarball.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(tarball.content)) as tar:
        assert "config.json" in tar.getnames()
    assert tarball.content == service.get(f"/v1/jobs/{source['id']}/model.tar.gz").content
    assert service.get(f"/v1/jobs/{reused['id']}/metrics").json() == service.get(
        f"/v1/jobs/{source['id']}/metrics").json()

    again = submit(service, reuse_spec(tiny_model_dir, reuse=False))
    assert again["state"] == "queued" and again["reused_from"] is None
    assert_trains(service, again["id"])  # on the data as it was, before the edit below

    original = train_file.read_bytes()
    changed = original.replace(b"film", b"firm", 1)
    assert len(changed) == len(original) and sum(a != b for a, b in zip(original, changed, strict=True)) == 1
    train_file.write_bytes(changed)
    edited = submit(service, reuse_spec(tiny_model_dir, reuse=True))
    assert edited["state"] == "queued" and edited["reused_from"] is None
    assert_trains(service, edited["id"])


def assert_trains(service: RunningService, job_id: str) -> None:
    """The job is claimed, trains and publishes its own files."""
    done = service.wait_for_state(job_id, DONE, timeout=300)
    assert done["state"] == "succeeded" and done["attempt"] == 1 and done["reused_from"] is None, done
    states = [e["state"] for e in service.get(f"/v1/jobs/{job_id}/events").json()["events"] if e["state"]]
    assert states == ["queued", "running", "succeeded"]
    assert artifacts(service, job_id), "a job that trained publishes its own files"
