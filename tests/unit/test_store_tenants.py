"""The store's tenants: rows older than tenants, per-tenant idempotency keys, reuse and lists."""

from __future__ import annotations

from sqlalchemy import text

from service.jobs import JobState
from service.store import JobStore, open_store
from service.store.dataset_store import DatasetStore
from service.store.engine import make_engine, upgrade_schema

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


def test_jobs_and_datasets_from_before_tenants_belong_to_the_default_tenant(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade_schema(engine, "0005")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, state, spec, created_at, updated_at, attempt, cancel_requested, "
                          "progress, idempotency_key) VALUES ('job_old', 'queued', '{}', CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP, 0, false, '{}', 'key-1')"))
        conn.execute(text("INSERT INTO datasets (id, filename, format, size_bytes, sha256, rows, columns, created_at) "
                          "VALUES ('ds_old', 'a.csv', 'csv', 10, 'x', 1, '[]', CURRENT_TIMESTAMP)"))
    engine.dispose()
    store = open_store(database_url)
    try:
        assert store.get_job("job_old").tenant == "default"
        assert DatasetStore(store.engine).get("ds_old").tenant == "default"
        assert [job.id for job in store.list_jobs(tenant="default")[0]] == ["job_old"]
        assert store.list_jobs(tenant="alpha")[0] == []
        # The old key stays the default tenant's; another tenant may use it for a job of its own.
        other, created = store.create_job(SPEC, idempotency_key="key-1", tenant="alpha")
        assert created and other.id != "job_old" and other.tenant == "alpha"
    finally:
        store.engine.dispose()


def test_idempotency_keys_reuse_and_use_are_per_tenant(store: JobStore) -> None:
    alpha, created = store.create_job(SPEC, idempotency_key="nightly", tenant="alpha", fingerprint="f" * 64)
    beta, beta_created = store.create_job(SPEC, idempotency_key="nightly", tenant="beta", gpus=2)
    assert created and beta_created and alpha.id != beta.id
    again, again_created = store.create_job(SPEC, idempotency_key="nightly", tenant="alpha")
    assert not again_created and again.id == alpha.id
    assert store.active_use("alpha") == (1, 1) and store.active_use("beta") == (1, 2)
    store.claim_next_job("node", node_gpus=4, free_gpus=4)
    store.transition(alpha.id, JobState.SUCCEEDED, "done", attempt=1, result={})
    assert store.active_use("alpha") == (0, 0)
    assert store.find_reusable_job("f" * 64, "beta") is None
    found = store.find_reusable_job("f" * 64, "alpha")
    assert found is not None and found.id == alpha.id
    assert [job.id for job in store.list_jobs()[0]] == [beta.id, alpha.id], "no tenant: every tenant's jobs"
