"""The webhook field of a spec through the API: refused destinations are 422 naming webhook.url; deliveries listed."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.jobs import JobState
from service.store import JobStore

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
PROBLEM = "application/problem+json"


def make_app(tmp_path: Path, **env: str) -> Flask:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none", **env})
    return create_app(settings, test_config={"TESTING": True})


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[FlaskClient]:
    app = make_app(tmp_path, FITJOBS_WEBHOOK_SECRET=SECRET)
    yield app.test_client()
    app.extensions["fitjobs.store"].engine.dispose()


def refusal(client: FlaskClient, url: str, path: str = "/v1/jobs") -> list[str]:
    answer = client.post(path, json={**SPEC, "webhook": {"url": url}})
    assert answer.status_code == 422 and answer.mimetype == PROBLEM, answer.get_data(as_text=True)
    errors = answer.get_json()["errors"]
    assert list(errors) == ["webhook.url"], errors
    return errors["webhook.url"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data/",
                                 "http://[::1]/", "http://10.0.0.8/", "http://localhost:9/hook",
                                 "http://[::ffff:169.254.169.254]/"])
def test_a_webhook_to_a_non_public_address_is_refused_naming_webhook_url(hooked: FlaskClient, url: str) -> None:
    assert "non-public" in refusal(hooked, url)[0]
    assert "non-public" in refusal(hooked, url, "/v1/jobs:validate")[0]
    assert hooked.get("/v1/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize("url,reason", [("ftp://example.com/", "http"), ("https://u:p@example.com/", "credentials"),
                                        ("https://example.com/" + "a" * 2048, "Length"),
                                        ("https://no-such-host.invalid/", "does not resolve")])
def test_a_webhook_url_of_another_form_is_refused(hooked: FlaskClient, url: str, reason: str) -> None:
    assert reason in " ".join(refusal(hooked, url))


def test_unknown_webhook_fields_are_refused(hooked: FlaskClient) -> None:
    answer = hooked.post("/v1/jobs", json={**SPEC, "webhook": {"url": "https://93.184.215.14/", "secret": "x"}})
    assert answer.status_code == 422 and "webhook.secret" in answer.get_json()["errors"]
    missing = hooked.post("/v1/jobs", json={**SPEC, "webhook": {}})
    assert missing.status_code == 422 and "webhook.url" in missing.get_json()["errors"]


def test_without_a_secret_a_webhook_is_refused(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    answer = client.post("/v1/jobs", json={**SPEC, "webhook": {"url": "https://93.184.215.14/hook"}})
    assert answer.status_code == 422 and answer.mimetype == PROBLEM
    assert "FITJOBS_WEBHOOK_SECRET" in answer.get_json()["errors"]["webhook"][0]
    assert client.post("/v1/jobs", json={**SPEC, "webhook": None}).status_code == 201


def test_allowed_networks_and_hosts_decide_what_is_accepted(tmp_path: Path) -> None:
    client = make_app(tmp_path, FITJOBS_WEBHOOK_SECRET=SECRET, FITJOBS_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32",
                      FITJOBS_WEBHOOK_ALLOWED_HOSTS="127.0.0.1,169.254.*").test_client()
    accepted = client.post("/v1/jobs", json={**SPEC, "webhook": {"url": "http://127.0.0.1:8080/hook"}})
    assert accepted.status_code == 201, accepted.get_data(as_text=True)
    assert accepted.get_json()["spec"]["webhook"] == {"url": "http://127.0.0.1:8080/hook"}
    assert "FITJOBS_WEBHOOK_ALLOWED_HOSTS" in refusal(client, "https://93.184.215.14/")[0]
    assert "non-public" in refusal(client, "http://169.254.169.254/")[0]


def test_deliveries_are_listed_with_their_state_and_attempts(tmp_path: Path) -> None:
    app = make_app(tmp_path, FITJOBS_WEBHOOK_SECRET=SECRET, FITJOBS_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32")
    client = app.test_client()
    store: JobStore = app.extensions["fitjobs.store"]
    job = client.post("/v1/jobs", json={**SPEC, "webhook": {"url": "http://127.0.0.1:9/hook"}}).get_json()
    store.claim_next_job("node")
    store.transition(job["id"], JobState.FAILED, "It failed.", attempt=1)
    listed = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries")
    assert listed.status_code == 200
    deliveries = listed.get_json()["deliveries"]
    assert [d["event_type"] for d in deliveries] == ["job.queued", "job.running", "job.failed"]
    assert all(d["state"] == "pending" and d["attempts"] == 0 and d["next_attempt_at"] for d in deliveries)
    assert set(deliveries[0]) == {"id", "event_type", "state", "attempts", "created_at", "last_attempt_at",
                                  "next_attempt_at", "delivered_at", "last_status_code", "last_error"}
    plain = client.post("/v1/jobs", json=SPEC).get_json()
    assert client.get(f"/v1/jobs/{plain['id']}/webhook-deliveries").get_json() == {"deliveries": []}
    assert client.get("/v1/jobs/job_" + "0" * 32 + "/webhook-deliveries").status_code == 404
