"""Fair claims: a 2-GPU job behind a stream of 1-GPU jobs starts once it is first in line.

A real supervisor with two fake GPU ids (FITJOBS_GPUS=0,1) and shell trainers
(tests.support.quick_supervisor), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import time

from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.jobs import JobState
from service.store import JobStore
from tests.support.quick_supervisor import QuickCluster, read_marks

SMALL_SECONDS = 1.0  # the runtime of each 1-GPU job
BIG_SECONDS = 0.5
KEEP_QUEUED = 4  # 1-GPU jobs waiting at every moment: there is always one that fits a free GPU
# A pass of the supervisor (0.05 s), a claim and a trainer's start, on a busy 2-core machine.
SLACK_SECONDS = 0.75


def api_client(cluster: QuickCluster) -> FlaskClient:
    settings = Settings.from_env({"FITJOBS_HOME": str(cluster.home), "FITJOBS_DATABASE_URL": cluster.database_url})
    return create_app(settings, test_config={"TESTING": True}).test_client()


def claimed_at(store: JobStore, job_id: str) -> float | None:
    """When the job's first attempt was claimed (unix time), or None while it waits."""
    for event in store.list_events(job_id):
        if event.state is JobState.RUNNING:
            return event.created_at.timestamp()
    return None


def test_a_two_gpu_job_starts_within_one_small_jobs_runtime_of_reaching_the_head(cluster: QuickCluster) -> None:
    store = cluster.store
    cluster.start_supervisor(FITJOBS_GPUS="0,1")

    def submit_small() -> str:
        return store.create_job({"model": "fake", "fake_seconds": SMALL_SECONDS}, gpus=1)[0].id

    # The two GPUs free up half a runtime apart, so there is never a moment with both free
    # unless the supervisor holds the first one for the 2-GPU job.
    small = [submit_small()]
    deadline = time.monotonic() + 30
    while claimed_at(store, small[0]) is None:
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.02)
    time.sleep(SMALL_SECONDS / 2)
    small += [submit_small() for _ in range(KEEP_QUEUED - 1)]
    big = store.create_job({"model": "fake", "fake_seconds": BIG_SECONDS}, gpus=2)[0]
    older = list(small)
    newer: list[str] = []
    stop_feeding = threading.Event()

    def feed() -> None:
        # Keeps KEEP_QUEUED 1-GPU jobs waiting, as a steady stream of submissions would.
        while not stop_feeding.is_set():
            if store.count_jobs().get("queued", 0) - 1 < KEEP_QUEUED:
                newer.append(submit_small())
            time.sleep(0.05)

    feeder = threading.Thread(target=feed)
    feeder.start()
    client = api_client(cluster)
    reasons: list[str] = []
    try:
        deadline = time.monotonic() + 12 * SMALL_SECONDS
        while store.get_job(big.id).state is JobState.QUEUED:
            assert time.monotonic() < deadline, (
                f"the 2-GPU job is still queued ({reasons[-1:]}) while 1-GPU jobs keep starting:\n{cluster.logs()}")
            place = client.get(f"/v1/jobs/{big.id}").get_json()["queue"]
            if place is not None and (not reasons or reasons[-1] != place["reason"]):
                reasons.append(place["reason"])
            time.sleep(0.05)
        time.sleep(SMALL_SECONDS)  # the stream goes on after it started
    finally:
        stop_feeding.set()
        feeder.join()
    deadline = time.monotonic() + 30
    while store.count_jobs().get("queued") or store.count_jobs().get("running"):
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.1)

    started = claimed_at(store, big.id)
    assert started is not None
    head_at = max(claimed_at(store, job_id) or 0.0 for job_id in older)
    waited = started - head_at
    jumped = [job_id for job_id in newer if (claimed_at(store, job_id) or float("inf")) < started]
    print(f"\n{cluster.database_url.split(':')[0]}: the 2-GPU job started {waited:.2f} s after it was first in line "
          f"(1-GPU jobs run {SMALL_SECONDS} s); queue reasons seen {reasons}; {len(newer)} newer 1-GPU jobs")
    assert jumped == [], "no 1-GPU job queued after it started before it"
    assert waited <= SMALL_SECONDS + SLACK_SECONDS
    assert reasons[:2] == ["waiting_for_gpus", "reserved"], "behind the older jobs, then first in line and held"
    [attempt] = [cluster.home / "jobs" / big.id / "attempt-1"]
    assert [(mark.what, mark.gpus) for mark in read_marks(attempt)][0] == ("started", "0,1")
    assert all(store.get_job(job_id).state is JobState.SUCCEEDED for job_id in [big.id, *older, *newer])
    assert len(newer) >= 2, "1-GPU jobs kept arriving while it waited"
