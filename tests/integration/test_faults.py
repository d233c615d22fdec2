"""Fault injection with real processes on PostgreSQL: supervisors that die, drain or stall."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from service.store import JobStore, open_store
from tests.support.postgres import postgres_cluster_command, temporary_database, wait_for_postgres
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import REPO_ROOT, RunningService, alive, service_env, spawn, start_service, trainer_pids

LEASE_SECONDS = "3"
MEMORY_LIMIT_KIB = 6 * 1024**2  # room for TensorFlow's own address space, not for 8 GiB more


@dataclass
class Cluster:
    """An API process and any number of supervisors sharing one PostgreSQL database and home."""

    api: RunningService
    database_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, memory_limit_kib: int | None = None, **extra_env: str) -> subprocess.Popen[bytes]:
        env = service_env(self.api.home, None, {"FITJOBS_DATABASE_URL": self.database_url,
                                             "FITJOBS_LEASE_SECONDS": LEASE_SECONDS, **extra_env})
        log = self.api.home / f"worker-{len(self.workers) + 1}.log"
        if memory_limit_kib is None:
            worker = spawn("worker", env, log)
        else:
            with open(log, "ab") as out:
                worker = subprocess.Popen(["sh", "-c", f"ulimit -v {memory_limit_kib} && exec {sys.executable} "
                                           "-m service.cli worker"], env=env, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """SIGTERM every supervisor still running (waking stopped ones) and wait for it."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=60)

    def store(self) -> JobStore:
        return open_store(self.database_url, migrate=False)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with temporary_database() as url:
        api = start_service(tmp_path / "home", role="api",
                            extra_env={"FITJOBS_DATABASE_URL": url, "FITJOBS_LEASE_SECONDS": LEASE_SECONDS})
        running = Cluster(api, url)
        write_table(sentiment_rows(2000, seed=1), api.data_root / "big" / "train.csv")
        write_table(sentiment_rows(100, seed=2), api.data_root / "big" / "val.csv")
        try:
            yield running
        finally:
            running.stop_workers()
            assert api.stop() == 0
            assert trainer_pids(home=api.home) == []


def short_spec(model_dir: Path, seed: int, **top: Any) -> dict[str, Any]:
    """One epoch of a few inline rows: seconds, most of it the trainer starting."""
    return {"model": str(model_dir),
            "data": {"train": {"records": sentiment_rows(16, seed=seed)},
                     "validation": {"records": sentiment_rows(4, seed=seed + 1000)}},
            "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 16},
            **top}


def slow_spec(model_dir: Path, **top: Any) -> dict[str, Any]:
    """Three epochs of 1000 steps each: long enough to interrupt in the middle of epoch 2."""
    return {"model": str(model_dir),
            "data": {"train": {"path": "big/train.csv"}, "validation": {"path": "big/val.csv"}},
            "hyperparameters": {"epochs": 3, "batch_size": 2, "learning_rate": 1e-3, "max_length": 16},
            **top}


def wait_for_progress(api: RunningService, job_id: str, epoch: int, step: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"]
        if job["state"] == "running" and (progress["epoch"], progress["step"]) >= (epoch, step):
            assert progress["epoch"] == epoch, f"epoch {epoch} went by too fast to interrupt: {progress}"
            return job
        assert job["state"] in {"queued", "running"}, job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached epoch {epoch} step {step}")


def events_of(api: RunningService, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in api.get(f"/v1/jobs/{job_id}/events").json()["events"] if e["kind"] == kind]


def assert_resumed_cleanly(cluster: Cluster, job: dict[str, Any]) -> None:
    """Exactly 3 epochs of metrics, one published model, and attempt 2 started at epoch 2."""
    api = cluster.api
    metrics = api.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    steps = [row["step"] for row in metrics["steps"]]
    assert steps == sorted(set(steps)), "no step appears twice"
    artifacts_root = api.home / "artifacts"
    assert sorted(p.name for p in artifacts_root.iterdir()) == [job["id"]], "one artifact set, nothing partial"
    assert any(a["name"] == "model/config.json" for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"])
    second = (api.home / "jobs" / job["id"] / "attempt-2" / "trainer.log").read_text()
    assert "Epoch 2/3" in second and "Epoch 1/3" not in second, "attempt 2 resumed from the epoch-1 checkpoint"


def test_kill_9_supervisor_mid_epoch_then_a_new_one_finishes_the_job(cluster: Cluster, tiny_model_dir: Path) -> None:
    first = cluster.start_worker()
    job = cluster.api.post("/v1/jobs", json=slow_spec(tiny_model_dir)).json()
    wait_for_progress(cluster.api, job["id"], epoch=2, step=50)
    trainers = trainer_pids(job["id"])
    assert trainers
    started = time.monotonic()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(trainers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(trainers) == [], "the trainer dies with its supervisor"

    cluster.start_worker()
    done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nkill -9 mid-epoch 2: succeeded {time.monotonic() - started:.1f} s after the kill, "
          f"attempt {done['attempt']}")
    assert done["state"] == "succeeded" and done["attempt"] == 2
    messages = [e["message"] for e in cluster.api.get(f"/v1/jobs/{job['id']}/events").json()["events"]]
    assert any("stopped heartbeating" in message for message in messages)
    # The last checkpoint before the kill is epoch 1's end: at most one epoch of work is redone.
    assert [e["data"] for e in events_of(cluster.api, job["id"], "resumed")] == [{"epoch": 1, "steps_done": 1000}]
    assert_resumed_cleanly(cluster, done)


def test_sigterm_drain_requeues_without_spending_an_attempt(cluster: Cluster, tiny_model_dir: Path) -> None:
    first = cluster.start_worker()
    job = cluster.api.post("/v1/jobs", json=slow_spec(tiny_model_dir, max_attempts=1)).json()
    wait_for_progress(cluster.api, job["id"], epoch=2, step=50)
    started = time.monotonic()
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    drained = time.monotonic() - started
    store = cluster.store()
    requeued = store.get_job(job["id"])
    assert requeued.state.value == "queued" and requeued.attempts_spent == 0

    cluster.start_worker()
    done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nSIGTERM drain: supervisor exited {drained:.1f} s after SIGTERM; job {done['state']}")
    assert done["state"] == "succeeded" and done["attempt"] == 2
    assert store.get_job(job["id"]).attempts_spent == 1
    store.engine.dispose()
    # The drained trainer checkpointed the step it was at; attempt 2 went on from the next one.
    [checkpointed] = events_of(cluster.api, job["id"], "checkpointed")
    assert checkpointed["data"]["epoch"] == 2 and checkpointed["data"]["steps_done"] >= 50
    [resumed] = events_of(cluster.api, job["id"], "resumed")
    assert resumed["data"] == checkpointed["data"]
    print(f"drain checkpoint at epoch 2 step {checkpointed['data']['steps_done']}; resumed there")
    assert_resumed_cleanly(cluster, done)



def wait_for_chunk(api: RunningService, job_id: str, chunk: int, timeout: float = 180) -> dict[str, Any]:
    """Poll a batch prediction until it runs with at least ``chunk`` chunks written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prediction = api.get(f"/v1/predictions/{job_id}").json()
        if prediction["state"] == "running" and prediction["progress"]["step"] >= chunk:
            assert prediction["progress"]["step"] < prediction["progress"]["steps_per_epoch"], "too fast to stop"
            return dict(prediction)
        assert prediction["state"] in {"queued", "running"}, prediction
        time.sleep(0.1)
    raise AssertionError(f"prediction {job_id} never reached chunk {chunk}")


def test_a_batch_prediction_survives_a_killed_and_a_drained_supervisor(cluster: Cluster,
                                                                       tiny_model_dir: Path) -> None:
    rows = 30_000
    first = cluster.start_worker()
    trained = cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, 5)).json()["id"]
    assert cluster.api.wait_for_state(trained, {"succeeded", "failed"}, timeout=300)["state"] == "succeeded"
    write_table(sentiment_rows(rows, seed=6), cluster.api.data_root / "predict.csv")
    # max_attempts 2: the kill spends one, the drain none, so a third attempt may still finish it.
    spec = {"job": trained, "data": {"path": "predict.csv"}, "batch_size": 8, "max_attempts": 2}
    job = cluster.api.post("/v1/predictions", json=spec).json()
    wait_for_chunk(cluster.api, job["id"], 2)
    trainers = trainer_pids(job["id"])
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    deadline = time.monotonic() + 10
    while alive(trainers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(trainers) == [], "the trainer dies with its supervisor"

    second = cluster.start_worker()
    resumed_at = wait_for_chunk(cluster.api, job["id"], 6, timeout=300)["attempt"]
    assert resumed_at == 2
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    store = cluster.store()
    requeued = store.get_job(job["id"])
    assert requeued.state.value == "queued" and requeued.attempts_spent == 1, "the drain spent no attempt"

    cluster.start_worker()
    done = cluster.api.get(f"/v1/predictions/{job['id']}").json()
    deadline = time.monotonic() + 300
    while done["state"] not in {"succeeded", "failed", "cancelled"} and time.monotonic() < deadline:
        time.sleep(0.3)
        done = cluster.api.get(f"/v1/predictions/{job['id']}").json()
    assert done["state"] == "succeeded" and done["attempt"] == 3, done
    assert store.get_job(job["id"]).attempts_spent == 2
    store.engine.dispose()
    resumes = [event["data"]["rows"] for event in events_of(cluster.api, job["id"], "predictions_resumed")]
    assert len(resumes) == 2 and 2 * 2048 <= resumes[0] < resumes[1] < rows, resumes
    assert done["result"]["resumed_from_row"] == resumes[1]
    lines = cluster.api.get(done["output_url"]).text.splitlines()
    assert [json.loads(line)["row"] for line in lines] == list(range(rows)), "every row once, in order"
    print(f"\nbatch prediction: killed, then drained; went on from rows {resumes}")


def test_two_supervisors_run_each_job_exactly_once(cluster: Cluster, tiny_model_dir: Path) -> None:
    cluster.start_worker()
    cluster.start_worker()
    started = time.monotonic()
    ids = [cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, seed)).json()["id"] for seed in range(12)]
    done = [cluster.api.wait_for_state(job_id, {"succeeded", "failed", "cancelled"}, timeout=300) for job_id in ids]
    print(f"\ntwo supervisors: {len(ids)} jobs in {time.monotonic() - started:.1f} s")
    assert [job["state"] for job in done] == ["succeeded"] * len(ids)
    assert {job["attempt"] for job in done} == {1}
    owners = set()
    for job_id in ids:
        claims = [e for e in cluster.api.get(f"/v1/jobs/{job_id}/events").json()["events"]
                  if e["kind"] == "state" and e["state"] == "running"]
        assert len(claims) == 1, f"{job_id} was claimed {len(claims)} times"
        owners.add(claims[0]["data"]["owner"])
        attempts = sorted(p.name for p in (cluster.api.home / "jobs" / job_id).iterdir()
                          if p.name.startswith("attempt"))
        assert attempts == ["attempt-1"], "one trainer ran per job"
    assert len(owners) == 2, f"both supervisors took jobs: {owners}"


def test_a_stopped_owner_is_fenced_off_after_another_supervisor_finishes(cluster: Cluster,
                                                                         tiny_model_dir: Path) -> None:
    first = cluster.start_worker()
    spec = slow_spec(tiny_model_dir)
    spec["hyperparameters"].update(epochs=2, batch_size=8)  # 250 steps an epoch
    job = cluster.api.post("/v1/jobs", json=spec).json()
    wait_for_progress(cluster.api, job["id"], epoch=1, step=20)
    [trainer] = trainer_pids(job["id"])
    frozen = [first.pid, trainer]
    for pid in frozen:  # the whole node hangs: supervisor and trainer
        os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        cluster.start_worker()
        done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
        print(f"\nSIGSTOP owner: attempt 2 succeeded on the other supervisor {time.monotonic() - stopped:.1f} s "
              f"after the stop (lease {LEASE_SECONDS} s)")
        assert done["state"] == "succeeded" and done["attempt"] == 2
        published = sorted(p.name for p in (cluster.api.home / "artifacts").iterdir())
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while alive([trainer]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive([trainer]) == [], "the stale trainer stops once its writes are refused"
    stale_log = (cluster.api.home / "jobs" / job["id"] / "attempt-1" / "trainer.log").read_text()
    assert "no longer current" in stale_log
    time.sleep(2)  # give the woken supervisor a few passes
    after = cluster.api.get(f"/v1/jobs/{job['id']}").json()
    assert (after["state"], after["attempt"], after["result"]) == ("succeeded", 2, done["result"])
    assert published == [job["id"]]
    assert sorted(p.name for p in (cluster.api.home / "artifacts").iterdir()) == [job["id"]], "one artifact set"
    assert first.poll() is None, "the woken supervisor keeps serving"


def test_out_of_memory_is_retried_at_most_max_attempts_then_the_next_job_runs(
        cluster: Cluster, tmp_path: Path, tiny_model_dir: Path) -> None:
    long_model = tmp_path / "long-bert"
    subprocess.run([sys.executable, "-m", "tests.support.tiny_bert", str(long_model), "4096"], check=True,
                   cwd=REPO_ROOT, capture_output=True, timeout=300)
    # The supervisor and its trainers run under a memory limit, as in a container with one.
    # RLIMIT_AS (`ulimit -v`) makes an allocation past the limit fail at once; a cgroup limit
    # ends the same way (the kernel's OOM killer) but can first spend minutes evicting pages.
    worker = cluster.start_worker(memory_limit_kib=MEMORY_LIMIT_KIB)
    # 64 rows of 4096 tokens: attention alone needs 64 x 2 heads x 4096^2 floats (8 GiB) a layer.
    words = " ".join(["great"] * 4100)
    rows = [{"text": words, "label": label} for label in ("positive", "negative") * 32]
    hungry = {"model": str(long_model), "max_attempts": 2,
              "data": {"train": {"records": rows}, "validation": {"records": rows[:2]}},
              "hyperparameters": {"epochs": 1, "batch_size": 64, "max_length": 4096}}
    job = cluster.api.post("/v1/jobs", json=hungry).json()
    after = cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, 1)).json()
    started = time.monotonic()
    failed = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nOOM under a {MEMORY_LIMIT_KIB // 1024**2} GiB limit: {failed['error']['code']} after "
          f"{failed['attempt']} attempts, {time.monotonic() - started:.1f} s")
    assert failed["state"] == "failed" and failed["attempt"] == 2
    assert failed["error"]["code"] == "out_of_memory" and failed["error"]["retryable"] is True
    assert "batch_size or max_length" in failed["error"]["message"]
    messages = [e["message"] for e in cluster.api.get(f"/v1/jobs/{job['id']}/events").json()["events"]]
    assert any("Attempt 1 failed (out_of_memory" in message for message in messages)
    assert cluster.api.wait_for_state(after["id"], {"succeeded", "failed"}, timeout=300)["state"] == "succeeded"
    assert worker.poll() is None, "the supervisor outlives its trainers' allocation failures"


def test_a_trainer_killed_again_and_again_fails_after_max_attempts(cluster: Cluster, tiny_model_dir: Path) -> None:
    cluster.start_worker()
    job = cluster.api.post("/v1/jobs", json=slow_spec(tiny_model_dir, max_attempts=2)).json()
    for attempt in (1, 2):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = cluster.api.get(f"/v1/jobs/{job['id']}").json()
            pids = trainer_pids(job["id"])
            if current["attempt"] == attempt and current["state"] == "running" and pids:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"attempt {attempt} never started")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    failed = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
    print(f"\nSIGKILL twice: {failed['state']} {failed['error']['code']} at attempt {failed['attempt']}")
    assert (failed["state"], failed["attempt"], failed["error"]["code"]) == ("failed", 2, "killed")
    assert "SIGKILL" in failed["error"]["message"]
    nxt = cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, 2)).json()
    assert cluster.api.wait_for_state(nxt["id"], {"succeeded", "failed"}, timeout=120)["state"] == "succeeded"


def mount_tmpfs(folder: Path, size: str) -> None:
    """A small tmpfs at ``folder`` (skipped, or failed under CI=true, where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a small tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: the disk-full tests must run)")
        pytest.skip(reason)


def fill(folder: Path) -> Path:
    """Write one file until the file system holding ``folder`` is full."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_disk_full_while_publishing_leaves_nothing_partial(cluster: Cluster, tiny_model_dir: Path) -> None:
    artifacts = cluster.api.home / "artifacts"
    mount_tmpfs(artifacts, "64k")
    try:
        cluster.start_worker()
        job = cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, 3, max_attempts=1)).json()
        failed = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
        print(f"\ndisk full while publishing: {failed['state']} {failed['error']['code']}")
        assert failed["state"] == "failed" and failed["error"]["code"] == "disk_full", failed
        assert "No space left" in failed["error"]["message"]
        assert list(artifacts.iterdir()) == [], "no partial artifact and no staging folder is left"
        assert cluster.api.get(f"/v1/jobs/{job['id']}/artifacts").json()["artifacts"] == []
        tarball = cluster.api.get(f"/v1/jobs/{job['id']}/model.tar.gz")
        assert tarball.status_code == 404 and tarball.headers["Content-Type"] == "application/problem+json"
        # The last checkpoint (end of the only epoch) is intact for a retry.
        checkpoint = cluster.api.home / "jobs" / job["id"] / "checkpoint"
        assert [p.name for p in checkpoint.rglob("checkpoint")] == ["checkpoint"]  # TF's index of the latest
        assert [row["epoch"] for row in json.loads((checkpoint / "epochs.json").read_text())] == [1]
        assert cluster.api.get("/readyz").status_code == 200
        nxt = cluster.api.post("/v1/jobs", json=short_spec(tiny_model_dir, 4)).json()
        assert cluster.api.wait_for_state(nxt["id"], {"running", "failed", "succeeded"}, timeout=60)
    finally:
        cluster.stop_workers()
        subprocess.run(["umount", "-l", str(artifacts)], check=True)


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint_and_the_retry_resumes(
        cluster: Cluster, tiny_model_dir: Path) -> None:
    jobs_dir = cluster.api.home / "jobs"
    mount_tmpfs(jobs_dir, "8m")
    try:
        cluster.start_worker()
        spec = slow_spec(tiny_model_dir, max_attempts=2)
        spec["hyperparameters"].update(batch_size=8)  # 250 steps an epoch
        job = cluster.api.post("/v1/jobs", json=spec).json()
        wait_for_progress(cluster.api, job["id"], epoch=2, step=5)  # epoch 1's checkpoint is written
        filler = fill(jobs_dir)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            events = cluster.api.get(f"/v1/jobs/{job['id']}/events").json()["events"]
            if any("Attempt 1 failed (disk_full" in e["message"] for e in events):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("attempt 1 did not fail with disk_full")
        filler.unlink()  # space again for the retry
        done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
        print(f"\ndisk full while checkpointing: attempt 1 disk_full, attempt 2 {done['state']}")
        assert done["state"] == "succeeded" and done["attempt"] == 2, done
        resumed = events_of(cluster.api, job["id"], "resumed")
        assert [event["data"]["epoch"] for event in resumed] == [1], "attempt 2 started from epoch 1's checkpoint"
        metrics = cluster.api.get(f"/v1/jobs/{job['id']}/metrics").json()
        assert [row["epoch"] for row in metrics["epochs"]] == [1, 2, 3]
    finally:
        cluster.stop_workers()
        subprocess.run(["umount", "-l", str(jobs_dir)], check=True)


def test_postgres_restart_during_a_job(cluster: Cluster, tiny_model_dir: Path) -> None:
    cluster.start_worker()
    spec = slow_spec(tiny_model_dir)
    spec["hyperparameters"].update(epochs=2, batch_size=8)
    job = cluster.api.post("/v1/jobs", json=spec).json()
    wait_for_progress(cluster.api, job["id"], epoch=1, step=20)
    subprocess.run(postgres_cluster_command("stop"), check=True, capture_output=True, timeout=60)
    stopped = time.monotonic()
    try:
        down = cluster.api.get(f"/v1/jobs/{job['id']}")
        assert down.status_code == 503 and down.headers["Content-Type"] == "application/problem+json"
        assert "Traceback" not in down.text and down.json()["status"] == 503
        assert cluster.api.get("/readyz").status_code == 503
        time.sleep(5)  # the trainer goes on training, buffering what it reports
    finally:
        subprocess.run(postgres_cluster_command("start"), check=True, capture_output=True, timeout=60)
        wait_for_postgres()
    down_for = time.monotonic() - stopped
    done = cluster.api.wait_for_state(job["id"], {"succeeded", "failed", "cancelled"}, timeout=300)
    print(f"\nPostgreSQL down {down_for:.1f} s (503 meanwhile); job {done['state']} at attempt {done['attempt']}")
    assert done["state"] == "succeeded" and done["attempt"] == 1
    metrics = cluster.api.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert cluster.api.get("/readyz").status_code == 200


def test_twenty_concurrent_posts_with_one_idempotency_key_make_one_job(cluster: Cluster,
                                                                       tiny_model_dir: Path) -> None:
    spec = short_spec(tiny_model_dir, 5)
    barrier = threading.Barrier(20)

    def post(_: int) -> tuple[int, str]:
        barrier.wait()
        response = requests.post(cluster.api.url + "/v1/jobs", json=spec, headers={"Idempotency-Key": "order-42"},
                                 timeout=60)
        return response.status_code, response.json()["id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))
    print(f"\n20 concurrent POSTs, one Idempotency-Key: {len({i for _, i in answers})} job, "
          f"{time.monotonic() - started:.2f} s")
    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(status for status, _ in answers) == [200] * 19 + [201]
    assert len(cluster.api.get("/v1/jobs").json()["jobs"]) == 1


def test_api_sigterm_fails_readiness_first_and_finishes_in_flight_requests(tmp_path: Path) -> None:
    api = start_service(tmp_path / "api-home", role="api", extra_env={"FITJOBS_API_DRAIN_SECONDS": "3"})
    stream_job = api.post("/v1/jobs", json={"model": "x", "data": {"train": {"records": [
        {"text": "a", "label": 0}]}}}).json()
    # An event stream is a request that stays in flight until the node drains.
    stream = requests.get(f"{api.url}/v1/jobs/{stream_job['id']}/events",
                          headers={"Accept": "text/event-stream"}, stream=True, timeout=30)
    lines = stream.iter_lines()
    assert next(lines).startswith(b"id: ")
    started = time.monotonic()
    api.process.send_signal(signal.SIGTERM)
    seen_unready = None
    while time.monotonic() - started < 2.5:
        ready = requests.get(api.url + "/readyz", timeout=5)
        if ready.status_code == 503:
            seen_unready = time.monotonic() - started
            assert "shutting down" in ready.json()["detail"]
            break
        time.sleep(0.05)
    assert seen_unready is not None and seen_unready < 1.0, "readiness turns false at once"
    # Still serving while load balancers take the node out.
    assert requests.get(f"{api.url}/v1/jobs/{stream_job['id']}", timeout=5).status_code == 200
    assert requests.get(api.url + "/healthz", timeout=5).status_code == 200
    rest = b"".join(lines)  # the stream ends cleanly instead of being cut
    assert b"Traceback" not in rest
    assert api.process.wait(timeout=40) == 0
    print(f"\nAPI SIGTERM: /readyz 503 after {seen_unready:.2f} s; exited {time.monotonic() - started:.1f} s after")
