"""Lease renewal on a thread of its own, held back when the supervisor loop stops progressing.

A slow pass of the loop (a claim waiting on the database, a trainer that is slow to start) must
never let the leases of running jobs lapse, so they are renewed beside the loop. But renewing
for a loop that hangs would keep its jobs, and their GPUs, forever: once the loop has not
completed a pass for FITJOBS_WORKER_HEALTH_SECONDS, renewal stops (worker heartbeat included)
and the reaper of any other supervisor requeues the jobs when their leases run out. A stopped
process (SIGSTOP, a frozen node) stops this thread with the loop, which ends the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from service.store import JobStore
from service.supervisor.periodic import PeriodicTask

log = logging.getLogger(__name__)

Lease = tuple[str, int]  # (job id, attempt)


class LeaseRenewer(PeriodicTask):
    """Renews a supervisor's worker heartbeat and its running attempts' leases every ``interval`` s."""

    name = "lease-renewer"
    # The trainers keep running meanwhile.
    outage = "lease renewal retries"

    def __init__(self, store: JobStore, owner: str, *, lease_seconds: float, interval: float,
                 health_seconds: float, seconds_since_loop_beat: Callable[[], float],
                 leases: Callable[[], list[Lease]]) -> None:
        super().__init__(interval)
        self.store = store
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.health_seconds = health_seconds
        self._seconds_since_loop_beat = seconds_since_loop_beat
        self._leases = leases
        self._lost: set[Lease] = set()
        self._lock = threading.Lock()
        self._withholding = False

    def take_lost(self) -> set[Lease]:
        """Attempts whose lease could not be renewed (no longer current) since the last call."""
        with self._lock:
            lost, self._lost = self._lost, set()
        return lost

    def run_once(self) -> bool:
        """One renewal; False (nothing written) while the loop is overdue."""
        overdue = self._seconds_since_loop_beat()
        if overdue > self.health_seconds:
            if not self._withholding:
                log.error("the supervisor loop has not completed a pass for %.0f s (more than "
                          "FITJOBS_WORKER_HEALTH_SECONDS=%g): no longer renewing the leases of %s, so other "
                          "supervisors take its jobs over", overdue, self.health_seconds,
                          ", ".join(f"{job} attempt {attempt}" for job, attempt in self._leases()) or "its jobs")
                self._withholding = True
            return False
        if self._withholding:
            log.warning("the supervisor loop progresses again; renewing leases")
            self._withholding = False
        self.store.worker_heartbeat(self.owner)
        for job_id, attempt in self._leases():
            if not self.store.heartbeat(job_id, attempt, self.lease_seconds):
                with self._lock:
                    self._lost.add((job_id, attempt))
        return True

