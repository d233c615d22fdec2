"""GPU slots: discovery from the setting, nvidia-smi and TensorFlow, refusal of GPUs nobody sees,
lending without oversubscription, GPU-aware claims.

Discovery runs real subprocesses: stand-ins for nvidia-smi (a shell script on PATH) and for the
TensorFlow probe (a Python one-liner printing what service.trainer.gpu_probe prints), since this
machine has no GPU for the real ones to find.
"""

from __future__ import annotations

import json
import logging
import shlex
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from service.jobs import JobState
from service.store import JobStore
from service.supervisor.gpus import GpuPool, GpusNotVisible, cuda_visible_devices, discover_gpus, gpus_given

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
H100_LISTING = "0, GPU-5a0e-aaaa, NVIDIA H100 80GB HBM3\n1, GPU-77b1-bbbb, NVIDIA H100 80GB HBM3\n" \
               "2, GPU-90c2-cccc, NVIDIA H100 80GB HBM3\n3, GPU-3fd3-dddd, NVIDIA H100 80GB HBM3\n"


def claimed_id(store: JobStore, owner: str, **capacity: Any) -> str | None:
    """The id of the job ``owner`` claims next, or None when it claims none."""
    job = store.claim_next_job(owner, **capacity)
    return job.id if job else None


def fake_nvidia_smi(folder: Path, stdout: str = "", stderr: str = "", status: int = 0) -> Path:
    """A stand-in nvidia-smi in ``folder`` (put it on PATH) that records that it ran."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(folder / 'nvidia-smi-ran'))}\n"
                      f"printf '%s' {shlex.quote(stdout)}\nprintf '%s' {shlex.quote(stderr)} >&2\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return folder


def fake_tensorflow(marker: Path, gpus: list[str], *, built_with_cuda: bool = True, stderr: str = "",
                    sleep: float = 0) -> list[str]:
    """A stand-in for `python -m service.trainer.gpu_probe` that records that it ran."""
    code = (f"import sys, time; open({str(marker)!r}, 'w').close(); time.sleep({sleep}); "
            f"sys.stderr.write({stderr!r}); "
            f"print({json.dumps(json.dumps({'gpus': gpus, 'built_with_cuda': built_with_cuda}))})")
    return [sys.executable, "-c", code]


def test_explicit_lists_and_none_are_taken_as_given_without_discovery(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", H100_LISTING)
    probe = fake_tensorflow(tmp_path / "tf-ran", ["/physical_device:GPU:0"])
    environ = {"PATH": str(bin_dir), "NVIDIA_VISIBLE_DEVICES": "all"}
    assert discover_gpus(("0", "3"), environ, tensorflow_probe=probe) == ("0", "3")
    assert discover_gpus((), environ, tensorflow_probe=probe) == ()  # FITJOBS_GPUS=none
    assert not (bin_dir / "nvidia-smi-ran").exists() and not (tmp_path / "tf-ran").exists()


def test_nvidia_smi_answers_alone_when_it_lists_gpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", H100_LISTING)
    probe = fake_tensorflow(tmp_path / "tf-ran", [])
    with caplog.at_level(logging.INFO, logger="service.supervisor.gpus"):
        found = discover_gpus("auto", {"PATH": str(bin_dir), "NVIDIA_VISIBLE_DEVICES": "all"},
                              tensorflow_probe=probe)
    assert found == ("0", "1", "2", "3")
    assert (bin_dir / "nvidia-smi-ran").exists() and not (tmp_path / "tf-ran").exists()
    assert "nvidia-smi: listed 4 GPU(s): 0 (NVIDIA H100 80GB HBM3, GPU-5a0e-aaaa)" in caplog.text
    assert "0,1,2,3 (found by nvidia-smi)" in caplog.text


def test_without_nvidia_smi_tensorflow_finds_the_gpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    probe = fake_tensorflow(tmp_path / "tf-ran", ["/physical_device:GPU:0", "/physical_device:GPU:1"])
    with caplog.at_level(logging.INFO, logger="service.supervisor.gpus"):
        found = discover_gpus("auto", {"PATH": str(tmp_path / "empty")}, tensorflow_probe=probe)
    assert found == ("0", "1")
    assert "nvidia-smi: `nvidia-smi` not found on PATH" in caplog.text
    assert "tensorflow: found 2 GPU(s): /physical_device:GPU:0, /physical_device:GPU:1" in caplog.text
    assert "0,1 (found by tensorflow)" in caplog.text


def test_cuda_visible_devices_picks_the_gpus_handed_out(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", H100_LISTING)
    probe = fake_tensorflow(tmp_path / "tf-ran", [])
    assert discover_gpus("auto", {"PATH": str(bin_dir), "CUDA_VISIBLE_DEVICES": "3,1"},
                         tensorflow_probe=probe) == ("3", "1")
    assert discover_gpus("auto", {"PATH": str(bin_dir), "CUDA_VISIBLE_DEVICES": "GPU-77b1"},
                         tensorflow_probe=probe) == ("GPU-77b1",), "UUIDs, shortened as CUDA allows"
    assert not (tmp_path / "tf-ran").exists()
    # TensorFlow numbers what CUDA_VISIBLE_DEVICES lets it see; the entries themselves are handed out.
    probe = fake_tensorflow(tmp_path / "tf-ran", ["/physical_device:GPU:0"])
    assert discover_gpus("auto", {"PATH": str(tmp_path / "empty"), "CUDA_VISIBLE_DEVICES": "6"},
                         tensorflow_probe=probe) == ("6",)


def test_a_cuda_entry_nvidia_smi_does_not_list_asks_tensorflow(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", H100_LISTING)
    probe = fake_tensorflow(tmp_path / "tf-ran", [], stderr="E cuda_platform.cc:52] failed call to cuInit\n")
    with pytest.raises(GpusNotVisible) as refused:
        discover_gpus("auto", {"PATH": str(bin_dir), "CUDA_VISIBLE_DEVICES": "7"}, tensorflow_probe=probe)
    assert (tmp_path / "tf-ran").exists()
    message = str(refused.value)
    assert "CUDA_VISIBLE_DEVICES=7 say this worker was given GPUs" in message
    assert "nvidia-smi: listed 4 GPU(s)" in message and "tensorflow: found no GPU" in message
    assert "failed call to cuInit" in message


def test_given_gpus_that_no_source_sees_refuse_and_name_every_cause(tmp_path: Path) -> None:
    bin_dir = fake_nvidia_smi(tmp_path / "bin", stderr="NVIDIA-SMI has failed because it couldn't "
                              "communicate with the NVIDIA driver.\n", status=9)
    probe = fake_tensorflow(tmp_path / "tf-ran", [], built_with_cuda=False)
    with pytest.raises(GpusNotVisible) as refused:
        discover_gpus("auto", {"PATH": str(bin_dir), "NVIDIA_VISIBLE_DEVICES": "all"}, tensorflow_probe=probe)
    message = str(refused.value)
    assert "NVIDIA_VISIBLE_DEVICES=all say this worker was given GPUs, but it can see none" in message
    assert "nvidia-smi: exited with status 9: NVIDIA-SMI has failed because it couldn't communicate" in message
    assert "tensorflow: found no GPU (this TensorFlow is built without CUDA)" in message
    assert "FITJOBS_GPUS=none" in message


def test_a_tensorflow_probe_that_hangs_is_stopped_and_named(tmp_path: Path) -> None:
    probe = fake_tensorflow(tmp_path / "tf-ran", ["/physical_device:GPU:0"], sleep=30)
    with pytest.raises(GpusNotVisible, match=r"tensorflow: gave no answer within 0.5 s "
                                             r"\(FITJOBS_GPU_DISCOVERY_TIMEOUT\)"):
        discover_gpus("auto", {"PATH": str(tmp_path / "empty"), "NVIDIA_VISIBLE_DEVICES": "GPU-5a0e-aaaa"},
                      tensorflow_probe=probe, timeout=0.5)


@pytest.mark.parametrize("environ", [{}, {"NVIDIA_VISIBLE_DEVICES": "void"}, {"NVIDIA_VISIBLE_DEVICES": "none"},
                                     {"NVIDIA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}])
def test_a_worker_given_no_gpus_trains_on_cpu(tmp_path: Path, environ: dict[str, str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    probe = fake_tensorflow(tmp_path / "tf-ran", [])
    with caplog.at_level(logging.INFO, logger="service.supervisor.gpus"):
        assert discover_gpus("auto", {"PATH": str(tmp_path / "empty"), **environ}, tensorflow_probe=probe) == ()
    assert "trains on the CPU" in caplog.text


def test_cuda_visible_devices_is_read_as_cuda_reads_it() -> None:
    assert cuda_visible_devices({}) is None
    assert cuda_visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == ()
    assert cuda_visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == ()
    assert cuda_visible_devices({"CUDA_VISIBLE_DEVICES": "0, 2,-1,3"}) == ("0", "2")
    assert cuda_visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-5a0e,1"}) == ("GPU-5a0e", "1")
    assert gpus_given({"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "-1"}) == ["NVIDIA_VISIBLE_DEVICES=all"]
    assert gpus_given({"NVIDIA_VISIBLE_DEVICES": "void", "CUDA_VISIBLE_DEVICES": "1"}) == ["CUDA_VISIBLE_DEVICES=1"]


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
    assert claimed_id(store, "cpu-node") == default.id
    assert claimed_id(store, "cpu-node") == cpu.id
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
    assert claimed_id(store, "n", free_gpus=2, node_gpus=2) == first.id
    # One GPU free: the 2-GPU job is next, so the 1-GPU job behind it does not take that GPU.
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2) is None
    assert store.get_job(small.id).state is JobState.QUEUED
    assert claimed_id(store, "n", free_gpus=2, node_gpus=2) == big.id
    assert store.claim_next_job("n", free_gpus=0, node_gpus=2) is None
    assert claimed_id(store, "n", free_gpus=1, node_gpus=2) == small.id


def test_a_job_too_large_for_this_node_does_not_hold_its_gpus(store: JobStore) -> None:
    huge, _ = store.create_job(SPEC, gpus=4)
    small, _ = store.create_job(SPEC, gpus=1)
    assert claimed_id(store, "n", free_gpus=1, node_gpus=2) == small.id
    assert claimed_id(store, "big-node", free_gpus=4, node_gpus=4) == huge.id


def test_a_higher_priority_job_goes_before_a_held_one(store: JobStore) -> None:
    big, _ = store.create_job(SPEC, gpus=2)
    urgent, _ = store.create_job(SPEC, gpus=1, priority=5)
    assert claimed_id(store, "n", free_gpus=1, node_gpus=2) == urgent.id
    assert store.claim_next_job("n", free_gpus=1, node_gpus=2) is None
    assert store.get_job(big.id).state is JobState.QUEUED
