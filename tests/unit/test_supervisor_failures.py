"""How the supervisor names a trainer's end: the OOM killer, exit 137, other signals, timeouts."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from service.supervisor.child import oom_kill_count
from service.supervisor.worker import describe_failure


def child(stop_reason: str | None = None, oom_killed: bool = False) -> SimpleNamespace:
    """The parts of a TrainerProcess that describe_failure reads."""
    return SimpleNamespace(stop_reason=stop_reason, oom_killed=lambda: oom_killed, log_tail=lambda: "last line")


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
    assert describe_failure(child(stop_reason="timeout"), -15, None, 60.0).code == "timeout"
    internal = describe_failure(child(), 2, None, 1.0)
    assert internal.code == "internal" and "last line" in internal.message and not internal.retryable
