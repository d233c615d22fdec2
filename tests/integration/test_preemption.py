"""A node taken away mid-drain (spot preemption): the attempt costs nothing; a node that just vanishes: it counts.

Real supervisors (tests.support.quick_supervisor) on PostgreSQL; their trainers are shell scripts
that ignore SIGTERM, as a trainer whose checkpoint outlasts the pod's grace period does.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.jobs import JobState
from service.store import JobStore
from service.supervisor.ending import DRAIN_STARTED
from tests.support.postgres import temporary_database
from tests.support.quick_supervisor import QuickCluster, quick_cluster

SPEC = {"model": "m", "data": {"train": {"path": "a.csv"}}, "fake_seconds": 2.0, "fake_ignore_term": True}
FAST = {"FITJOBS_LEASE_SECONDS": "2", "FITJOBS_SHUTDOWN_GRACE": "60"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[QuickCluster]:
    with temporary_database() as url, quick_cluster(tmp_path / "home", url) as running:
        yield running


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def event_kinds(store: JobStore, job_id: str) -> list[str]:
    return [event.kind for event in store.list_events(job_id)]


def gone(cluster: QuickCluster, process: subprocess.Popen[bytes]) -> None:
    """Wait for a killed supervisor; the cluster no longer expects it to stop cleanly."""
    assert process.wait(timeout=30) == -signal.SIGKILL
    cluster.supervisors.remove(process)


def finish_on_a_second_supervisor(cluster: QuickCluster, job_id: str) -> None:
    # A short run this time: the second supervisor reaps the lapsed lease and trains the job.
    cluster.start_supervisor(**FAST)
    wait_for(lambda: cluster.store.get_job(job_id).state is JobState.SUCCEEDED, 60, "the job to succeed")


def test_a_supervisor_killed_while_draining_costs_the_job_no_attempt(cluster: QuickCluster) -> None:
    job, _ = cluster.store.create_job(SPEC, max_attempts=2)
    first = cluster.start_supervisor(**FAST)
    wait_for(lambda: cluster.store.get_job(job.id).state is JobState.RUNNING, 30, "the claim")
    first.send_signal(signal.SIGTERM)  # the node is being taken away
    wait_for(lambda: DRAIN_STARTED in event_kinds(cluster.store, job.id), 30, "the drain notice")
    first.kill()  # ... and is gone before the trainer stopped and the requeue was recorded
    gone(cluster, first)
    assert cluster.store.get_job(job.id).state is JobState.RUNNING  # nothing recorded the end
    finish_on_a_second_supervisor(cluster, job.id)
    done = cluster.store.get_job(job.id)
    messages = [event.message for event in cluster.store.list_events(job.id)]
    assert any(message.startswith("Preempted:") for message in messages), messages
    assert done.attempt == 2 and done.attempts_spent == 1, done
    assert not any("owner_lost" in message for message in messages)


def test_a_supervisor_that_vanishes_without_draining_spends_an_attempt(cluster: QuickCluster) -> None:
    job, _ = cluster.store.create_job(SPEC, max_attempts=2)
    first = cluster.start_supervisor(**FAST)
    wait_for(lambda: cluster.store.get_job(job.id).state is JobState.RUNNING, 30, "the claim")
    first.kill()
    gone(cluster, first)
    finish_on_a_second_supervisor(cluster, job.id)
    done = cluster.store.get_job(job.id)
    assert DRAIN_STARTED not in event_kinds(cluster.store, job.id)
    assert done.attempt == 2 and done.attempts_spent == 2, done


def test_a_job_whose_once_worker_died_is_counted_for_a_new_pod_which_reaps_and_runs_it(cluster: QuickCluster) -> None:
    # KEDA's trigger counts it: a pod of its size starts, requeues it and claims it.
    job, _ = cluster.store.create_job({**SPEC, "fake_ignore_term": False}, gpus=1, max_attempts=3)
    first = cluster.start_supervisor("--once", "30", FITJOBS_GPUS="0", **FAST)
    wait_for(lambda: cluster.store.get_job(job.id).state is JobState.RUNNING, 30, "the claim")
    assert cluster.store.queue_depth(1) == 0, "a job with a live worker waits for no pod"
    first.kill()
    gone(cluster, first)
    wait_for(lambda: cluster.store.queue_depth(1) == 1, 30, "the lapsed lease to count as waiting")
    assert cluster.store.get_job(job.id).state is JobState.RUNNING
    second = cluster.start_supervisor("--once", "30", FITJOBS_GPUS="0", **FAST)
    assert second.wait(timeout=60) == 0, cluster.logs()
    cluster.supervisors.remove(second)
    done = cluster.store.get_job(job.id)
    assert done.state is JobState.SUCCEEDED and done.attempt == 2, done
    assert cluster.store.queue_depth(1) == 0
