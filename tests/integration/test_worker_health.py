"""Real `fitjobs worker` processes: refusing GPUs it cannot see, and `fitjobs worker --check` failing
within FITJOBS_WORKER_HEALTH_SECONDS of a loop that hangs or a process that is stopped."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from service.config import Settings
from service.store import JobStore, open_store
from service.store.job_store import utcnow
from tests.support.service import REPO_ROOT, descendants, service_env, spawn, start_service

HEALTH_SECONDS = 3.0
LEASE_SECONDS = "2"  # worker heartbeats every 0.5 s


def worker_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fitjobs worker --check`, as a Kubernetes exec probe runs it."""
    return subprocess.run([sys.executable, "-m", "service.cli", "worker", "--check"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def seconds_until_check_fails(env: dict[str, str], limit: float) -> float:
    """Run the check until it fails; the seconds that took (fails the test after ``limit``)."""
    started = time.monotonic()
    while True:
        check = worker_check(env)
        if check.returncode != 0:
            assert "unhealthy" in check.stderr and "FITJOBS_WORKER_HEALTH_SECONDS=3" in check.stderr, check.stderr
            return time.monotonic() - started
        assert time.monotonic() - started < limit, f"the check still passes: {check.stdout}"
        time.sleep(0.2)


class Worker:
    """A `fitjobs worker` process on a SQLite home, with the environment its probes use."""

    def __init__(self, home: Path) -> None:
        self.env = service_env(home, None, {"FITJOBS_WORKER_HEALTH_SECONDS": str(HEALTH_SECONDS),
                                            "FITJOBS_LEASE_SECONDS": LEASE_SECONDS,
                                            "FITJOBS_WARM_TRAINERS": "0"})
        self.settings = Settings.from_env(self.env)
        self.log = home / "worker.log"
        self.process = spawn("worker", self.env, self.log)

    def wait_until_healthy(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        deadline = time.monotonic() + timeout
        while True:
            check = worker_check(self.env)
            if check.returncode == 0:
                return check
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"never healthy: {check.stderr}\n{self.log.read_text()}"
            time.sleep(0.3)

    def store(self) -> JobStore:
        return open_store(self.settings.database_url, migrate=False)

    def is_live(self, store: JobStore) -> bool:
        """Whether the worker's database heartbeat is fresh (younger than two renewals and some)."""
        since = utcnow() - timedelta(seconds=1.5)
        return any(worker.id.endswith(f":{self.process.pid}") for worker in store.live_workers(since=since))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    started = Worker(tmp_path / "home")
    try:
        yield started
    finally:
        started.kill()


def test_a_hung_loop_fails_the_check_within_the_health_window(worker: Worker) -> None:
    healthy = worker.wait_until_healthy()
    assert "completed a pass" in healthy.stdout
    store = worker.store()
    try:
        assert worker.is_live(store)
        # The next job's trainer log is a FIFO nobody reads: the loop blocks opening it, as it
        # would on a stalled volume, while the process and its lease thread live on. The worker
        # is stopped meanwhile so that it cannot claim the job before the FIFO is in place.
        worker.process.send_signal(signal.SIGSTOP)
        job, _ = store.create_job({"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}})
        trainer_log = worker.settings.attempt_dir(job.id, 1) / "trainer.log"
        trainer_log.parent.mkdir(parents=True)
        os.mkfifo(trainer_log)
        worker.process.send_signal(signal.SIGCONT)
        hung_at = time.monotonic()

        failed_after = seconds_until_check_fails(worker.env, limit=HEALTH_SECONDS + 10)
        print(f"\nhung loop: `fitjobs worker --check` failed {failed_after:.1f} s after the hang "
              f"(FITJOBS_WORKER_HEALTH_SECONDS={HEALTH_SECONDS:g})")
        assert failed_after <= HEALTH_SECONDS + 2
        assert worker.process.poll() is None, "the process runs on; only its loop is stuck"
        assert store.get_job(job.id).state.value == "running", "the loop hung after claiming the job"
        assert stat.S_ISFIFO(trainer_log.stat().st_mode)
        # The lease thread lives on but no longer vouches for the stuck loop.
        deadline = hung_at + HEALTH_SECONDS + 10
        while worker.is_live(store):
            assert time.monotonic() < deadline, "the worker heartbeat is still renewed for a hung loop"
            time.sleep(0.2)
    finally:
        store.engine.dispose()
    assert "GPUs from FITJOBS_GPUS, not discovered: none" in worker.log.read_text()
    assert "GPU discovery:" not in worker.log.read_text(), "FITJOBS_GPUS=none runs no discovery"


def test_a_stopped_worker_fails_the_check_and_passes_again_once_resumed(worker: Worker) -> None:
    worker.wait_until_healthy()
    worker.process.send_signal(signal.SIGSTOP)
    failed_after = seconds_until_check_fails(worker.env, limit=HEALTH_SECONDS + 10)
    assert failed_after <= HEALTH_SECONDS + 2
    worker.process.send_signal(signal.SIGCONT)
    worker.wait_until_healthy(timeout=10)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 0


def test_a_worker_given_gpus_it_cannot_see_refuses_to_start(tmp_path: Path) -> None:
    """nvidia-smi is a stand-in that lists nothing; TensorFlow is the real one, asked in a subprocess,
    with CUDA_VISIBLE_DEVICES empty so that it finds no GPU on any machine."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    nvidia_smi = fake_bin / "nvidia-smi"
    nvidia_smi.write_text("#!/bin/sh\nexit 0\n")
    nvidia_smi.chmod(0o755)
    home = tmp_path / "home"
    env = service_env(home, None, {"FITJOBS_GPUS": "auto", "NVIDIA_VISIBLE_DEVICES": "all",
                                   "CUDA_VISIBLE_DEVICES": "",
                                   "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}"})
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    print(f"\nrefused in {time.monotonic() - started:.1f} s")
    assert done.returncode == 3, done.stderr
    refusal = next(line for line in done.stderr.splitlines() if line.startswith("fitjobs worker: not starting"))
    assert "NVIDIA_VISIBLE_DEVICES=all say this worker was given GPUs, but it can see none" in refusal
    assert "nvidia-smi: listed no GPU" in refusal
    assert "tensorflow: found no GPU" in refusal, "the real probe ran and answered"
    assert "CUDA_VISIBLE_DEVICES='' hides every GPU from CUDA" in refusal
    assert "GPU discovery: asking TensorFlow in a subprocess" in done.stderr, "the log says which source ran"
    store = open_store(Settings.from_env(env).database_url, migrate=False)
    try:
        assert store.live_workers(since=utcnow() - timedelta(days=1)) == [], "no worker registered 0 GPUs"
    finally:
        store.engine.dispose()
    assert worker_check(env).returncode == 1, "a worker that never ran is not healthy"


def test_serve_check_needs_both_the_supervisor_loop_and_the_api(tmp_path: Path) -> None:
    extra = {"FITJOBS_WORKER_HEALTH_SECONDS": str(HEALTH_SECONDS), "FITJOBS_WARM_TRAINERS": "0"}
    service = start_service(tmp_path / "home", extra_env=extra)
    env = service_env(service.home, int(service.url.rsplit(":", 1)[1]), extra)

    def serve_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", "serve", "--check"], env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=60)

    try:
        deadline = time.monotonic() + 60
        while (check := serve_check()).returncode != 0:
            assert time.monotonic() < deadline, check.stderr
            time.sleep(0.3)
        assert f"the API at {service.url}/healthz answered 200" in check.stdout
        [supervisor] = [pid for pid in descendants(service.process.pid)
                        if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        os.kill(supervisor, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + HEALTH_SECONDS + 10
            while (check := serve_check()).returncode == 0:
                assert time.monotonic() < deadline, "serve --check passes with a stopped supervisor"
                time.sleep(0.2)
            assert "fitjobs worker: unhealthy" in check.stderr
        finally:
            os.kill(supervisor, signal.SIGCONT)
    finally:
        assert service.stop() == 0
    check = serve_check()
    assert check.returncode == 1 and "no heartbeat file" in check.stderr, "a stopped supervisor removes its file"
