"""`fitjobs worker --once`: a worker sized to one job, as a pod scaled from the queue runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from service.config import Settings
from service.jobs import JobState
from service.schemas import TrainingSpecSchema
from service.store import open_store
from tests.support.service import REPO_ROOT, service_env

# Two labels are needed to train; one class fails as invalid_data before any model is read,
# so the claimed job ends within a trainer's start-up.
ONE_CLASS = TrainingSpecSchema().load(
    {"model": "m", "data": {"train": {"records": [{"text": f"t{i}", "label": "a"} for i in range(8)]}}})


def run_once(home: Path, *args: str, gpus: str = "none", gpu_type: str = "",
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = service_env(home, None, {"FITJOBS_GPUS": gpus, "FITJOBS_WARM_TRAINERS": "0", "FITJOBS_GPU_TYPE": gpu_type})
    return subprocess.run([sys.executable, "-m", "service.cli", "worker", "--once", *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def settings_of(home: Path) -> Settings:
    settings = Settings.from_env(service_env(home, None))
    settings.ensure_dirs()
    return settings


def test_it_exits_0_after_the_wait_when_no_job_of_its_size_is_queued(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(settings_of(home).database_url)
    other_size, _ = store.create_job(ONE_CLASS, gpus=1)
    started = time.monotonic()
    finished = run_once(home, "--gpus", "2", "--wait", "2", gpus="0,1")
    took = time.monotonic() - started
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert 2 <= took < 60
    assert "no job of 2 GPU(s) came within 2 s" in finished.stderr
    job = store.get_job(other_size.id)
    assert job.state is JobState.QUEUED and job.attempt == 0
    assert store.live_workers(since=job.created_at) == []  # it deregistered


def test_it_claims_only_a_job_of_its_size_trains_it_and_exits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(settings_of(home).database_url)
    single, _ = store.create_job(ONE_CLASS, gpus=1, priority=9)  # first in line, but not its size
    double, _ = store.create_job(ONE_CLASS, gpus=2)
    later_double, _ = store.create_job(ONE_CLASS, gpus=2)
    finished = run_once(home, "--gpus", "2", "--wait", "30", gpus="0,1")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "its one job ended" in finished.stderr
    ran = store.get_job(double.id)
    assert ran.state is JobState.FAILED and ran.attempt == 1, ran
    assert ran.error is not None and ran.error.code == "invalid_data"
    # One job only: the other 2-GPU job and the 1-GPU job are still queued, never attempted.
    for job_id in (single.id, later_double.id):
        job = store.get_job(job_id)
        assert job.state is JobState.QUEUED and job.attempt == 0
    assert store.queue_depth(2) == 1 and store.queue_depth(1) == 1


def test_a_typed_worker_claims_only_a_job_of_its_gpu_type(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(settings_of(home).database_url)
    untyped, _ = store.create_job(ONE_CLASS, gpus=1, priority=9)
    other, _ = store.create_job(ONE_CLASS, gpus=1, gpu_type="a100")
    mine, _ = store.create_job(ONE_CLASS, gpus=1, gpu_type="h100")
    finished = run_once(home, "--gpus", "1", "--wait", "30", gpus="0", gpu_type="h100")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert store.get_job(mine.id).attempt == 1
    assert [store.get_job(job.id).attempt for job in (untyped, other)] == [0, 0]


def test_a_worker_with_another_number_of_gpus_than_asked_does_not_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = open_store(settings_of(home).database_url)
    job, _ = store.create_job(ONE_CLASS, gpus=1)
    finished = run_once(home, "--gpus", "2", "--wait", "5", gpus="0")
    assert finished.returncode == 3
    assert "--gpus 2, but this worker has 1 GPU(s)" in finished.stderr
    assert store.get_job(job.id).attempt == 0
