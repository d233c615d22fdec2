"""A real supervisor whose trainers are a few lines of bash, for tests of claims, cancels and fairness.

Fake: the trainer only. A real trainer imports TensorFlow for seconds, and these tests need
hundreds of attempts that start in milliseconds. Everything else is the real thing: the
Supervisor class (claims, reservations, heartbeats, cancellation, how an attempt's end is
recorded) in its own process, on a real database, with real child processes in their own
sessions that it stops with SIGTERM.

The fake trainer sleeps the job's ``spec["fake_seconds"]``, then leaves a succeeded outcome
and exits 0; on SIGTERM while it sleeps it exits 4 at once, as a stopped trainer does, and once it
is done sleeping it finishes regardless, as a trainer whose fit is over does. With
``spec["fake_ignore_term"]`` it ignores SIGTERM, as a trainer whose checkpoint takes longer
than the grace period would. It appends what
happened to ``marks`` in its attempt folder: ``started <unix time> <CUDA_VISIBLE_DEVICES>``,
then ``finished <unix time>`` or ``stopped <unix time>``.

Run as ``python -m tests.support.quick_supervisor`` with the FITJOBS_* environment of a worker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.jobs import Job
from service.logconfig import configure_logging
from service.store import JobStore, open_store
from service.supervisor.child import LOG_FILE, TrainerProcess, die_with_parent
from service.supervisor.worker import Supervisor
from tests.support.service import REPO_ROOT, service_env

MARKS_FILE = "marks"
# bash for $EPOCHREALTIME: a `date` child would be in the process group the supervisor
# signals, and die before it printed the time.
FAKE_TRAINER = r"""
if [ "$2" = ignore-term ]; then trap '' TERM; else trap 'echo "stopped $EPOCHREALTIME" >> marks; exit 4' TERM; fi
echo "started $EPOCHREALTIME $CUDA_VISIBLE_DEVICES" >> marks
sleep "$1" & wait $!
trap '' TERM
printf '{"status": "succeeded", "result": {"fake_seconds": %s}}' "$1" > outcome.json.tmp
mv outcome.json.tmp outcome.json
echo "finished $EPOCHREALTIME" >> marks
"""


class QuickSupervisor(Supervisor):
    """The real Supervisor, except that each attempt runs FAKE_TRAINER instead of a TensorFlow trainer."""

    def _start_trainer(self, job: Job, gpu_ids: tuple[str, ...]) -> TrainerProcess:
        attempt_dir = self.settings.attempt_dir(job.id, job.attempt)
        attempt_dir.mkdir(parents=True, exist_ok=True)
        env = self.settings.child_environ()
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        seconds = str(float(job.spec.get("fake_seconds", 0.1)))
        mode = "ignore-term" if job.spec.get("fake_ignore_term") else "stop-on-term"
        with open(attempt_dir / LOG_FILE, "ab") as log:
            popen = subprocess.Popen(["bash", "-c", FAKE_TRAINER, "fake-trainer", seconds, mode],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=attempt_dir, env=env, start_new_session=True,
                                     preexec_fn=die_with_parent)
        return TrainerProcess(job_id=job.id, attempt=job.attempt, popen=popen, attempt_dir=attempt_dir,
                              gpu_ids=gpu_ids)


@dataclass(frozen=True)
class Mark:
    """One line of a fake trainer's ``marks`` file."""

    what: str  # started, finished or stopped
    at: float  # unix time
    gpus: str = ""


def read_marks(attempt_dir: Path) -> list[Mark]:
    """What the fake trainer of one attempt wrote, in order; empty when none ran there."""
    try:
        lines = (attempt_dir / MARKS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    marks = []
    for line in lines:
        what, at, *gpus = line.split(" ")
        marks.append(Mark(what, float(at), gpus[0] if gpus else ""))
    return marks


@dataclass
class QuickCluster:
    """Supervisors with fake trainers sharing one database and one home."""

    home: Path
    database_url: str
    store: JobStore
    supervisors: list[subprocess.Popen[bytes]]

    def start_supervisor(self, *args: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """Start a supervisor process; ``args`` (``--once SECONDS``) go to its command line, ``extra_env``
        adds or overrides FITJOBS_* settings."""
        env = service_env(self.home, None, {
            "FITJOBS_DATABASE_URL": self.database_url, "FITJOBS_WARM_TRAINERS": "0",
            "FITJOBS_POLL_INTERVAL": "0.05", **extra_env})
        log = self.home / f"supervisor-{len(self.supervisors) + 1}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "tests.support.quick_supervisor", *args], env=env,
                                       stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.supervisors.append(process)
        return process

    def stop(self) -> None:
        """SIGTERM every supervisor still running and check that each stopped cleanly."""
        for process in self.supervisors:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.supervisors:
            assert process.wait(timeout=30) == 0, self.logs()

    def logs(self) -> str:
        """The end of every supervisor's log, for failure messages."""
        return "\n".join(path.read_text(errors="replace")[-2000:]
                         for path in sorted(self.home.glob("supervisor-*.log")))


@contextmanager
def quick_cluster(home: Path, database_url: str) -> Iterator[QuickCluster]:
    """A QuickCluster on a migrated database, its supervisors stopped on the way out."""
    store = open_store(database_url)
    home.mkdir(parents=True, exist_ok=True)
    cluster = QuickCluster(home, database_url, store, [])
    try:
        yield cluster
    finally:
        cluster.stop()
        store.engine.dispose()


def main() -> None:
    """Serve as a supervisor with fake trainers until SIGTERM; with ``--once SECONDS``, as `fitjobs worker --once`."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    settings.ensure_dirs()
    once = float(sys.argv[2]) if sys.argv[1:2] == ["--once"] else None
    QuickSupervisor(settings, open_store(settings.database_url, migrate=False), once_wait=once).run()


if __name__ == "__main__":
    main()
