"""Warm trainers on the supervisor's side: when they start, how a job is handed over, cold fallback.

The processes here are stand-ins (a few lines of Python reading stdin), not real warm trainers:
what is tested is process handling, which must not wait for TensorFlow's imports. The real
thing runs in tests/integration/test_warm_trainers.py.
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

import pytest

from service.config import Settings
from service.store import JobStore, open_store
from service.supervisor.warm import WarmPool, WarmTrainer, WarmTrainerGone, warm_trainers_to_start
from service.supervisor.worker import Supervisor
from service.trainer.warm import Assignment, InvalidAssignment

READ_ONE_LINE = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.readline()); sys.stdout.flush()"
CLOSE_STDIN_AND_WAIT = "import os, time; os.close(0); time.sleep(60)"


def stand_in(code: str = READ_ONE_LINE, stdout: int | None = subprocess.DEVNULL) -> WarmTrainer:
    """A real process that behaves like an idle warm trainer for what the supervisor sees."""
    return WarmTrainer(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=stdout,
                                        start_new_session=True))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none"})


@pytest.fixture
def sqlite_store(settings: Settings) -> Iterator[JobStore]:
    settings.ensure_dirs()
    store = open_store(settings.database_url)
    yield store
    store.engine.dispose()


@pytest.mark.parametrize("wanted,idle,free_slots,expected", [
    (1, 0, 1, 1),  # a free slot gets its warm trainer
    (1, 0, 0, 0),  # every slot busy: no imports beside a running fit
    (1, 1, 1, 0),  # already there
    (2, 0, 1, 1),  # never more than the free slots
    (2, 0, 3, 2),  # never more than asked for
    (2, 1, 3, 1),
    (0, 0, 4, 0),  # FITJOBS_WARM_TRAINERS=0
    (1, 1, 0, 0),  # one left over from before the slots filled is kept, none added
])
def test_warm_trainers_start_only_for_free_slots(wanted: int, idle: int, free_slots: int, expected: int) -> None:
    assert warm_trainers_to_start(wanted, idle, free_slots) == expected


def test_a_dead_idle_warm_trainer_is_replaced_after_a_growing_delay(settings: Settings) -> None:
    started: list[WarmTrainer] = []

    def spawn(_: Settings) -> WarmTrainer:
        started.append(stand_in())
        return started[-1]

    pool = WarmPool(settings, 1, spawn=spawn)
    try:
        pool.replenish(free_slots=0)
        assert pool.idle == [], "no warm trainer while every slot is busy"
        pool.replenish(free_slots=1)
        pool.replenish(free_slots=1)
        [first] = pool.idle
        assert started == [first]

        os.kill(first.pid, signal.SIGKILL)
        first.popen.wait(timeout=10)
        pool.replenish(free_slots=1)
        assert pool.idle == [] and len(started) == 1, "the first replacement waits a second"
        time.sleep(1.1)
        pool.replenish(free_slots=1)
        [second] = pool.idle
        assert second.pid != first.pid and second.poll() is None

        os.kill(second.pid, signal.SIGKILL)
        second.popen.wait(timeout=10)
        assert pool.take() is None, "a dead warm trainer is never handed a job"
        time.sleep(1.1)
        pool.replenish(free_slots=1)
        assert pool.idle == [], "the second death in a row doubles the delay"
        time.sleep(1.0)
        pool.replenish(free_slots=1)
        [third] = pool.idle
        assert pool.take() is third and pool.idle == []
        pool.taken()
        third.kill()
    finally:
        pool.stop_all(grace=2)
    assert all(warm.poll() is not None for warm in started)


def test_stop_all_ends_idle_warm_trainers(settings: Settings) -> None:
    pool = WarmPool(settings, 2, spawn=lambda _: stand_in())
    pool.replenish(free_slots=2)
    warm = list(pool.idle)
    assert len(warm) == 2 and all(w.poll() is None for w in warm)
    pool.stop_all(grace=5)
    assert pool.idle == []
    assert all(w.poll() is not None for w in warm)


def test_assignment_lines_round_trip_and_junk_is_refused(tmp_path: Path) -> None:
    assignment = Assignment(job_id="job_1", attempt=2, cuda_visible_devices="1,3",
                            log_path=tmp_path / "trainer.log", cwd=tmp_path, assigned_at=1700000000.5)
    line = assignment.to_line()
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert Assignment.from_line(line) == assignment
    for junk in (b"hello\n", b"{}\n", b'{"job_id": "x", "attempt": "two"}\n'):
        with pytest.raises(InvalidAssignment):
            Assignment.from_line(junk)


def test_assign_writes_one_line_and_returns_the_same_process(settings: Settings, sqlite_store: JobStore,
                                                             tmp_path: Path) -> None:
    sqlite_store.create_job({"model": "m"})
    job = sqlite_store.claim_next_job("me")
    assert job is not None
    with open(tmp_path / "received", "wb") as out:
        warm = stand_in(stdout=out.fileno())
    before = time.monotonic()
    child = warm.assign(settings, job, ("2",))
    assert child.popen is warm.popen and child.warm and child.gpu_ids == ("2",)
    assert child.started >= before and (child.job_id, child.attempt) == (job.id, 1)
    assert child.popen.wait(timeout=30) == 0, "the line ends with EOF: nothing else is ever sent"
    received = Assignment.from_line((tmp_path / "received").read_bytes())
    attempt_dir = settings.attempt_dir(job.id, 1)
    assert attempt_dir.is_dir()
    assert (received.job_id, received.attempt, received.cuda_visible_devices) == (job.id, 1, "2")
    assert (received.log_path, received.cwd) == (attempt_dir / "trainer.log", attempt_dir)
    assert abs(received.assigned_at - time.time()) < 30


def test_a_warm_trainer_that_cannot_read_is_gone(settings: Settings, sqlite_store: JobStore) -> None:
    sqlite_store.create_job({"model": "m"})
    job = sqlite_store.claim_next_job("me")
    assert job is not None
    exited = stand_in("pass")
    exited.popen.wait(timeout=30)
    with pytest.raises(WarmTrainerGone, match="exited"):
        exited.assign(settings, job)
    deaf = stand_in(CLOSE_STDIN_AND_WAIT)
    try:
        time.sleep(1.0)  # let it close its end of the pipe
        with pytest.raises(WarmTrainerGone, match="stdin"):
            deaf.assign(settings, job)
    finally:
        deaf.kill()


def test_a_job_whose_warm_trainer_is_gone_starts_cold(settings: Settings, sqlite_store: JobStore) -> None:
    supervisor = Supervisor(settings, sqlite_store)
    sqlite_store.create_job({"model": "m"})
    job = sqlite_store.claim_next_job(supervisor.owner)
    assert job is not None
    deaf = stand_in(CLOSE_STDIN_AND_WAIT)
    time.sleep(1.0)
    supervisor.warm.idle = [deaf]
    child = supervisor._start_trainer(job, ())
    try:
        assert not child.warm and child.popen is not deaf.popen
        command = child.popen.args
        assert isinstance(command, list) and command[-3:] == ["service.trainer", job.id, "1"]
        assert deaf.poll() is not None, "the broken warm trainer is ended"
        assert supervisor.warm.idle == []
    finally:
        child.kill_group()
        child.popen.wait(timeout=30)


def test_take_assignment_sets_the_log_folder_and_gpus(tmp_path: Path) -> None:
    """Runs in a child process: it rewires file descriptors and the working directory."""
    folder = tmp_path / "attempt-1"
    folder.mkdir()
    assignment = Assignment(job_id="job_1", attempt=1, cuda_visible_devices="3", log_path=folder / "trainer.log",
                            cwd=folder, assigned_at=time.time())
    code = (
        "import json, os, sys\n"
        "from service.trainer.warm import Assignment, take_assignment\n"
        "print('before the job')\n"
        "take_assignment(Assignment.from_line(sys.stdin.buffer.readline()))\n"
        "print(json.dumps({'cwd': os.getcwd(), 'cuda': os.environ['CUDA_VISIBLE_DEVICES'],"
        " 'stdin': sys.stdin.read()}))\n"
        "print('to stderr', file=sys.stderr)\n"
        "os.write(2, b'from C\\n')\n")
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(repo)}
    run = subprocess.run([sys.executable, "-c", code], input=assignment.to_line() + b"more\n", capture_output=True,
                         env=env, cwd=tmp_path, timeout=60, check=True)
    assert run.stdout == b"before the job\n", "only what came before the job stays in the warm log"
    lines = (folder / "trainer.log").read_text().splitlines()
    seen = json.loads(lines[0])
    assert seen == {"cwd": str(folder), "cuda": "3", "stdin": ""}
    assert lines[1:] == ["to stderr", "from C"]
