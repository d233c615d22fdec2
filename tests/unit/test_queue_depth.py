"""Queue depth per GPU size (KEDA's trigger query) and claims by workers sized to one job, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from service.jobs import JobState
from service.store import JobStore
from service.store.queue_depth import queue_depth_sql

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
# (GPU request, state the job is moved to); None: no request, counted as one GPU.
MIX = [(None, "queued"), (1, "queued"), (1, "running"), (2, "queued"), (2, "queued"), (2, "succeeded"),
       (2, "cancelled"), (4, "queued"), (4, "running"), (0, "queued"), (8, "failed"), (None, "running")]


def fill(store: JobStore) -> None:
    for gpus, state in MIX:
        job, _ = store.create_job(SPEC, gpus=gpus)
        if state == "queued":
            continue
        store.transition(job.id, JobState.RUNNING, "started")
        if state != "running":
            store.transition(job.id, JobState(state), "ended")


def test_queue_depth_counts_queued_jobs_of_each_size(store: JobStore) -> None:
    fill(store)
    expected = {size: sum(1 for gpus, state in MIX if state == "queued" and (1 if gpus is None else gpus) == size)
                for size in range(9)}
    assert {size: store.queue_depth(size) for size in range(9)} == expected
    assert expected[1] == 2 and expected[2] == 2 and expected[4] == 1 and expected[0] == 1 and expected[8] == 0
    assert store.queued_gpu_sizes() == [(0, None), (1, None), (2, None), (4, None)]


def test_the_statement_is_plain_sql_a_trigger_can_run(store: JobStore) -> None:
    fill(store)
    from sqlalchemy import text

    with store.engine.connect() as conn:
        assert conn.execute(text(queue_depth_sql(2))).scalar_one() == 2
    assert queue_depth_sql(4) == ("SELECT count(*) FROM jobs WHERE (state = 'queued' OR (state = 'running' AND "
                                  "lease_expires_at < CURRENT_TIMESTAMP)) AND COALESCE(gpus, 1) = 4 "
                                  "AND gpu_type IS NULL")
    assert queue_depth_sql(2, "h100").endswith("= 2 AND gpu_type = 'h100'")
    for bad in (-1, "1; DROP TABLE jobs", 1.5, True):
        with pytest.raises(ValueError):
            queue_depth_sql(bad)  # type: ignore[arg-type]
    for bad_type in ("h100' OR '1'='1", "", "-x", "a" * 64):
        with pytest.raises(ValueError):
            queue_depth_sql(1, bad_type)


def test_an_exact_claim_takes_only_jobs_of_the_workers_size(store: JobStore) -> None:
    first_single, _ = store.create_job(SPEC, gpus=1, priority=5)
    no_request, _ = store.create_job(SPEC)
    double, _ = store.create_job(SPEC, gpus=2)
    quad, _ = store.create_job(SPEC, gpus=4)
    # A 2-GPU worker sized to its job passes over the older, higher-priority 1-GPU jobs.
    claimed = store.claim_next_job("two", free_gpus=2, node_gpus=2, exact=True)
    assert claimed is not None and claimed.id == double.id
    assert store.claim_next_job("two-b", free_gpus=2, node_gpus=2, exact=True) is None
    # A 1-GPU one takes 1-GPU jobs and jobs without a request, by priority then age.
    assert [store.claim_next_job(f"one-{i}", free_gpus=1, node_gpus=1, exact=True).id  # type: ignore[union-attr]
            for i in range(2)] == [first_single.id, no_request.id]
    # A regular 4-GPU worker takes what fits; an exact 8-GPU one finds nothing.
    assert store.claim_next_job("eight", free_gpus=8, node_gpus=8, exact=True) is None
    assert store.get_job(quad.id).state is JobState.QUEUED
    assert store.queue_depth(4) == 1 and store.queue_depth(2) == 0 and store.queue_depth(1) == 0


def test_gpu_types_split_the_queue_and_the_claims(store: JobStore) -> None:
    untyped, _ = store.create_job(SPEC, gpus=1)
    h100, _ = store.create_job(SPEC, gpus=1, gpu_type="h100")
    a100, _ = store.create_job(SPEC, gpus=1, gpu_type="a100")
    h100_pair, _ = store.create_job(SPEC, gpus=2, gpu_type="h100")
    assert (store.queue_depth(1), store.queue_depth(1, "h100"), store.queue_depth(1, "a100"),
            store.queue_depth(2, "h100"), store.queue_depth(2)) == (1, 1, 1, 1, 0)
    assert store.queued_gpu_sizes() == [(1, None), (1, "a100"), (1, "h100"), (2, "h100")]
    # A worker sized to one job takes exactly its type (or exactly none).
    assert store.claim_next_job("h", free_gpus=1, node_gpus=1, exact=True, gpu_type="h100").id == h100.id  # type: ignore[union-attr]
    assert store.claim_next_job("u", free_gpus=1, node_gpus=1, exact=True).id == untyped.id  # type: ignore[union-attr]
    assert store.claim_next_job("u2", free_gpus=4, node_gpus=4) is None, "an untyped worker takes no typed job"
    # A long-running worker of a type takes its type's jobs, and untyped ones.
    assert store.claim_next_job("h4", free_gpus=4, node_gpus=4, gpu_type="h100").id == h100_pair.id  # type: ignore[union-attr]
    assert store.get_job(a100.id).state is JobState.QUEUED


def test_a_running_job_whose_lease_lapsed_counts_as_waiting(store: JobStore) -> None:
    live, _ = store.create_job(SPEC, gpus=2)
    lapsed, _ = store.create_job(SPEC, gpus=2)
    assert store.claim_next_job("alive", 60.0, free_gpus=2, node_gpus=2, exact=True).id == live.id  # type: ignore[union-attr]
    assert store.claim_next_job("gone", -30.0, free_gpus=2, node_gpus=2, exact=True).id == lapsed.id  # type: ignore[union-attr]
    assert store.queue_depth(2) == 1
    assert [job.id for job in store.expired_jobs()] == [lapsed.id]
