"""The supervisor loop's heartbeat file, its check, and lease renewal beside a loop that may hang."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.jobs import Job
from service.store import JobStore, open_store
from service.store.job_store import utcnow
from service.supervisor.child import TrainerProcess
from service.supervisor.health import LoopHeartbeat, check_heartbeat
from service.supervisor.worker import Supervisor

LEASE_SECONDS = 2.0  # renewed every 0.5 s
HEALTH_SECONDS = 4.0


def test_the_check_follows_the_beats_of_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "workers" / "node-1.heartbeat"
    heartbeat = LoopHeartbeat(path)
    missing = check_heartbeat(path, 5)
    assert not missing.healthy and "no heartbeat file" in missing.message
    heartbeat.beat()
    fresh = check_heartbeat(path, 5)
    assert fresh.healthy and f"pid {os.getpid()}" in fresh.message
    late = check_heartbeat(path, 5, now=time.time() + 7)
    assert not late.healthy and "7.0 s ago, more than FITJOBS_WORKER_HEALTH_SECONDS=5" in late.message
    assert heartbeat.seconds_since_beat() < 5
    heartbeat.clear()
    assert not path.exists(), "a new supervisor starts from no beat at all"


def test_beats_go_on_when_the_disk_is_full(tmp_path: Path) -> None:
    """Beats after the first write no data: they only set the file's modification time."""
    path = tmp_path / "beat"
    heartbeat = LoopHeartbeat(path)
    heartbeat.beat()
    os.utime(path, (0, 0))
    size = path.stat().st_size
    heartbeat.beat()
    assert path.stat().st_size == size and time.time() - path.stat().st_mtime < 5


@pytest.fixture
def hang_settings(tmp_path: Path) -> Settings:
    settings = Settings.from_env({
        "FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none", "FITJOBS_WARM_TRAINERS": "0",
        "FITJOBS_MAX_CONCURRENT_JOBS": "2", "FITJOBS_POLL_INTERVAL": "0.1",
        "FITJOBS_LEASE_SECONDS": str(LEASE_SECONDS), "FITJOBS_WORKER_HEALTH_SECONDS": str(HEALTH_SECONDS)})
    settings.ensure_dirs()
    return settings


@pytest.fixture
def sqlite_store(hang_settings: Settings) -> Iterator[JobStore]:
    store = open_store(hang_settings.database_url)
    yield store
    store.engine.dispose()


def test_a_slow_claim_keeps_the_leases_and_a_hung_one_loses_them(hang_settings: Settings, sqlite_store: JobStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop runs in a thread whose claims block on demand, as a database call that hangs would
    (the one stand-in here); the trainer is a real process, the store a real SQLite file."""
    supervisor = Supervisor(hang_settings, sqlite_store)
    created, _ = sqlite_store.create_job({"model": "m"})
    job = sqlite_store.claim_next_job(supervisor.owner, LEASE_SECONDS)
    assert job is not None and job.id == created.id
    attempt_dir = hang_settings.attempt_dir(job.id, job.attempt)
    attempt_dir.mkdir(parents=True)
    trainer = subprocess.Popen(["sleep", "600"], start_new_session=True)
    supervisor.children[job.id] = TrainerProcess(job.id, job.attempt, trainer, attempt_dir)

    hang, release = threading.Event(), threading.Event()
    claim = sqlite_store.claim_next_job

    def claim_that_may_hang(*args: Any, **kwargs: Any) -> Job | None:
        if hang.is_set():
            release.wait()
        return claim(*args, **kwargs)

    monkeypatch.setattr(sqlite_store, "claim_next_job", claim_that_may_hang)
    loop = threading.Thread(target=supervisor.serve, name="supervisor-loop")
    loop.start()
    try:
        deadline = time.monotonic() + 30
        while not check_heartbeat(hang_settings.worker_heartbeat_file, HEALTH_SECONDS).healthy:
            assert time.monotonic() < deadline, "the loop never beat"
            time.sleep(0.1)

        hang.set()
        hung_at = time.monotonic()
        # Slower than a lease, within the health window: the renewer keeps the lease alive.
        while time.monotonic() - hung_at < HEALTH_SECONDS - 1:
            assert sqlite_store.expired_jobs() == [], "a slow pass must not let a lease lapse"
            time.sleep(0.1)
        # Past the health window: the check fails and the lease runs out, the process living on.
        while sqlite_store.expired_jobs() == []:
            assert time.monotonic() - hung_at < HEALTH_SECONDS + LEASE_SECONDS + 10, "the lease was kept"
            time.sleep(0.1)
        lapsed_after = time.monotonic() - hung_at
        assert lapsed_after >= HEALTH_SECONDS - 1
        assert [expired.id for expired in sqlite_store.expired_jobs()] == [job.id]
        assert supervisor.leases.is_alive(), "the renewer is alive, and holds back on purpose"
        report = check_heartbeat(hang_settings.worker_heartbeat_file, HEALTH_SECONDS)
        assert not report.healthy and "more than FITJOBS_WORKER_HEALTH_SECONDS=4" in report.message
        live = sqlite_store.live_workers(since=utcnow() - timedelta(seconds=LEASE_SECONDS))
        assert supervisor.owner not in [worker.id for worker in live], "nor is the worker heartbeat renewed"
        print(f"\nlease lapsed {lapsed_after:.1f} s after the loop hung "
              f"(health window {HEALTH_SECONDS:g} s, lease {LEASE_SECONDS:g} s)")

        release.set()
        deadline = time.monotonic() + 10
        while not check_heartbeat(hang_settings.worker_heartbeat_file, HEALTH_SECONDS).healthy:
            assert time.monotonic() < deadline, "the loop beats again once the claim returns"
            time.sleep(0.1)
    finally:
        release.set()
        supervisor.request_stop()
        loop.join(timeout=60)
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
    assert not loop.is_alive() and not supervisor.leases.is_alive()
    assert trainer.returncode == -signal.SIGTERM, "the shutdown stopped the trainer"
