"""Per-tenant quotas and rate limits: 429 problem+json naming the quota, with Retry-After.

Through the HTTP API on real SQLite and PostgreSQL stores; the shared request counters and
the quota lock are also tried with concurrent writers and two apps on one database.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.store import JobStore, open_store
from service.store.dataset_store import DatasetStore
from service.store.rate_limits import DATABASE_STORAGE_SCHEME, DatabaseRateLimitStorage
from service.tenants import QuotaReached, Quotas
from service.uploads import new_dataset_id

TOKENS = {"alpha": "alpha-token-0123456789abcdef", "beta": "beta-token-0123456789abcdef"}
SPEC: dict[str, Any] = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
PROBLEM = "application/problem+json"


def auth(tenant: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}", **headers}


def make_app(home: Path, alpha_quotas: str, database_url: str = "", **env: str) -> Flask:
    """An app whose tenant alpha has ``alpha_quotas`` (YAML flow mapping) and beta the defaults."""
    tenants = home.parent / f"{home.name}-tenants.yaml"
    sha = {name: hashlib.sha256(token.encode()).hexdigest() for name, token in TOKENS.items()}
    tenants.write_text(f"alpha: {{tokens: [{sha['alpha']}], quotas: {alpha_quotas}}}\n"
                       f"beta: {{tokens: [{sha['beta']}]}}\n")
    settings = Settings.from_env({"FITJOBS_HOME": str(home), "FITJOBS_GPUS": "none",
                                  "FITJOBS_TENANTS_FILE": str(tenants), "FITJOBS_DATABASE_URL": database_url, **env})
    return create_app(settings, test_config={"TESTING": True})


@pytest.fixture
def apps(tmp_path: Path) -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        runner = app.extensions.get("fitjobs.check_runner")
        if runner is not None:
            runner.close()
        app.extensions["fitjobs.store"].engine.dispose()


def assert_quota_problem(response: Any, quota: str, limit: int, used: int | None, retry_after: int | None) -> None:
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    problem = response.get_json()
    assert problem["status"] == 429 and problem["type"].endswith("/quota-exceeded")
    assert problem["quota"] == quota and problem["limit"] == limit and quota in problem["detail"]
    if used is not None:
        assert problem["used"] == used
    seconds = int(response.headers["Retry-After"])
    if retry_after is not None:
        assert seconds == retry_after
    assert seconds >= 1


def quota_use(client: FlaskClient, tenant: str) -> dict[str, Any]:
    answer = client.get("/v1/tenant", headers=auth(tenant))
    assert answer.status_code == 200
    return answer.get_json()["quotas"]


def test_queued_and_running_jobs_stop_at_the_active_jobs_quota(apps: list[Flask], tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", "{active_jobs: 2}")
    apps.append(app)
    client, store = app.test_client(), app.extensions["fitjobs.store"]
    first = client.post("/v1/jobs", json=SPEC, headers=auth("alpha", **{"Idempotency-Key": "one"})).get_json()["id"]
    second = client.post("/v1/jobs", json=SPEC, headers=auth("alpha"))
    assert second.status_code == 201
    assert store.claim_next_job("node").id == first  # running jobs count as well as queued ones
    assert_quota_problem(client.post("/v1/jobs", json=SPEC, headers=auth("alpha")), "active_jobs", 2, 2, 30)
    assert quota_use(client, "alpha")["active_jobs"] == {"limit": 2, "used": 2}
    replay = client.post("/v1/jobs", json=SPEC, headers=auth("alpha", **{"Idempotency-Key": "one"}))
    assert replay.status_code == 200 and replay.get_json()["id"] == first, "a replay is not a new job"
    assert client.post("/v1/jobs", json=SPEC, headers=auth("beta")).status_code == 201, "beta has no quota"
    assert len(store.list_jobs(tenant="alpha")[0]) == 2
    client.post(f"/v1/jobs/{first}/cancel", headers=auth("alpha"))
    # A running job asked to stop still holds its place until it ends.
    assert_quota_problem(client.post("/v1/jobs", json=SPEC, headers=auth("alpha")), "active_jobs", 2, 2, 30)
    client.post(f"/v1/jobs/{second.get_json()['id']}/cancel", headers=auth("alpha"))
    assert client.post("/v1/jobs", json=SPEC, headers=auth("alpha")).status_code == 201


def test_gpus_requested_by_active_jobs_stop_at_the_gpus_quota(apps: list[Flask], tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", "{gpus: 3}")
    apps.append(app)
    client, store = app.test_client(), app.extensions["fitjobs.store"]
    store.register_worker("gpu-node", "gpu-node", gpus=4, slots=4)

    def submit(gpus: int | None) -> Any:
        return client.post("/v1/jobs", json={**SPEC, "resources": {"gpus": gpus}}, headers=auth("alpha"))

    assert submit(2).status_code == 201
    assert_quota_problem(submit(2), "gpus", 3, 2, 30)
    assert submit(None).status_code == 201, "a job without a request counts as one GPU"
    assert_quota_problem(submit(1), "gpus", 3, 3, 30)
    assert submit(0).status_code == 201, "a job that asks for no GPU fits"
    assert quota_use(client, "alpha")["gpus"] == {"limit": 3, "used": 3}


def test_uploads_stop_at_the_upload_bytes_quota_and_leave_no_file(apps: list[Flask], tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", "{upload_bytes: 100}")
    apps.append(app)
    client = app.test_client()
    settings: Settings = app.extensions["fitjobs.settings"]
    csv = b"text,label\ngood film,pos\nbad film,neg\n"
    used = 2 * len(csv)  # two fit in 100 bytes, a third does not
    assert used <= 100 < used + len(csv)
    for _ in range(2):
        stored = client.post("/v1/datasets?filename=a.csv", data=csv, content_type="text/csv", headers=auth("alpha"))
        assert stored.status_code == 201, stored.get_json()
    assert quota_use(client, "alpha")["upload_bytes"] == {"limit": 100, "used": used}
    kept = sorted(path.name for path in settings.uploads_dir.iterdir())
    raw = client.post("/v1/datasets?filename=b.csv", data=csv, content_type="text/csv", headers=auth("alpha"))
    assert_quota_problem(raw, "upload_bytes", 100, used, 300)
    # A multipart upload's size is known once it is stored: refused then, and removed.
    form = client.post("/v1/datasets", data={"file": (io.BytesIO(csv), "c.csv")},
                       content_type="multipart/form-data", headers=auth("alpha"))
    assert_quota_problem(form, "upload_bytes", 100, used, 300)
    assert sorted(path.name for path in settings.uploads_dir.iterdir()) == kept
    other = client.post("/v1/datasets?filename=a.csv", data=csv, content_type="text/csv", headers=auth("beta"))
    assert other.status_code == 201, "beta's uploads do not count against alpha's quota"


def test_requests_per_minute_stop_at_the_rate_limit_but_probes_never_do(apps: list[Flask], tmp_path: Path) -> None:
    # Beta has the default limit, 6.
    app = make_app(tmp_path / "home", "{requests_per_minute: 3}", FITJOBS_TENANT_REQUESTS_PER_MINUTE="6")
    apps.append(app)
    client = app.test_client()
    assert quota_use(client, "alpha")["requests_per_minute"] == {"limit": 3, "used": 1}
    assert client.get("/v1/jobs", headers=auth("alpha")).status_code == 200
    assert client.post("/v1/jobs", json=SPEC, headers=auth("alpha")).status_code == 201
    for path in ("/v1/jobs", "/v1/tenant", "/v1/datasets"):
        assert_quota_problem(client.get(path, headers=auth("alpha")), "requests_per_minute", 3, None, None)
    assert int(client.get("/v1/jobs", headers=auth("alpha")).headers["Retry-After"]) <= 60
    for _ in range(5):
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/jobs", headers=auth("beta")).status_code == 200, "beta counts on its own"
    assert quota_use(client, "beta")["requests_per_minute"] == {"limit": 6, "used": 6}
    assert_quota_problem(client.get("/v1/jobs", headers=auth("beta")), "requests_per_minute", 6, None, None)


def test_request_counters_in_the_database_are_shared_by_every_replica(
        apps: list[Flask], tmp_path: Path, database_url: str) -> None:
    # On PostgreSQL the database is the default; on SQLite it is asked for.
    env = {} if database_url.startswith("postgresql") else {"FITJOBS_RATE_LIMIT_STORAGE": "database"}
    replicas = [make_app(tmp_path / f"home-{n}", "{requests_per_minute: 3}", database_url, **env) for n in range(2)]
    apps.extend(replicas)
    clients = [replica.test_client() for replica in replicas]
    for n in range(3):
        assert clients[n % 2].get("/v1/jobs", headers=auth("alpha")).status_code == 200
    assert_quota_problem(clients[1].get("/v1/jobs", headers=auth("alpha")), "requests_per_minute", 3, None, None)
    assert_quota_problem(clients[0].get("/v1/jobs", headers=auth("alpha")), "requests_per_minute", 3, None, None)
    assert clients[1].get("/v1/jobs", headers=auth("beta")).status_code == 200


def test_the_database_counter_starts_again_when_its_window_ends(store: JobStore) -> None:
    counters = DatabaseRateLimitStorage(f"{DATABASE_STORAGE_SCHEME}://", engine=store.engine)
    assert counters.check() and counters.get("k") == 0
    assert [counters.incr("k", 1) for _ in range(3)] == [1, 2, 3]
    assert counters.incr("other", 60, amount=5) == 5
    assert counters.get("k") == 3 and time.time() < counters.get_expiry("k") <= time.time() + 1
    time.sleep(1.05)
    assert counters.get("k") == 0, "the window ended"
    assert counters.incr("k", 1) == 1
    counters.clear("other")
    assert counters.get("other") == 0
    assert counters.reset() == 1 and counters.get("k") == 0


def test_concurrent_submits_never_overshoot_the_quota(store: JobStore, database_url: str) -> None:
    quotas = Quotas(active_jobs=3)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def submit(n: int) -> None:
        other = open_store(database_url, migrate=False)
        other.ping()  # connected before the start, so that the submits overlap
        start.wait()
        try:
            job, _ = other.create_job({**SPEC, "n": n}, tenant="alpha", quotas=quotas)
            outcome = job.id
        except QuotaReached as exc:
            outcome = f"refused:{exc.quota}"
        finally:
            other.engine.dispose()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o for o in outcomes if o.startswith("refused")) == ["refused:active_jobs"] * 5
    assert len(store.list_jobs(tenant="alpha", limit=50)[0]) == 3
    assert store.active_use("alpha") == (3, 3)


def test_concurrent_uploads_never_overshoot_the_upload_quota(store: JobStore) -> None:
    datasets = DatasetStore(store.engine)
    refused: list[int] = []
    start = threading.Barrier(5)

    def add() -> None:
        start.wait()
        try:
            datasets.add(dataset_id=new_dataset_id(), filename="a.csv", format="csv", size_bytes=40, sha256="0" * 64,
                         rows=1, columns=["text"], tenant="alpha", max_tenant_bytes=100)
        except QuotaReached as exc:
            refused.append(exc.used)

    threads = [threading.Thread(target=add) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == [80, 80, 80] and datasets.stored_bytes("alpha") == 80
    assert datasets.stored_bytes("beta") == 0


def test_a_tenant_without_a_rate_limit_is_never_counted(apps: list[Flask], tmp_path: Path) -> None:
    app = make_app(tmp_path / "home", "{requests_per_minute: 1}")
    apps.append(app)
    client = app.test_client()
    for _ in range(20):
        assert client.get("/v1/jobs", headers=auth("beta")).status_code == 200
    assert quota_use(client, "beta")["requests_per_minute"] == {"limit": 0, "used": None}


def test_anonymous_callers_have_the_default_quotas(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_TENANT_MAX_ACTIVE_JOBS": "1"}))
    client = app.test_client()
    assert client.post("/v1/jobs", json=SPEC).status_code == 201
    assert_quota_problem(client.post("/v1/jobs", json=SPEC), "active_jobs", 1, 1, 30)
    tenant = client.get("/v1/tenant").get_json()
    assert tenant["name"] == "default" and tenant["roles"] == ["read", "submit"]
    assert tenant["quotas"]["active_jobs"] == {"limit": 1, "used": 1}
    app.extensions["fitjobs.store"].engine.dispose()
