"""Cancels racing claims on PostgreSQL: two supervisors, 200 rounds, cancels fired at random moments.

The supervisors are real (tests.support.quick_supervisor); only their trainers are shell scripts,
so that 200 attempts fit in seconds. The cancels go through JobStore.request_cancel, as the
API's cancel endpoint does, from several threads at once.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.jobs import TRANSITIONS, Job, JobEvent, JobState
from service.store import InvalidTransition, JobStore, open_store
from tests.support.postgres import temporary_database
from tests.support.quick_supervisor import QuickCluster, quick_cluster, read_marks

ROUNDS = 200
CLIENTS = 4
# Cancels land anywhere from before the claim to after the trainer finished.
CANCEL_DELAY_SECONDS = (0.0, 0.3)
TRAINER_SECONDS = (0.02, 0.3)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[QuickCluster]:
    with temporary_database() as url, quick_cluster(tmp_path / "home", url) as running:
        yield running


def wait_until_all_ended(store: JobStore, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = store.count_jobs()
        if not counts.get("queued") and not counts.get("running"):
            return
        time.sleep(0.2)
    raise AssertionError(f"jobs still waiting or running after {timeout} s: {store.count_jobs()}")


def contradictions(job: Job, events: list[JobEvent], attempt_dirs: dict[int, Path]) -> list[str]:
    """Everything about a finished job that its events, or its trainers' marks, contradict."""
    found = []
    states = [e for e in events if e.kind == "state"]
    if not states or states[0].state is not JobState.QUEUED:
        found.append("its first state event is not queued")
    for before, after in itertools.pairwise(states):
        if before.state is None or after.state not in TRANSITIONS[before.state]:
            found.append(f"{before.state} -> {after.state} is not a transition")
        if after.message.startswith("Cancelled before it started") and before.state is not JobState.QUEUED:
            found.append(f"'Cancelled before it started' follows {before.state}")
    if states and states[-1].state is not job.state:
        found.append(f"it is {job.state.value} but its last state event says {states[-1].state}")
    claims = [e for e in states if e.state is JobState.RUNNING]
    if len(claims) != job.attempt:
        found.append(f"{len(claims)} claim events for {job.attempt} attempts")
    for attempt in range(1, job.attempt + 1):
        marks = read_marks(attempt_dirs[attempt])
        if [m.what for m in marks][:1] != ["started"] or len(marks) != 2:
            found.append(f"attempt {attempt}'s trainer did not start once and end: {marks}")
    if job.state is JobState.CANCELLED:
        ended_at = states[-1].created_at.timestamp()
        if claims:
            requested = [e for e in events if e.kind == "cancel_requested" and e.id > claims[-1].id]
            if not requested:
                found.append("cancelled after a claim without a cancel_requested event")
        elif any(path.exists() for path in attempt_dirs.values()):
            found.append("cancelled before it started, yet a trainer ran")
        for attempt, folder in attempt_dirs.items():
            for mark in read_marks(folder):
                if mark.what in ("finished", "stopped") and mark.at > ended_at:
                    found.append(f"attempt {attempt}'s trainer was still running when the job was cancelled "
                                 f"({mark.what} {mark.at - ended_at:.3f} s later)")
    return found


def test_cancels_racing_two_supervisors_never_contradict_a_jobs_events(cluster: QuickCluster) -> None:
    store = cluster.store
    cluster.start_supervisor(FITJOBS_MAX_CONCURRENT_JOBS="2", FITJOBS_LEASE_SECONDS="30")
    cluster.start_supervisor(FITJOBS_MAX_CONCURRENT_JOBS="2", FITJOBS_LEASE_SECONDS="30")
    replies: Counter[str] = Counter()
    job_ids: list[str] = []
    lock = threading.Lock()
    started = time.monotonic()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        own = open_store(cluster.database_url, migrate=False)  # a replica of the API has its own pool
        try:
            for _ in range(ROUNDS // CLIENTS):
                job, _ = own.create_job({"model": "fake", "fake_seconds": round(rng.uniform(*TRAINER_SECONDS), 3)})
                time.sleep(rng.uniform(*CANCEL_DELAY_SECONDS))
                try:
                    answer = own.request_cancel(job.id)
                    reply = "cancelled" if answer.state is JobState.CANCELLED else "stop requested"
                except InvalidTransition as exc:
                    reply = f"refused: already {exc.job.state.value}"
                with lock:
                    job_ids.append(job.id)
                    replies[reply] += 1
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until_all_ended(store, timeout=30)
    elapsed = time.monotonic() - started
    cluster.stop()

    problems: dict[str, list[str]] = {}
    outcomes: Counter[str] = Counter()
    owners: set[str] = set()
    for job_id in job_ids:
        job = store.get_job(job_id)
        events = store.list_events(job_id)
        attempt_dirs = {n: cluster.home / "jobs" / job_id / f"attempt-{n}" for n in range(1, job.attempt + 1)}
        found = contradictions(job, events, attempt_dirs)
        if found:
            problems[job_id] = found
        owners.update(e.data["owner"] for e in events if e.state is JobState.RUNNING and e.data)
        outcomes[f"{job.state.value}{' after running' if job.attempt else ''}"] += 1
    print(f"\n{len(job_ids)} rounds in {elapsed:.1f} s; cancel replies {dict(replies)}; jobs {dict(outcomes)}")
    assert len(job_ids) == ROUNDS
    assert not problems, f"{len(problems)} jobs contradict their events: {problems}\n{cluster.logs()}"
    # The rounds covered the cases that matter: cancels of queued jobs, of running ones, and too late.
    assert outcomes["cancelled"] > 0 and outcomes["cancelled after running"] > 0, outcomes
    assert len(owners) == 2, f"both supervisors claimed jobs: {owners}"
