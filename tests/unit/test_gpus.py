"""GPU slots: detection from the setting, lending without oversubscription, GPU-aware claims."""

from __future__ import annotations

import pytest

from service.jobs import JobState
from service.store import JobStore
from service.supervisor.gpus import GpuPool, detect_gpus

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}


def test_explicit_lists_and_none_are_taken_as_given() -> None:
    assert detect_gpus(("0", "3")) == ("0", "3")
    assert detect_gpus(()) == ()


def test_auto_without_nvidia_smi_finds_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert detect_gpus("auto") == ()


def test_pool_never_lends_a_gpu_twice() -> None:
    pool = GpuPool(("0", "1", "2"))
    assert pool.lend("a", 2) == ("0", "1")
    with pytest.raises(ValueError):
        pool.lend("b", 2)
    assert pool.lend("b", 1) == ("2",)
    assert pool.free == []
    pool.give_back("a")
    assert pool.free == ["0", "1"]
    assert pool.lend("c", 0) == ()


def test_claims_respect_free_gpus(store: JobStore) -> None:
    big, _ = store.create_job(SPEC, gpus=2)
    default, _ = store.create_job(SPEC)
    cpu, _ = store.create_job(SPEC, gpus=0)
    # A CPU-only node takes only jobs that need no GPU.
    assert store.claim_next_job("cpu-node").id == default.id  # type: ignore[union-attr]
    assert store.claim_next_job("cpu-node").id == cpu.id  # type: ignore[union-attr]
    assert store.claim_next_job("cpu-node") is None
    # A GPU node with one free GPU cannot take the 2-GPU job; with two it can.
    assert store.claim_next_job("gpu-node", free_gpus=1, node_gpus=1) is None
    claimed = store.claim_next_job("gpu-node", free_gpus=2, node_gpus=2)
    assert claimed is not None and claimed.id == big.id and claimed.gpus_needed(True) == 2


def test_default_request_takes_one_gpu_on_gpu_nodes(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    assert store.claim_next_job("gpu-node", free_gpus=0, node_gpus=1) is None
    claimed = store.claim_next_job("gpu-node", free_gpus=1, node_gpus=1)
    assert claimed is not None and claimed.id == job.id and claimed.gpus_needed(True) == 1


def test_the_job_first_in_line_holds_the_gpus_it_needs(store: JobStore) -> None:
    first, _ = store.create_job(SPEC, gpus=1)
    big, _ = store.create_job(SPEC, gpus=2)
    small, _ = store.create_job(SPEC, gpus=1)
    assert store.claim_next_job("n", free_gpus=2, node_gpus=2).id == first.id  # type: ignore[union-attr]
    # One GPU free: the 2-GPU job is next, so the 1-GPU job behind it does not take that GPU.
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2) is None
    assert store.get_job(small.id).state is JobState.QUEUED
    assert store.claim_next_job("n", free_gpus=2, node_gpus=2).id == big.id  # type: ignore[union-attr]
    assert store.claim_next_job("n", free_gpus=0, node_gpus=2) is None
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2).id == small.id  # type: ignore[union-attr]


def test_a_job_too_large_for_this_node_does_not_hold_its_gpus(store: JobStore) -> None:
    huge, _ = store.create_job(SPEC, gpus=4)
    small, _ = store.create_job(SPEC, gpus=1)
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2).id == small.id  # type: ignore[union-attr]
    assert store.claim_next_job("big-node", free_gpus=4, node_gpus=4).id == huge.id  # type: ignore[union-attr]


def test_a_higher_priority_job_goes_before_a_held_one(store: JobStore) -> None:
    big, _ = store.create_job(SPEC, gpus=2)
    urgent, _ = store.create_job(SPEC, gpus=1, priority=5)
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2).id == urgent.id  # type: ignore[union-attr]
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2) is None
    assert store.get_job(big.id).state is JobState.QUEUED
