"""Warm trainers with the real service: jobs start in a pre-imported process, used once.

The module's service lends a GPU id (7) on a machine where TensorFlow finds no such GPU, so
the fit runs on the CPU while the test sees what CUDA_VISIBLE_DEVICES the trainer was given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.store import open_store
from tests.support.postgres import temporary_database
from tests.support.sentiment_data import sentiment_rows
from tests.support.service import REPO_ROOT, RunningService, alive, service_env, spawn, start_service, trainer_pids

LENT_GPU = "7"
FINAL_STATES = {"succeeded", "failed", "cancelled"}


def spec(model_dir: Path, rows: int = 64, **hyper: Any) -> dict[str, Any]:
    hyperparameters = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 16, "seed": 1}
    hyperparameters.update(hyper)
    return {"model": str(model_dir),
            "data": {"train": {"records": sentiment_rows(rows, seed=5)},
                     "validation": {"records": sentiment_rows(16, seed=6)}},
            "hyperparameters": hyperparameters}


def submit(service: RunningService, body: dict[str, Any]) -> dict[str, Any]:
    response = service.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def idle_warm_pids(home: Path) -> list[int]:
    """Warm trainers of the service at ``home`` that have no job yet (they still work in home)."""
    found = []
    for pid in trainer_pids(home=home):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"service.trainer.warm" in argv and cwd == str(home):
            found.append(pid)
    return found


def wait_for_ready_warm(home: Path, timeout: float = 120, besides: int | None = None) -> int:
    """The pid of the one idle warm trainer at ``home`` once its imports are done."""
    deadline = time.monotonic() + timeout
    pids: list[int] = []
    while time.monotonic() < deadline:
        pids = [pid for pid in idle_warm_pids(home) if pid != besides]
        log = home / "warm-trainer.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        if len(pids) == 1 and f"warm trainer pid {pids[0]} ready" in text:
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no ready warm trainer in {home} after {timeout} s (idle: {pids})")


def events_of(service: RunningService, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in service.get(f"/v1/jobs/{job_id}/events").json()["events"] if e["kind"] == kind]


def wait_for_step(service: RunningService, job_id: str, step: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(f"/v1/jobs/{job_id}").json()
        if job["state"] == "running" and job["progress"]["step"] >= step:
            return job
        assert job["state"] in {"queued", "running"}, job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached step {step}")


@pytest.fixture(scope="module")
def warm_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("warm"), extra_env={"FITJOBS_GPUS": LENT_GPU})
    yield running
    assert running.stop() == 0, running.output()[-3000:]
    assert trainer_pids(home=running.home) == [], "stopping the service ends its warm trainers too"


def test_warming_imports_touch_no_device() -> None:
    code = ("import json\n"
            "from service.trainer.attempt import import_training_libraries\n"
            "from service.trainer.warm import tensorflow_runtime_started\n"
            "import_training_libraries(2)\n"
            "warm = tensorflow_runtime_started()\n"
            "import tensorflow as tf\n"
            "tf.config.threading.set_inter_op_parallelism_threads(1)  # refused once the runtime runs\n"
            "tf.constant(1)\n"
            "print(json.dumps({'after_imports': warm, 'after_an_op': tensorflow_runtime_started()}))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"after_imports": False, "after_an_op": True}


def test_a_job_starts_in_the_ready_warm_trainer_and_sees_its_gpus(
        warm_service: RunningService, tiny_model_dir: Path, tmp_path: Path) -> None:
    pid = wait_for_ready_warm(warm_service.home)
    job = submit(warm_service, spec(tiny_model_dir, rows=120, epochs=2))
    done = warm_service.wait_for_state(job["id"], FINAL_STATES, timeout=300)
    assert done["state"] == "succeeded", done
    [started] = events_of(warm_service, job["id"], "trainer_started")
    data = started["data"]
    print(f"\nwarm trainer: started {data['startup_seconds']} s after its assignment")
    assert data["warm"] is True and data["pid"] == pid
    assert data["cuda_visible_devices"] == LENT_GPU
    assert data["imports_waited_seconds"] < 1.0, "the imports were done before the job came"
    assert 0 <= data["startup_seconds"] < 5.0, data

    log = warm_service.get(f"/v1/jobs/{job['id']}/logs").text
    assert f"runs job {job['id']} attempt 1 with CUDA_VISIBLE_DEVICES='{LENT_GPU}'" in log
    assert "Epoch 2/2" in log and "ready after" not in log, "the job's log starts at its assignment"
    warm_log = (warm_service.home / "warm-trainer.log").read_text()
    assert f"warm trainer pid {pid} takes job {job['id']}" in warm_log and "Epoch" not in warm_log

    phases = {e["data"]["phase"]: e["data"]["seconds"] for e in events_of(warm_service, job["id"], "phase_finished")}
    assert phases["startup"] == pytest.approx(data["startup_seconds"], abs=0.01), "the fit got the timings"
    assert phases["queued"] >= 0

    metrics = warm_service.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][1]["loss"] < metrics["epochs"][0]["loss"], "the loss falls"
    assert set(metrics["phases"]) >= {"queued", "startup", "data", "tokenize", "model_load", "fit", "publish"}
    model_dir = warm_service.home / "artifacts" / job["id"] / "model"
    script = ("import os, json, sys; os.environ['TF_USE_LEGACY_KERAS'] = '1'\n"
              "import tensorflow as tf\n"
              "from transformers import AutoTokenizer, TFAutoModelForSequenceClassification\n"
              "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
              "model = TFAutoModelForSequenceClassification.from_pretrained(sys.argv[1])\n"
              "ids = tf.argmax(model(**tok(['a great film', 'a dull film'], padding=True,"
              " return_tensors='tf')).logits, -1).numpy()\n"
              "print(json.dumps([model.config.id2label[int(i)] for i in ids]))\n")
    out = subprocess.run([sys.executable, "-c", script, str(model_dir)], capture_output=True, text=True,
                         timeout=300, check=True)
    predicted = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(predicted) == 2 and set(predicted) <= {"negative", "positive"}


def test_a_killed_idle_warm_trainer_is_replaced_and_the_next_job_starts_warm(
        warm_service: RunningService, tiny_model_dir: Path) -> None:
    first = wait_for_ready_warm(warm_service.home)
    os.kill(first, signal.SIGKILL)
    second = wait_for_ready_warm(warm_service.home, besides=first)
    assert f"warm trainer pid {first} exited with status -9 while idle" in warm_service.output()

    job = submit(warm_service, spec(tiny_model_dir))
    done = warm_service.wait_for_state(job["id"], FINAL_STATES, timeout=300)
    assert done["state"] == "succeeded", done
    [started] = events_of(warm_service, job["id"], "trainer_started")
    assert started["data"]["warm"] is True and started["data"]["pid"] == second


def test_a_job_in_a_warm_trainer_is_cancelled(warm_service: RunningService, tiny_model_dir: Path) -> None:
    pid = wait_for_ready_warm(warm_service.home)
    job = submit(warm_service, spec(tiny_model_dir, epochs=100, batch_size=2))
    wait_for_step(warm_service, job["id"], 1)
    assert trainer_pids(job["id"]) == [pid]
    [started] = events_of(warm_service, job["id"], "trainer_started")
    assert started["data"]["warm"] is True

    asked = time.monotonic()
    assert warm_service.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = warm_service.wait_for_state(job["id"], FINAL_STATES, timeout=20)
    assert done["state"] == "cancelled", done
    assert time.monotonic() - asked < 15
    assert alive([pid]) == [] and trainer_pids(job["id"]) == []
    assert warm_service.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"] == []


def test_without_warm_trainers_each_job_starts_cold(tmp_path: Path, tiny_model_dir: Path) -> None:
    service = start_service(tmp_path / "home", extra_env={"FITJOBS_WARM_TRAINERS": "0"})
    try:
        job = submit(service, spec(tiny_model_dir))
        done = service.wait_for_state(job["id"], FINAL_STATES, timeout=300)
        assert done["state"] == "succeeded", done
        [started] = events_of(service, job["id"], "trainer_started")
    finally:
        assert service.stop() == 0
    data = started["data"]
    print(f"\ncold trainer: started {data['startup_seconds']} s after its process")
    assert data["warm"] is False and "imports_waited_seconds" not in data
    assert data["startup_seconds"] >= 1.0, "a cold trainer's startup includes importing TensorFlow"
    assert not (service.home / "warm-trainer.log").exists()
    log = (service.home / "jobs" / job["id"] / "attempt-1" / "trainer.log").read_text()
    assert "fit_started" in log and "warm trainer" not in log


def test_a_drained_warm_job_is_requeued_free_and_finished_by_a_new_supervisor(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    with temporary_database() as url:
        api = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_DATABASE_URL": url})
        env = service_env(api.home, None, {"FITJOBS_DATABASE_URL": url})
        workers = [spawn("worker", env, api.home / "worker-1.log")]
        try:
            pid = wait_for_ready_warm(api.home)
            # 500 steps an epoch: the drain lands in epoch 1 however fast the steps are.
            job = submit(api, {**spec(tiny_model_dir, rows=1000, epochs=2, batch_size=2), "max_attempts": 1})
            wait_for_step(api, job["id"], 10)
            assert trainer_pids(job["id"]) == [pid]
            workers[0].send_signal(signal.SIGTERM)
            assert workers[0].wait(timeout=60) == 0
            assert alive([pid]) == []
            store = open_store(url, migrate=False)
            requeued = store.get_job(job["id"])
            assert requeued.state.value == "queued" and requeued.attempts_spent == 0

            workers.append(spawn("worker", env, api.home / "worker-2.log"))
            done = api.wait_for_state(job["id"], FINAL_STATES, timeout=300)
            assert done["state"] == "succeeded" and done["attempt"] == 2, done
            assert store.get_job(job["id"]).attempts_spent == 1
            store.engine.dispose()
            [checkpointed] = events_of(api, job["id"], "checkpointed")
            [resumed] = events_of(api, job["id"], "resumed")
            first_start, second_start = (e["data"] for e in events_of(api, job["id"], "trainer_started"))
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(timeout=60)
            assert api.stop() == 0
        assert trainer_pids(home=api.home) == []
    # The drained trainer checkpointed where it stood; attempt 2 went on from there.
    assert checkpointed["data"]["epoch"] == 1 and checkpointed["data"]["steps_done"] >= 10, checkpointed
    assert resumed["data"] == checkpointed["data"]
    assert first_start["warm"] is True and first_start["pid"] == pid
    # The new supervisor claimed the job while its warm trainer was still importing: the job waited.
    print(f"\nattempt 2 waited {second_start['imports_waited_seconds']} s for a warm trainer's imports")
    assert second_start["warm"] is True and second_start["pid"] != pid
    assert second_start["imports_waited_seconds"] > 0.5
