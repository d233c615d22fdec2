"""Tenant isolation through the HTTP API, on real SQLite and PostgreSQL stores and real files.

Tenant alpha owns a queued job, a trained job with published files, metrics, events and a
trainer log, and an uploaded dataset. Tenant beta tries every /v1 endpoint on them: each
answers exactly as for an id that does not exist (404, or an empty list), and nothing of
alpha's changes, in the database or on disk.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.api import create_app
from service.config import Settings
from service.jobs import JobState, MetricPoint, Progress
from service.locations import UPLOAD_STEM, upload_dir
from service.store import JobStore
from service.store.dataset_store import DatasetStore
from service.store.tables import datasets, job_events, jobs, metrics, webhook_deliveries
from service.uploads import new_dataset_id

TOKENS = {"alpha": "alpha-token-0123456789abcdef", "beta": "beta-token-0123456789abcdef",
          "ops": "ops-token-0123456789abcdef", "viewer": "viewer-token-0123456789abcdef"}
ROLES: dict[str, list[str] | None] = {"alpha": None, "beta": None, "ops": ["admin"], "viewer": ["read"]}
SPEC: dict[str, Any] = {"model": "bert-base-uncased",
                        "data": {"train": {"records": [{"text": "good", "label": "pos"},
                                                       {"text": "bad", "label": "neg"}]}}}
TRAINED_SPEC: dict[str, Any] = {**SPEC, "hyperparameters": {"epochs": 1}}
PROBLEM = "application/problem+json"
WEBHOOK_SECRET = "whsec_" + "A" * 43 + "="


def auth(tenant: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}", **headers}


def tenants_yaml() -> str:
    lines = []
    for name, token in TOKENS.items():
        lines.append(f"{name}:\n  tokens: [{hashlib.sha256(token.encode()).hexdigest()}]")
        if ROLES[name]:
            lines.append(f"  roles: {json.dumps(ROLES[name])}")
    return "\n".join(lines) + "\n"


@dataclass
class World:
    """A service with four tenants, and alpha's objects."""

    app: Flask
    client: FlaskClient
    settings: Settings
    store: JobStore
    queued: str
    trained: str
    dataset: str
    prediction: str


def build_world(tmp_path: Path, database_url: str) -> World:
    (tmp_path / "tenants.yaml").write_text(tenants_yaml())
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none",
                                  "FITJOBS_DATABASE_URL": database_url,
                                  "FITJOBS_TENANTS_FILE": str(tmp_path / "tenants.yaml"),
                                  "FITJOBS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                                  "FITJOBS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"})
    app = create_app(settings, test_config={"TESTING": True})
    client = app.test_client()
    store: JobStore = app.extensions["fitjobs.store"]
    # Stands in for the supervisor and trainer (tested in tests/integration): claim, record, publish.
    trained = client.post("/v1/jobs", json={**TRAINED_SPEC, "webhook": {"url": "http://127.0.0.1:9/hook"}},
                          headers=auth("alpha")).get_json()["id"]
    assert store.claim_next_job("node") is not None
    store.record_progress(trained, 1, Progress(epoch=1, epochs=1), [MetricPoint("loss", 0.4, 1)])
    store.append_event(trained, "milestone", "Model loaded.", attempt=1)
    log = settings.attempt_dir(trained, 1) / "trainer.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1/1\n")
    published = settings.artifacts_dir / trained
    (published / "model").mkdir(parents=True)
    (published / "model" / "config.json").write_text('{"model_type": "bert"}')
    (published / "metrics.json").write_text("{}")
    (published / "evaluation.json").write_text(json.dumps({"accuracy": 1.0}))
    (published / "saved_model" / "1").mkdir(parents=True)
    (published / "saved_model" / "1" / "saved_model.pb").write_bytes(b"graph")
    (published / "saved_model_ids" / "1").mkdir(parents=True)
    (published / "saved_model_ids" / "1" / "saved_model.pb").write_bytes(b"graph without text ops")
    store.transition(trained, JobState.SUCCEEDED, "Training finished.", attempt=1, result={"loss": 0.4})
    queued = client.post("/v1/jobs", json=SPEC, headers=auth("alpha", **{"Idempotency-Key": "nightly"})
                         ).get_json()["id"]
    dataset = new_dataset_id()
    folder = upload_dir(settings.uploads_dir, dataset)
    folder.mkdir(parents=True)
    (folder / f"{UPLOAD_STEM}.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    DatasetStore(store.engine).add(dataset_id=dataset, filename="train.csv", format="csv", size_bytes=27,
                                   sha256="0" * 64, rows=2, columns=["text", "label"], tenant="alpha")
    prediction = client.post("/v1/predictions", json={"job": trained, "data": {"upload": dataset}},
                             headers=auth("alpha")).get_json()["id"]
    return World(app, client, settings, store, queued, trained, dataset, prediction)


@pytest.fixture
def world(tmp_path: Path, database_url: str) -> Iterator[World]:
    built = build_world(tmp_path, database_url)
    yield built
    built.store.engine.dispose()


def snapshot(w: World) -> dict[str, Any]:
    """Every row of alpha's jobs, their events and metrics, alpha's datasets, and every file of the node."""
    with w.store.engine.connect() as conn:
        own = [row._asdict() for row in conn.execute(select(jobs).where(jobs.c.tenant == "alpha")
                                                     .order_by(jobs.c.seq))]
        ids = [row["id"] for row in own]
        events = [row._asdict() for row in conn.execute(select(job_events).where(job_events.c.job_id.in_(ids))
                                                        .order_by(job_events.c.id))]
        points = [row._asdict() for row in conn.execute(select(metrics).where(metrics.c.job_id.in_(ids)))]
        uploads = [row._asdict() for row in conn.execute(select(datasets).where(datasets.c.tenant == "alpha"))]
        hooks = [row._asdict() for row in conn.execute(select(webhook_deliveries)
                                                       .where(webhook_deliveries.c.job_id.in_(ids)))]
    files = {str(path.relative_to(w.settings.home)): hashlib.sha256(path.read_bytes()).hexdigest()
             for path in sorted(w.settings.home.rglob("*"))
             if path.is_file() and not path.name.startswith("fitjobs.db")}
    assert hooks, "alpha's trained job has webhook deliveries"
    return {"jobs": own, "events": events, "metrics": points, "datasets": uploads, "webhooks": hooks, "files": files}


def missing_job() -> str:
    return f"job_{uuid.uuid4().hex}"


def object_requests(w: World) -> list[tuple[str, str, dict[str, str], str]]:
    """(method, path, headers, the id in it) of every request on one of alpha's objects."""
    t, q, d, p = w.trained, w.queued, w.dataset, w.prediction
    sse = {"Accept": "text/event-stream"}
    return [
        ("GET", f"/v1/predictions/{p}", {}, p),
        ("POST", f"/v1/predictions/{p}/cancel", {}, p),
        ("GET", f"/v1/jobs/{p}/events", {}, p),
        ("GET", f"/v1/jobs/{t}", {}, t),
        ("GET", f"/v1/jobs/{q}", {}, q),
        ("POST", f"/v1/jobs/{q}/cancel", {}, q),
        ("POST", f"/v1/jobs/{t}/cancel", {}, t),
        ("GET", f"/v1/jobs/{t}/metrics", {}, t),
        ("GET", f"/v1/jobs/{t}/events", {}, t),
        ("GET", f"/v1/jobs/{t}/events?after=1", sse, t),
        ("GET", f"/v1/jobs/{q}/events", {**sse, "Last-Event-ID": "0"}, q),
        ("GET", f"/v1/jobs/{t}/logs", {}, t),
        ("GET", f"/v1/jobs/{t}/artifacts", {}, t),
        ("GET", f"/v1/jobs/{t}/artifacts/metrics.json", {}, t),
        ("GET", f"/v1/jobs/{t}/artifacts/model/config.json", {}, t),
        ("GET", f"/v1/jobs/{t}/model.tar.gz", {}, t),
        ("GET", f"/v1/jobs/{t}/saved_model.tar.gz", {}, t),
        ("GET", f"/v1/jobs/{t}/saved_model_ids.tar.gz", {}, t),
        ("GET", f"/v1/jobs/{t}/evaluation", {}, t),
        ("GET", f"/v1/jobs/{t}/webhook-deliveries", {}, t),
        ("GET", f"/v1/datasets/{d}", {}, d),
        ("DELETE", f"/v1/datasets/{d}", {}, d),
        ("DELETE", f"/v1/jobs/{t}", {}, t),
        ("DELETE", f"/v1/jobs/{q}", {}, q),
    ]


# The /v1 routes these tests cover; a new route fails test_every_v1_route_is_covered until added.
COVERED_ROUTES = {
    "/v1/jobs", "/v1/jobs:validate", "/v1/jobs/<job_id>", "/v1/jobs/<job_id>/cancel", "/v1/jobs/<job_id>/metrics",
    "/v1/jobs/<job_id>/events", "/v1/jobs/<job_id>/logs", "/v1/jobs/<job_id>/artifacts",
    "/v1/jobs/<job_id>/artifacts/<path:name>", "/v1/jobs/<job_id>/model.tar.gz", "/v1/jobs/<job_id>/evaluation",
    "/v1/jobs/<job_id>/webhook-deliveries", "/v1/jobs/<job_id>/predictions",
    "/v1/predictions", "/v1/predictions/<job_id>", "/v1/predictions/<job_id>/cancel",
    "/v1/jobs/<job_id>/saved_model.tar.gz", "/v1/jobs/<job_id>/saved_model_ids.tar.gz",
    "/v1/datasets", "/v1/datasets/<dataset_id>", "/v1/tenant",
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_v1_route_is_covered(world: World) -> None:
    routes = {rule.rule for rule in world.app.url_map.iter_rules() if rule.rule.startswith("/v1")}
    assert routes == COVERED_ROUTES


def test_another_tenants_objects_answer_exactly_as_missing_ones_and_stay_unchanged(world: World) -> None:
    w = world
    for method, path, headers, _ in object_requests(w):
        if method == "GET" and "event-stream" not in headers.get("Accept", ""):
            for owner in ("alpha", "ops"):
                seen = w.client.open(path, method=method, headers=auth(owner, **headers))
                assert seen.status_code == 200, (owner, path, seen.get_data(as_text=True))
    for built in w.settings.cache_dir.iterdir():
        built.unlink()  # the owner's download cached a tarball; beta's must not make one
    before = snapshot(w)
    for method, path, headers, object_id in object_requests(w):
        missing = (missing_job() if object_id.startswith("job_") else new_dataset_id())
        answer = w.client.open(path, method=method, headers=auth("beta", **headers))
        control = w.client.open(path.replace(object_id, missing), method=method, headers=auth("beta", **headers))
        assert answer.status_code == 404, (method, path, answer.get_data(as_text=True))
        assert answer.mimetype == PROBLEM == control.mimetype
        assert control.status_code == 404
        # Identical but for the id asked for and each answer's own request id.
        body = {**json.loads(answer.get_data(as_text=True).replace(object_id, "ID")), "request_id": None}
        expected = {**json.loads(control.get_data(as_text=True).replace(missing, "ID")), "request_id": None}
        assert body == expected, (method, path)
    assert snapshot(w) == before
    assert w.store.get_job(w.queued).state is JobState.QUEUED and not w.store.get_job(w.queued).cancel_requested
    assert not any(w.settings.cache_dir.iterdir()), "no model tarball was built for beta"


def test_lists_leave_out_other_tenants_and_an_admin_sees_all(world: World) -> None:
    w = world
    before = snapshot(w)
    for path in ("/v1/jobs", "/v1/jobs?state=queued", "/v1/jobs?state=succeeded", "/v1/jobs?limit=1"):
        listed = w.client.get(path, headers=auth("beta"))
        assert listed.status_code == 200 and listed.get_json() == {"jobs": [], "next": None}, path
    assert w.client.get("/v1/datasets", headers=auth("beta")).get_json() == {"datasets": [], "next": None}
    assert w.client.get("/v1/predictions", headers=auth("beta")).get_json() == {"predictions": [], "next": None}
    assert [p["id"] for p in w.client.get("/v1/predictions", headers=auth("alpha")).get_json()["predictions"]] == \
        [w.prediction]
    assert [p["id"] for p in w.client.get("/v1/predictions", headers=auth("ops")).get_json()["predictions"]] == \
        [w.prediction]
    own = w.client.post("/v1/jobs", json=SPEC, headers=auth("beta")).get_json()
    assert own["tenant"] == "beta"
    assert [job["id"] for job in w.client.get("/v1/jobs", headers=auth("beta")).get_json()["jobs"]] == [own["id"]]
    alpha_ids = [job["id"] for job in w.client.get("/v1/jobs", headers=auth("alpha")).get_json()["jobs"]]
    assert alpha_ids == [w.queued, w.trained]
    everyone = w.client.get("/v1/jobs", headers=auth("ops")).get_json()["jobs"]
    assert [(job["id"], job["tenant"]) for job in everyone] == [
        (own["id"], "beta"), (w.queued, "alpha"), (w.trained, "alpha")]
    assert [d["id"] for d in w.client.get("/v1/datasets", headers=auth("ops")).get_json()["datasets"]] == [w.dataset]
    assert snapshot(w) == before


def test_a_spec_names_only_its_own_tenants_uploads_and_jobs(world: World) -> None:
    w = world
    before = snapshot(w)
    missing, missing_ds = missing_job(), new_dataset_id()
    cases = [({**SPEC, "model": {"job": w.trained}}, {**SPEC, "model": {"job": missing}}, w.trained, missing),
             ({**SPEC, "data": {"train": {"upload": w.dataset}}}, {**SPEC, "data": {"train": {"upload": missing_ds}}},
              w.dataset, missing_ds)]
    cases.append(({"job": w.trained, "data": {"records": [{"text": "fine"}]}},
                  {"job": missing, "data": {"records": [{"text": "fine"}]}}, w.trained, missing))
    cases.append(({"job": w.trained, "data": {"upload": w.dataset}},
                  {"job": w.trained, "data": {"upload": missing_ds}}, w.dataset, missing_ds))
    for tenant in ("beta", "ops"):  # an admin reads every tenant's objects, but builds only on its own
        for path in ("/v1/jobs", "/v1/jobs:validate", "/v1/predictions"):
            for spec, control_spec, object_id, missing_id in cases:
                if ("job" in spec) != (path == "/v1/predictions"):
                    continue  # a prediction spec names its job at the top; a training spec, its model
                answer = w.client.post(path, json=spec, headers=auth(tenant))
                control = w.client.post(path, json=control_spec, headers=auth(tenant))
                assert answer.status_code == 422 == control.status_code, (tenant, path, answer.get_json())
                assert json.dumps({**answer.get_json(), "request_id": None}).replace(object_id, "ID") == \
                    json.dumps({**control.get_json(), "request_id": None}).replace(missing_id, "ID")
    assert snapshot(w) == before
    continued = w.client.post("/v1/jobs", json={**SPEC, "model": {"job": w.trained}}, headers=auth("alpha"))
    assert continued.status_code == 201, "the owner can continue from its own job"


def test_reuse_and_idempotency_keys_stay_within_the_tenant(world: World) -> None:
    w = world
    assert w.store.get_job(w.trained).fingerprint is not None
    before = snapshot(w)
    theirs = w.client.post("/v1/jobs", json={**TRAINED_SPEC, "reuse": True}, headers=auth("beta"))
    assert theirs.status_code == 201
    assert theirs.get_json()["state"] == "queued" and theirs.get_json()["reused_from"] is None
    keyed = w.client.post("/v1/jobs", json=SPEC, headers=auth("beta", **{"Idempotency-Key": "nightly"}))
    assert keyed.status_code == 201 and keyed.get_json()["id"] != w.queued
    again = w.client.post("/v1/jobs", json=SPEC, headers=auth("beta", **{"Idempotency-Key": "nightly"}))
    assert again.status_code == 200 and again.get_json()["id"] == keyed.get_json()["id"]
    assert snapshot(w) == before
    # The same requests by alpha find alpha's jobs.
    reused = w.client.post("/v1/jobs", json={**TRAINED_SPEC, "reuse": True}, headers=auth("alpha")).get_json()
    assert reused["state"] == "succeeded" and reused["reused_from"] == w.trained
    replay = w.client.post("/v1/jobs", json=SPEC, headers=auth("alpha", **{"Idempotency-Key": "nightly"}))
    assert replay.status_code == 200 and replay.get_json()["id"] == w.queued


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_roles_limit_what_a_tenant_may_do_with_403_naming_the_role(world: World) -> None:
    w = world
    before = snapshot(w)
    for method, path, body in (("POST", "/v1/jobs", SPEC), ("POST", "/v1/jobs:validate", SPEC),
                               ("POST", "/v1/predictions", {"job": w.trained, "data": {"upload": w.dataset}}),
                               ("POST", f"/v1/predictions/{w.prediction}/cancel", None),
                               ("POST", f"/v1/jobs/{w.queued}/cancel", None),
                               ("POST", "/v1/datasets?filename=a.csv", None),
                               ("DELETE", f"/v1/datasets/{w.dataset}", None),
                               ("DELETE", f"/v1/jobs/{w.trained}", None)):
        refused = w.client.open(path, method=method, json=body, headers=auth("viewer"))
        assert refused.status_code == 403 and refused.mimetype == PROBLEM, path
        assert refused.get_json()["role"] == "submit" and "'submit'" in refused.get_json()["detail"]
    assert w.client.get("/v1/jobs", headers=auth("viewer")).get_json()["jobs"] == []
    assert w.client.get(f"/v1/jobs/{w.queued}", headers=auth("viewer")).status_code == 404
    assert w.client.get("/v1/tenant", headers=auth("viewer")).get_json()["roles"] == ["read"]
    # An admin may also act on every tenant's objects.
    cancelled = w.client.post(f"/v1/jobs/{w.queued}/cancel", headers=auth("ops"))
    assert cancelled.status_code == 200 and cancelled.get_json()["state"] == "cancelled"
    assert snapshot(w)["datasets"] == before["datasets"]


def test_predictions_see_only_the_callers_jobs_and_need_only_the_read_role(world: World) -> None:
    w = world
    before = snapshot(w)
    body = {"texts": ["good"]}
    for tenant in ("beta", "viewer"):  # viewer holds only the read role: refused as missing, not as forbidden
        for job_id in (w.trained, w.queued):
            missing = missing_job()
            answer = w.client.post(f"/v1/jobs/{job_id}/predictions", json=body, headers=auth(tenant))
            control = w.client.post(f"/v1/jobs/{missing}/predictions", json=body, headers=auth(tenant))
            assert answer.status_code == 404 == control.status_code, (tenant, answer.get_json())
            assert answer.mimetype == PROBLEM
            assert {**json.loads(answer.get_data(as_text=True).replace(job_id, "ID")), "request_id": None} == \
                {**json.loads(control.get_data(as_text=True).replace(missing, "ID")), "request_id": None}
    for tenant in ("alpha", "ops"):  # the owner, and an admin, find the job: it has not succeeded
        answer = w.client.post(f"/v1/jobs/{w.queued}/predictions", json=body, headers=auth(tenant))
        assert answer.status_code == 409 and answer.get_json()["state"] == "queued", answer.get_json()
    assert snapshot(w) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_without_a_known_token_nothing_is_answered_but_401(world: World) -> None:
    w = world
    for headers in ({}, {"Authorization": "Bearer " + "x" * 30}, {"Authorization": f"Bearer {TOKENS['alpha']}x"},
                    {"Authorization": hashlib.sha256(TOKENS["alpha"].encode()).hexdigest()}):
        for path in (f"/v1/jobs/{w.trained}", "/v1/jobs", "/v1/tenant", f"/v1/jobs/{missing_job()}"):
            answer = w.client.get(path, headers=headers)
            assert answer.status_code == 401 and answer.mimetype == PROBLEM, (headers, path)
            assert w.trained not in answer.get_data(as_text=True)
    assert re.match(r"Bearer", w.client.get("/v1/jobs").headers["WWW-Authenticate"])
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml"):
        assert w.client.get(path).status_code == 200, path


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_owner_deletes_its_dataset_and_cancels_its_job(world: World) -> None:
    w = world
    in_use = w.client.delete(f"/v1/datasets/{w.dataset}", headers=auth("alpha"))
    assert in_use.status_code == 409 and w.prediction in in_use.get_json()["detail"], "the queued prediction reads it"
    assert w.client.post(f"/v1/predictions/{w.prediction}/cancel", headers=auth("alpha")).status_code == 200
    assert w.client.delete(f"/v1/datasets/{w.dataset}", headers=auth("alpha")).status_code == 204
    assert not upload_dir(w.settings.uploads_dir, w.dataset).exists()
    cancelled = w.client.post(f"/v1/jobs/{w.queued}/cancel", headers=auth("alpha")).get_json()
    assert cancelled["state"] == "cancelled" and cancelled["tenant"] == "alpha"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_owner_deletes_its_finished_job_and_not_a_queued_one(world: World) -> None:
    w = world
    busy = w.client.delete(f"/v1/jobs/{w.queued}", headers=auth("alpha"))
    assert busy.status_code == 409 and busy.mimetype == PROBLEM and busy.get_json()["state"] == "queued"
    needed = w.client.delete(f"/v1/jobs/{w.trained}", headers=auth("alpha"))
    assert needed.status_code == 409 and needed.get_json()["jobs"] == [w.prediction], "its model predicts"
    assert w.client.post(f"/v1/predictions/{w.prediction}/cancel", headers=auth("alpha")).status_code == 200
    assert w.client.delete(f"/v1/jobs/{w.trained}", headers=auth("alpha")).status_code == 204
    assert w.client.get(f"/v1/jobs/{w.trained}", headers=auth("alpha")).status_code == 404
    assert not (w.settings.artifacts_dir / w.trained).exists() and not (w.settings.jobs_dir / w.trained).exists()
    assert w.client.delete(f"/v1/jobs/{w.trained}", headers=auth("alpha")).status_code == 404
    assert w.store.get_job(w.queued).state is JobState.QUEUED
