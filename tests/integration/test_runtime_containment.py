"""Containment when a job runs: paths accepted at submit time are checked again when the trainer loads them.

An API process accepts two jobs; while they wait in the queue (no worker runs yet), the model
folder is swapped for a link to a model outside the model roots and a data file for a link
into /proc. A worker started afterwards fails both with clear codes, and the messages say
which rule was broken without naming where the links lead.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import service_env, spawn, start_service

HYPER = {"epochs": 1, "batch_size": 8, "max_length": 16}


def spec_of(model: dict[str, str], train_path: str) -> dict[str, object]:
    return {"model": model, "data": {"train": {"path": train_path}, "validation": {"split_fraction": 0.2}},
            "hyperparameters": HYPER}


def test_links_swapped_in_while_jobs_are_queued_fail_them_when_they_run(tiny_model_dir: Path,
                                                                         tmp_path: Path) -> None:
    api = start_service(tmp_path / "home", role="api")
    outside = Path(tempfile.mkdtemp(prefix="fitjobs-outside-"))
    worker = None
    try:
        inside = tmp_path / "models" / "tiny"  # under pytest's folders: a model root in tests
        shutil.copytree(tiny_model_dir, inside)
        shutil.copytree(tiny_model_dir, outside / "tiny")
        write_table(sentiment_rows(40, seed=1), api.data_root / "rows.csv")
        write_table(sentiment_rows(40, seed=2), api.data_root / "later.csv")
        model_job = api.post("/v1/jobs", json=spec_of({"path": str(inside)}, "rows.csv"))
        data_job = api.post("/v1/jobs", json=spec_of({"path": str(inside)}, "later.csv"))
        assert model_job.status_code == 201 and data_job.status_code == 201, (model_job.text, data_job.text)

        shutil.rmtree(inside)
        inside.symlink_to(outside / "tiny")
        # The second job checks its data before its model, so it fails on the link into /proc.
        (api.data_root / "later.csv").unlink()
        (api.data_root / "later.csv").symlink_to("/proc/self/environ")

        worker = spawn("worker", service_env(api.home, None), api.home / "worker.log")
        failed_model = api.wait_for_state(model_job.json()["id"], {"succeeded", "failed"}, timeout=180)
        failed_data = api.wait_for_state(data_job.json()["id"], {"succeeded", "failed"}, timeout=180)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        api.stop()
        shutil.rmtree(outside, ignore_errors=True)

    assert failed_data["state"] == "failed" and failed_data["error"]["code"] == "invalid_data", failed_data
    assert "leads into /proc" in failed_data["error"]["message"]
    assert failed_model["state"] == "failed" and failed_model["error"]["code"] == "model_not_found", failed_model
    message = failed_model["error"]["message"]
    assert "outside the model root" in message and "when the job loads it" in message
    assert str(outside) not in message and "fitjobs-outside" not in message
