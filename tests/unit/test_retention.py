"""Job deletion and retention on real SQLite and PostgreSQL stores and real files under a temporary home.

The jobs are moved through their states by the store itself (claim, transition), standing in for the
supervisor and trainer (tested in tests/integration); their files are written where those write them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from service.api import create_app
from service.artifacts import publish_artifacts
from service.config import Settings
from service.jobs import JobState, MetricPoint, Progress
from service.locations import UPLOAD_STEM, trainer_log_key, upload_dir
from service.store import JobNotFound, JobStore, open_store
from service.store.dataset_store import DatasetNotFound, DatasetStore
from service.store.job_store import JobInUse, new_job_id, utcnow
from service.store.tables import job_events, jobs, metrics
from service.supervisor.retention import PruneReport, RetentionPass, prune, prune_jobs, remove_files_of
from service.supervisor.worker import Supervisor
from service.uploads import new_dataset_id
from tests.support.s3 import S3Server, s3_server
from tests.support.service import REPO_ROOT

SPEC = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
NODE = "node-a"


@pytest.fixture
def home(settings: Settings) -> Settings:
    settings.ensure_dirs()
    return settings


def job_files(settings: Settings, job_id: str) -> list[Path]:
    """Where a job's files are: its folder (logs, checkpoints), its published artifacts, its cached tarball."""
    return [settings.jobs_dir / job_id, settings.artifacts_dir / job_id,
            settings.cache_dir / f"{job_id}.model.tar.gz"]


def write_files(settings: Settings, job_id: str) -> None:
    attempt = settings.attempt_dir(job_id, 1)
    attempt.mkdir(parents=True, exist_ok=True)
    (attempt / "trainer.log").write_text("epoch 1/1\n")
    (settings.checkpoint_dir(job_id) / "chief").mkdir(parents=True, exist_ok=True)
    (settings.checkpoint_dir(job_id) / "chief" / "weights").write_bytes(b"w")
    model = settings.artifacts_dir / job_id / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    (settings.cache_dir / f"{job_id}.model.tar.gz").write_bytes(b"tar")


def finished(store: JobStore, settings: Settings, state: JobState = JobState.SUCCEEDED,
             spec: dict | None = None) -> str:
    """A job that ran once and ended in ``state``, with events, metrics and files."""
    created = store.create_job(spec or SPEC)[0]
    claimed = store.claim_next_job(NODE)
    assert claimed is not None and claimed.id == created.id
    store.record_progress(created.id, 1, Progress(epoch=1, epochs=1), [MetricPoint("loss", 0.5, 1)])
    write_files(settings, created.id)
    store.transition(created.id, state, "ended", attempt=1)
    return created.id


def running(store: JobStore, spec: dict | None = None) -> str:
    created = store.create_job(spec or SPEC)[0]
    claimed = store.claim_next_job(NODE)
    assert claimed is not None and claimed.id == created.id
    return created.id


def rows_of(store: JobStore, job_id: str) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(table).where(column == job_id)).scalar_one()
                     for table, column in ((jobs, jobs.c.id), (job_events, job_events.c.job_id),
                                           (metrics, metrics.c.job_id)))  # type: ignore[return-value]


def finished_at(store: JobStore, job_id: str) -> datetime:
    finished = store.get_job(job_id).finished_at
    assert finished is not None
    return finished


# -- delete_job ---------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_delete_job_removes_every_row_of_a_finished_job(store: JobStore, home: Settings, state: JobState) -> None:
    job_id = finished(store, home, state)
    other = finished(store, home)
    assert rows_of(store, job_id)[0] == 1 and all(rows_of(store, job_id))
    deleted = store.delete_job(job_id)
    assert deleted.id == job_id and deleted.state is state
    assert rows_of(store, job_id) == (0, 0, 0)
    with pytest.raises(JobNotFound):
        store.get_job(job_id)
    with pytest.raises(JobNotFound):
        store.delete_job(job_id)
    assert all(rows_of(store, other)), "another job's rows stay"


def test_delete_job_refuses_queued_and_running_jobs(store: JobStore) -> None:
    active = running(store)
    queued = store.create_job(SPEC)[0].id
    for job_id, state in ((active, JobState.RUNNING), (queued, JobState.QUEUED)):
        before = rows_of(store, job_id)
        with pytest.raises(JobInUse) as refused:
            store.delete_job(job_id)
        assert refused.value.job.state is state
        assert store.get_job(job_id).state is state and rows_of(store, job_id) == before


def test_delete_job_refuses_a_parent_while_a_continuation_is_queued_or_running(store: JobStore,
                                                                              home: Settings) -> None:
    parent = finished(store, home)
    continuing = {**SPEC, "model": {"job": parent}}
    first = running(store, continuing)
    second = store.create_job(continuing, parent=parent)[0].id
    with pytest.raises(JobInUse) as refused:
        store.delete_job(parent)
    assert refused.value.dependents == [first, second]
    assert all(rows_of(store, parent))
    store.request_cancel(second)
    store.transition(first, JobState.SUCCEEDED, "done", attempt=1)
    store.delete_job(parent)  # finished continuations have their own model
    assert rows_of(store, parent) == (0, 0, 0)
    assert store.get_job(first).state is JobState.SUCCEEDED


def test_delete_job_refuses_a_source_while_a_job_that_reused_it_remains(store: JobStore, home: Settings) -> None:
    spec = {**SPEC, "reuse": True}
    source = store.create_job(spec, fingerprint="f" * 64)[0]
    assert store.claim_next_job(NODE) is not None
    store.transition(source.id, JobState.SUCCEEDED, "done", attempt=1)
    reused = store.create_job(spec, fingerprint="f" * 64, reuse_of=store.get_job(source.id))[0]
    assert reused.reused_from == source.id
    with pytest.raises(JobInUse) as refused:
        store.delete_job(source.id)
    assert refused.value.reusers == [reused.id]
    store.delete_job(reused.id)
    store.delete_job(source.id)


def test_a_continuation_of_a_deleted_job_is_not_created(store: JobStore, home: Settings) -> None:
    parent = finished(store, home)
    store.delete_job(parent)
    with pytest.raises(JobNotFound):
        store.create_job({**SPEC, "model": {"job": parent}}, parent=parent)
    assert store.list_jobs()[0] == []


def test_remove_files_of_takes_every_file_of_the_job_and_no_other(home: Settings) -> None:
    doomed, kept = new_job_id(), new_job_id()
    write_files(home, doomed)
    write_files(home, kept)
    remove_files_of(home, doomed)
    assert not any(path.exists() for path in job_files(home, doomed))
    assert all(path.exists() for path in job_files(home, kept))
    remove_files_of(home, doomed)  # what is gone already is no error


# -- retention ----------------------------------------------------------------------------------


def test_retention_prunes_a_job_once_it_is_older_than_the_period(store: JobStore, home: Settings) -> None:
    job_id = finished(store, home)
    ended = finished_at(store, job_id)
    young = prune(home, store, now=ended + timedelta(days=6, hours=23), days=7)
    assert young.jobs == [] and store.get_job(job_id).state is JobState.SUCCEEDED
    assert all(path.exists() for path in job_files(home, job_id))
    old = prune(home, store, now=ended + timedelta(days=7, seconds=1), days=7)
    assert old.jobs == [job_id]
    assert rows_of(store, job_id) == (0, 0, 0)
    assert not any(path.exists() for path in job_files(home, job_id))


def test_retention_keeps_newer_running_and_queued_jobs_and_the_models_queued_jobs_continue_from(
        store: JobStore, home: Settings) -> None:
    old = finished(store, home, JobState.FAILED)
    parent = finished(store, home)
    newer = finished(store, home)
    continuing = {**SPEC, "model": {"job": parent}}
    active = running(store)
    queued_continuation = store.create_job(continuing, parent=parent)[0].id
    queued = store.create_job(SPEC)[0].id
    now = utcnow()
    with store.engine.begin() as conn:  # the old ones ended long ago
        conn.execute(update(jobs).where(jobs.c.id.in_([old, parent])).values(finished_at=now - timedelta(days=30)))
    report = prune(home, store, now=now, days=10)
    assert report.jobs == [old] and report.kept_jobs == [parent]
    for job_id, state in ((parent, JobState.SUCCEEDED), (active, JobState.RUNNING),
                          (queued_continuation, JobState.QUEUED), (queued, JobState.QUEUED),
                          (newer, JobState.SUCCEEDED)):
        assert store.get_job(job_id).state is state
    assert all(path.exists() for path in job_files(home, parent)), "the model a queued job continues from stays"
    assert all(path.exists() for path in job_files(home, newer))
    assert not any(path.exists() for path in job_files(home, old))
    # Once the continuation has ended, the parent goes in the next pass.
    store.request_cancel(queued_continuation)
    later = prune(home, store, now=now, days=10)
    assert later.jobs == [parent] and not any(path.exists() for path in job_files(home, parent))


def test_retention_deletes_jobs_that_reused_a_source_before_the_source(store: JobStore, home: Settings) -> None:
    spec = {**SPEC, "reuse": True}
    source = store.create_job(spec, fingerprint="e" * 64)[0]
    assert store.claim_next_job(NODE) is not None
    write_files(home, source.id)
    store.transition(source.id, JobState.SUCCEEDED, "done", attempt=1)
    reused = store.create_job(spec, fingerprint="e" * 64, reuse_of=store.get_job(source.id))[0]
    report = prune(home, store, now=finished_at(store, reused.id) + timedelta(days=2), days=1)
    assert report.jobs == [reused.id, source.id] and report.kept_jobs == []
    assert not any(path.exists() for path in job_files(home, source.id))


def add_upload(home: Settings, store: JobStore, created_at: datetime) -> str:
    dataset_id = new_dataset_id()
    folder = upload_dir(home.uploads_dir, dataset_id)
    folder.mkdir(parents=True)
    (folder / f"{UPLOAD_STEM}.csv").write_text("text,label\na,0\n")
    DatasetStore(store.engine).add(dataset_id=dataset_id, filename="t.csv", format="csv", size_bytes=15,
                                   sha256="0" * 64, rows=1, columns=["text", "label"], created_at=created_at)
    return dataset_id


def test_retention_prunes_old_unused_uploads_and_keeps_read_or_new_ones(store: JobStore, home: Settings) -> None:
    now = utcnow()
    unused = add_upload(home, store, now - timedelta(days=40))
    read_by_queued = add_upload(home, store, now - timedelta(days=40))
    read_by_kept = add_upload(home, store, now - timedelta(days=40))
    read_by_pruned = add_upload(home, store, now - timedelta(days=40))
    fresh = add_upload(home, store, now - timedelta(days=1))
    kept_job = finished(store, home, spec={**SPEC, "data": {"train": {"upload": read_by_kept}}})
    pruned_job = finished(store, home, spec={**SPEC, "data": {"train": {"upload": read_by_pruned}}})
    store.create_job({**SPEC, "data": {"train": {"records": []}, "validation": {"upload": read_by_queued}}},
                     uploads=[read_by_queued])
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == pruned_job).values(finished_at=now - timedelta(days=40)))
    report = prune(home, store, now=now, days=30)
    assert report.jobs == [pruned_job] and store.get_job(kept_job).state is JobState.SUCCEEDED
    assert sorted(report.uploads) == sorted([unused, read_by_pruned])
    assert sorted(report.kept_uploads) == sorted([read_by_queued, read_by_kept])
    datasets = DatasetStore(store.engine)
    for dataset_id in (unused, read_by_pruned):
        with pytest.raises(DatasetNotFound):
            datasets.get(dataset_id)
        assert not upload_dir(home.uploads_dir, dataset_id).exists()
    for dataset_id in (read_by_queued, read_by_kept, fresh):
        assert datasets.get(dataset_id).id == dataset_id
        assert (upload_dir(home.uploads_dir, dataset_id) / f"{UPLOAD_STEM}.csv").is_file()


def test_a_pass_removes_the_files_a_crashed_delete_left(store: JobStore, home: Settings) -> None:
    crashed = finished(store, home)
    kept = finished(store, home)
    store.delete_job(crashed)  # the rows went; the process died before the files did
    report = prune(home, store, now=utcnow(), days=365)
    assert report.leftovers == [crashed] and report.jobs == []
    assert not any(path.exists() for path in job_files(home, crashed))
    assert all(path.exists() for path in job_files(home, kept))


def test_no_retention_period_prunes_nothing(store: JobStore, home: Settings) -> None:
    job_id = finished(store, home)
    assert home.retention_days == 0
    assert prune(home, store, now=utcnow() + timedelta(days=10_000)) == PruneReport()
    assert store.get_job(job_id).state is JobState.SUCCEEDED


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_pass_is_skipped_while_another_node_holds_the_lock(database_url: str, store: JobStore,
                                                            home: Settings) -> None:
    job_id = finished(store, home)
    other = open_store(database_url, migrate=False)
    try:
        with other.pruning_lock() as held:
            assert held
            report = prune(home, store, now=utcnow() + timedelta(days=2), days=1)
        assert report.skipped and report.jobs == []
        assert store.get_job(job_id).state is JobState.SUCCEEDED
        assert prune(home, store, now=utcnow() + timedelta(days=2), days=1).jobs == [job_id]
    finally:
        other.engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_concurrent_pruners_delete_each_job_once_without_errors(database_url: str, store: JobStore,
                                                               home: Settings) -> None:
    expired = sorted(finished(store, home) for _ in range(12))
    now = utcnow() + timedelta(days=2)
    reports: list[PruneReport] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def pass_on_its_own_node() -> None:
        node = open_store(database_url, migrate=False)
        try:
            start.wait()
            reports.append(prune(home, node, now=now, days=1))
            # Then without the lock, beside the others: each job's row lock lets exactly one delete it.
            unlocked = PruneReport()
            prune_jobs(home, node, now - timedelta(days=1), unlocked)
            reports.append(unlocked)
        except BaseException as exc:  # noqa: BLE001 - any error, of any kind, fails the test below
            errors.append(exc)
        finally:
            node.engine.dispose()

    threads = [threading.Thread(target=pass_on_its_own_node) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    deleted = [job_id for report in reports for job_id in report.jobs]
    assert sorted(deleted) == expired, "every expired job deleted exactly once"
    assert store.list_jobs()[0] == []
    assert not any(path.exists() for job_id in expired for path in job_files(home, job_id))


# -- the supervisor -----------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_supervisor_runs_a_pass_when_it_starts_and_then_once_per_interval(store: JobStore,
                                                                           settings: Settings) -> None:
    keeping = Settings.from_env({**settings.environ, "FITJOBS_RETENTION_DAYS": "7",
                                 "FITJOBS_RETENTION_INTERVAL_SECONDS": "3600", "FITJOBS_WARM_TRAINERS": "0"})
    keeping.ensure_dirs()
    old, new = finished(store, keeping), finished(store, keeping)
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == old).values(finished_at=utcnow() - timedelta(days=8)))
    supervisor = Supervisor(keeping, store, owner=NODE, gpu_ids=())
    assert supervisor.retention is not None
    supervisor.tick()
    supervisor.retention.join(60)
    report = supervisor.retention.last_report
    assert report is not None and report.jobs == [old]
    assert not any(path.exists() for path in job_files(keeping, old))
    assert store.get_job(new).state is JobState.SUCCEEDED
    assert not supervisor.retention.maybe_start(), "the next pass waits for the interval"
    assert Supervisor(keeping, store, gpu_ids=(), once_wait=1.0).retention is None
    assert not RetentionPass(settings, store).maybe_start(), "FITJOBS_RETENTION_DAYS=0 keeps everything"


# -- object storage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def stored_keys(settings: Settings) -> list[str]:
    storage = settings.storage
    return [f"{folder}/{name}" for folder in ("artifacts", "checkpoints", "logs", "cache")
            for name in storage.children(folder)]


def finished_in_bucket(settings: Settings, store: JobStore, tmp_path: Path) -> str:
    """A succeeded job whose artifacts, model tarball, checkpoint and log copy are in the bucket."""
    job_id = store.create_job(SPEC)[0].id
    assert store.claim_next_job(NODE) is not None
    staging = tmp_path / f"staging-{job_id}"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "config.json").write_text("{}")
    publish_artifacts(settings.storage, staging, job_id)
    settings.storage.write_bytes(f"checkpoints/{job_id}/state/chief", b"c")
    settings.storage.write_bytes(trainer_log_key(job_id, 1), b"epoch 1/1\n")
    store.transition(job_id, JobState.SUCCEEDED, "done", attempt=1)
    return job_id


def test_delete_and_retention_remove_a_jobs_objects_from_the_bucket(tmp_path: Path, s3: S3Server) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                                  "FITJOBS_STORAGE_URL": f"s3://{s3.new_bucket()}/fitjobs", **s3.environ})
    app = create_app(settings, test_config={"TESTING": True})
    store: JobStore = app.extensions["fitjobs.store"]
    try:
        deleted, crashed, kept = (finished_in_bucket(settings, store, tmp_path) for _ in range(3))
        assert sorted(stored_keys(settings)) == sorted(f"{folder}/{job_id}" for job_id in (deleted, crashed, kept)
                                                       for folder in ("artifacts", "checkpoints", "logs", "cache"))
        client = app.test_client()
        assert client.get(f"/v1/jobs/{deleted}/model.tar.gz").status_code == 200
        assert client.delete(f"/v1/jobs/{deleted}").status_code == 204
        assert client.get(f"/v1/jobs/{deleted}/artifacts").status_code == 404
        assert not [key for key in stored_keys(settings) if deleted in key]
        store.delete_job(crashed)  # its rows went; the process died before its objects did
        report = prune(settings, store, now=utcnow(), days=365)
        assert report.leftovers == [crashed]
        assert sorted(stored_keys(settings)) == sorted(f"{folder}/{kept}"
                                                       for folder in ("artifacts", "checkpoints", "logs", "cache"))
        assert client.get(f"/v1/jobs/{kept}/model.tar.gz").status_code == 200
    finally:
        store.engine.dispose()


def test_fitjobs_prune_runs_one_pass_and_says_what_it_did(home: Settings) -> None:
    store = open_store(home.database_url)
    try:
        old, new = finished(store, home), finished(store, home)
        with store.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == old).values(finished_at=utcnow() - timedelta(days=3)))
        env = {**os.environ, "FITJOBS_HOME": str(home.home), "FITJOBS_GPUS": "none"}
        refused = subprocess.run([sys.executable, "-m", "service.cli", "prune"], env=env, capture_output=True,
                                 text=True, cwd=REPO_ROOT, timeout=120)
        assert refused.returncode == 2 and "FITJOBS_RETENTION_DAYS is 0" in refused.stderr
        assert store.get_job(old).state is JobState.SUCCEEDED
        ran = subprocess.run([sys.executable, "-m", "service.cli", "prune", "--days", "2"], env=env,
                             capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert "deleted 1 job(s) and 0 upload(s) older than 2 day(s)" in ran.stdout
        assert rows_of(store, old) == (0, 0, 0) and not any(path.exists() for path in job_files(home, old))
        assert store.get_job(new).state is JobState.SUCCEEDED
    finally:
        store.engine.dispose()
