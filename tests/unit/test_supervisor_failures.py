"""How the supervisor names a trainer's end: the OOM killer, exit 137, other signals, timeouts,
and a failure that keeps the result it measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import cast

from service.config import Settings
from service.jobs import FailureCode, JobState
from service.store import open_store
from service.supervisor.child import StopReason, TrainerProcess, oom_kill_count
from service.supervisor.worker import Supervisor, describe_failure
from service.trainer.outcome import TrainerExit, failure_exit_status, failure_of_exit_status


def child(stop_reason: StopReason | None = None, oom_killed: bool = False) -> TrainerProcess:
    """A stand-in TrainerProcess with only the parts describe_failure reads: no trainer ran, so none
    was OOM-killed for real."""
    stand_in = SimpleNamespace(stop_reason=stop_reason, oom_killed=lambda: oom_killed, log_tail=lambda: "last line")
    return cast(TrainerProcess, stand_in)


def test_cgroup_oom_kill_counters_are_read_from_v1_and_v2_files(tmp_path: Path) -> None:
    v1 = tmp_path / "memory.oom_control"
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    v2 = tmp_path / "memory.events"
    v2.write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert oom_kill_count(v1) == 3
    assert oom_kill_count(v2) == 2
    assert oom_kill_count(tmp_path / "missing") == 0


def test_the_oom_killer_and_exit_137_are_out_of_memory() -> None:
    by_kernel = describe_failure(child(oom_killed=True), -9, None, 12.0)
    assert (by_kernel.code, by_kernel.retryable) == ("out_of_memory", True)
    assert "batch_size" in by_kernel.message
    assert describe_failure(child(), 137, None, 1.0).code == "out_of_memory"  # a shell's report of SIGKILL


def test_other_signals_are_killed_and_name_the_signal() -> None:
    killed = describe_failure(child(), -9, None, 3.0)
    assert (killed.code, killed.retryable) == ("killed", True) and "SIGKILL" in killed.message
    assert "SIGSEGV" in describe_failure(child(), -11, None, 3.0).message


def test_a_deadline_is_a_timeout_and_an_unexplained_exit_is_internal_with_the_log() -> None:
    assert describe_failure(child(stop_reason=StopReason.TIMEOUT), -15, None, 60.0).code == "timeout"
    internal = describe_failure(child(), 2, None, 1.0)
    assert internal.code == "internal" and "last line" in internal.message and not internal.retryable


BELOW_THRESHOLD_TRAINER = """
import sys
from pathlib import Path
from service.jobs import FailureCode
from service.trainer.failures import TrainingFailure
from service.trainer.outcome import Outcome, finish

failure = TrainingFailure(FailureCode.BELOW_THRESHOLD, "val_macro_f1 0.41 is below the acceptance minimum 0.8.",
                          result={"val_macro_f1": 0.41, "best_epoch": 2,
                                  "acceptance": {"metric": "val_macro_f1", "min": 0.8, "value": 0.41,
                                                 "passed": False}})
sys.exit(finish(Path(sys.argv[1]), Outcome("failed", code=failure.code.value, message=failure.message,
                                           result=failure.result or {})))
"""


def test_a_failed_outcome_with_a_result_fails_the_job_and_keeps_the_result(settings: Settings) -> None:
    """A real child leaves a below_threshold outcome with a result, as a trainer that missed its bar does."""
    settings.ensure_dirs()
    store = open_store(settings.database_url)
    try:
        supervisor = Supervisor(settings, store)
        created, _ = store.create_job({"model": "m"}, max_attempts=3)
        job = store.claim_next_job(supervisor.owner)
        assert job is not None and job.id == created.id
        attempt_dir = settings.attempt_dir(job.id, job.attempt)
        attempt_dir.mkdir(parents=True)
        repo = Path(__file__).resolve().parents[2]
        popen = subprocess.Popen([sys.executable, "-c", BELOW_THRESHOLD_TRAINER, str(attempt_dir)], cwd=repo,
                                 start_new_session=True)
        supervisor.children[job.id] = TrainerProcess(job.id, job.attempt, popen, attempt_dir)
        assert popen.wait(timeout=60) == TrainerExit.FAILED, "a written failed outcome exits with status 1"
        supervisor._finish_exited()
        ended = store.get_job(job.id)
        assert ended.state is JobState.FAILED, "below_threshold is not retried"
        assert ended.error is not None and (ended.error.code, ended.error.retryable) == ("below_threshold", False)
        assert "below the acceptance minimum" in ended.error.message
        assert ended.result == {"val_macro_f1": 0.41, "best_epoch": 2,
                                "acceptance": {"metric": "val_macro_f1", "min": 0.8, "value": 0.41, "passed": False}}
        assert supervisor.children == {}
    finally:
        store.engine.dispose()


# The failure codes in the order their exit statuses were given out: a new code goes at the end,
# so that a trainer of an older release and a supervisor of a newer one agree on each status.
RELEASED_ORDER = ["invalid_data", "model_not_found", "unsupported_model", "model_load_failed", "out_of_memory",
                  "killed", "timeout", "owner_lost", "disk_full", "internal", "below_threshold", "storage_unavailable"]


def test_new_failure_codes_are_appended_so_older_exit_statuses_keep_their_codes() -> None:
    assert [code.value for code in FailureCode] == RELEASED_ORDER
    assert not FailureCode.BELOW_THRESHOLD.retryable and FailureCode.STORAGE_UNAVAILABLE.retryable
    assert failure_exit_status(FailureCode.INTERNAL) == TrainerExit.FAILURE_BASE + 9
    assert failure_of_exit_status(failure_exit_status(FailureCode.BELOW_THRESHOLD)) is FailureCode.BELOW_THRESHOLD
