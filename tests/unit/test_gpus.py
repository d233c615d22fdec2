"""GPU slots: detection from the setting, lending without oversubscription, GPU-aware claims."""

from __future__ import annotations

import pytest

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
    assert store.claim_next_job("gpu-node", free_gpus=1, node_has_gpus=True) is None
    claimed = store.claim_next_job("gpu-node", free_gpus=2, node_has_gpus=True)
    assert claimed is not None and claimed.id == big.id and claimed.gpus_needed(True) == 2


def test_default_request_takes_one_gpu_on_gpu_nodes(store: JobStore) -> None:
    job, _ = store.create_job(SPEC)
    assert store.claim_next_job("gpu-node", free_gpus=0, node_has_gpus=True) is None
    claimed = store.claim_next_job("gpu-node", free_gpus=1, node_has_gpus=True)
    assert claimed is not None and claimed.id == job.id and claimed.gpus_needed(True) == 1
