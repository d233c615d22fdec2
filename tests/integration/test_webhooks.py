"""Webhooks to real HTTP receivers on 127.0.0.1 (allowed by FITJOBS_WEBHOOK_ALLOWED_NETWORKS here).

Signed deliveries verified with the `standardwebhooks` package; a redirect that is not followed;
https to the checked address with the host name in SNI; and, end to end through `fitjobs serve`
training a tiny BERT, a receiver that is down while the job runs and the service restarts,
and gets every event once it is back.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.config import Settings
from service.store import JobStore, open_store
from service.store.webhook_store import DeliveryState, WebhookStore
from service.supervisor.webhooks import WebhookSender
from service.webhooks.delivery import post_signed
from service.webhooks.destinations import DestinationPolicy, parse_networks
from service.webhooks.signing import parse_secret, signed_headers
from tests.support.quick_supervisor import QuickCluster
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import free_port, start_service
from tests.support.webhook_receiver import webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"fitjobs webhook test key 32 byte").decode()
SPEC: dict[str, Any] = {"model": "m", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
LOOPBACK_ALLOWED = {"FITJOBS_WEBHOOK_SECRET": SECRET, "FITJOBS_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    job_store = open_store(f"sqlite:///{tmp_path / 'fitjobs.db'}")
    yield job_store
    job_store.engine.dispose()


def sender_for(store: JobStore, tmp_path: Path, **env: str) -> WebhookSender:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), **LOOPBACK_ALLOWED, **env})
    return WebhookSender(settings, WebhookStore(store.engine), interval=0.1)


def test_a_delivery_arrives_signed_and_a_tampered_body_fails_verification(store: JobStore, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        job = store.create_job({**SPEC, "webhook": {"url": receiver.url + "?team=search"}})[0]
        assert sender_for(store, tmp_path).send_due() == 1
        (got,) = receiver.requests()
    assert got.path == "/hooks?team=search" and got.headers["content-type"] == "application/json"
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert event["type"] == "job.queued" and event["data"]["job_id"] == job.id
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(got.body.replace(b"queued", b"failed"), got.headers)
    (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
    assert delivery.id == got.headers["webhook-id"]
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == (DeliveryState.DELIVERED, 1, 204)


def test_a_redirect_is_a_failed_attempt_and_is_never_followed(store: JobStore, tmp_path: Path) -> None:
    with webhook_receiver() as target, webhook_receiver(status=302) as redirecting:
        redirecting.location = f"http://127.0.0.1:{target.port}/internal"
        job = store.create_job({**SPEC, "webhook": {"url": redirecting.url}})[0]
        assert sender_for(store, tmp_path).send_due() == 1
        time.sleep(0.5)  # a followed redirect would have reached the target by now
        assert len(redirecting.requests()) == 1
        assert target.requests() == [], "the redirect must not be followed"
    (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
    assert delivery.state is DeliveryState.PENDING and delivery.attempts == 1 and delivery.last_status_code == 302
    assert delivery.last_error is not None and "redirect" in delivery.last_error
    assert delivery.next_attempt_at is not None


def test_a_receiver_that_fails_is_retried_and_the_error_is_recorded(store: JobStore, tmp_path: Path) -> None:
    with webhook_receiver(status=500) as receiver:
        job = store.create_job({**SPEC, "webhook": {"url": receiver.url}})[0]
        sender = sender_for(store, tmp_path, FITJOBS_WEBHOOK_RETRY_SECONDS="0.2")
        sender.send_due()
        (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
        assert (delivery.attempts, delivery.last_status_code, delivery.last_error) == (1, 500, "answered 500")
        receiver.status = 200
        time.sleep(0.3)
        sender.send_due()
        ids = {request.headers["webhook-id"] for request in receiver.requests()}
    (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == (DeliveryState.DELIVERED, 2, 200)
    assert ids == {delivery.id}, "every attempt of a delivery carries its one webhook-id"


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` and its key, made with the openssl command."""
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_https_goes_to_the_checked_address_with_the_host_name_in_sni_and_the_certificate_check(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "hooks.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    policy = DestinationPolicy(allowed_networks=parse_networks(["127.0.0.1/32"]), resolver=resolver)
    body = b'{"type":"job.succeeded"}'
    headers = signed_headers(parse_secret(SECRET), "msg_tls", int(time.time()), body)
    with webhook_receiver(ssl_context=server_tls) as receiver:
        url = f"https://hooks.test:{receiver.port}/hooks"
        result = post_signed(url, body, headers, policy, timeout=10, ssl_context=trusted)
        assert result.delivered and result.status_code == 204, result
        assert lookups == ["hooks.test"], "the host is resolved once, and the checked address is used"
        (got,) = receiver.requests()
        assert got.server_name == "hooks.test" and got.headers["host"] == f"hooks.test:{receiver.port}"
        Webhook(SECRET).verify(got.body, got.headers)
        # Another name on the same address: its certificate does not match, so nothing is sent.
        other = DestinationPolicy(allowed_networks=policy.allowed_networks, resolver=lambda h, p: ["127.0.0.1"])
        refused = post_signed(f"https://other.test:{receiver.port}/hooks", body, headers, other, timeout=10,
                              ssl_context=trusted)
        assert not refused.delivered and refused.error is not None and "doesn't match 'hooks.test'" in refused.error
        assert len(receiver.requests()) == 1


def test_an_address_that_resolves_to_a_refused_one_is_never_contacted(store: JobStore, tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        job = store.create_job({**SPEC, "webhook": {"url": f"http://localhost:{receiver.port}/hooks"}})[0]
        # Loopback is not allowed here: localhost resolves to it.
        sender = sender_for(store, tmp_path, FITJOBS_WEBHOOK_ALLOWED_NETWORKS="")
        assert sender.send_due() == 1
        assert receiver.requests() == []
    (delivery,) = WebhookStore(store.engine).list_for_job(job.id)
    assert delivery.last_error is not None and "non-public" in delivery.last_error
    assert delivery.last_status_code is None and delivery.state is DeliveryState.PENDING


def test_supervisors_side_by_side_send_each_delivery_once(cluster: QuickCluster) -> None:
    with webhook_receiver() as receiver:
        job_ids = {cluster.store.create_job({**SPEC, "fake_seconds": 0.05, "webhook": {"url": receiver.url}})[0].id
                   for _ in range(6)}
        for _ in range(3):
            cluster.start_supervisor(**LOOPBACK_ALLOWED)
        hooks = WebhookStore(cluster.store.engine)

        def all_delivered() -> bool:
            deliveries = [d for job_id in job_ids for d in hooks.list_for_job(job_id)]
            return len(deliveries) == 18 and all(d.state is DeliveryState.DELIVERED for d in deliveries)

        wait_for(all_delivered, 60, "queued, running and succeeded delivered for 6 jobs")
        got = receiver.requests()
    ids = [request.headers["webhook-id"] for request in got]
    assert len(ids) == 18 and len(set(ids)) == 18, "no delivery is sent twice"
    events = [Webhook(SECRET).verify(request.body, request.headers) for request in got]
    assert {(e["data"]["job_id"], e["type"]) for e in events} == {
        (job_id, kind) for job_id in job_ids for kind in ("job.queued", "job.running", "job.succeeded")}


def test_a_worker_of_one_job_sends_its_jobs_last_events_before_it_exits(cluster: QuickCluster) -> None:
    with webhook_receiver() as receiver:
        job = cluster.store.create_job({**SPEC, "fake_seconds": 0.05, "webhook": {"url": receiver.url}})[0]
        worker = cluster.start_supervisor("--once", "30", **LOOPBACK_ALLOWED, FITJOBS_POLL_INTERVAL="2")
        assert worker.wait(timeout=60) == 0, cluster.logs()
        got = receiver.requests()
    assert [json.loads(request.body)["type"] for request in got][-1] == "job.succeeded", cluster.logs()
    assert all(d.state is DeliveryState.DELIVERED for d in WebhookStore(cluster.store.engine).list_for_job(job.id))


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not {what} after {timeout} s")


def test_a_trained_jobs_events_survive_a_restart_and_reach_a_receiver_that_was_down(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    receiver_port = free_port()  # nobody listens there yet: the receiver is down
    env = {**LOOPBACK_ALLOWED, "FITJOBS_WEBHOOK_RETRY_SECONDS": "0.5", "FITJOBS_WEBHOOK_MAX_RETRY_SECONDS": "1"}
    home = tmp_path / "service"
    service = start_service(home, extra_env=env)
    try:
        write_table(sentiment_rows(64, seed=3), service.data_root / "train.csv")
        write_table(sentiment_rows(16, seed=4), service.data_root / "val.csv")
        spec = {"model": str(tiny_model_dir),
                "data": {"train": {"path": "train.csv"}, "validation": {"path": "val.csv"}},
                "hyperparameters": {"epochs": 1, "batch_size": 16, "max_length": 16, "seed": 1},
                "webhook": {"url": f"http://127.0.0.1:{receiver_port}/hooks"}}
        created = service.post("/v1/jobs", json=spec)
        down_since = time.monotonic()
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert service.wait_for_state(job_id, {"succeeded", "failed"}, timeout=300)["state"] == "succeeded"

        def retried() -> list[dict[str, Any]] | None:
            listed = service.get(f"/v1/jobs/{job_id}/webhook-deliveries").json()["deliveries"]
            done = len(listed) == 4 and all(d["attempts"] >= 2 for d in listed)
            return listed if done else None

        before = wait_for(retried, 30, "retried while the receiver is down")
        assert all(d["state"] == "pending" and d["last_status_code"] is None and d["last_error"] for d in before)
        assert service.stop() == 0
    finally:
        service.stop()
    service = start_service(home, extra_env=env)  # a new supervisor on the same database
    try:
        # The receiver stays down for at least 30 s from the first event on.
        time.sleep(max(0.0, 30 - (time.monotonic() - down_since)))
        with webhook_receiver(receiver_port) as receiver:
            def delivered() -> list[dict[str, Any]] | None:
                listed = service.get(f"/v1/jobs/{job_id}/webhook-deliveries").json()["deliveries"]
                return listed if all(d["state"] == "delivered" for d in listed) else None

            after = wait_for(delivered, 60, "delivered once the receiver is back")
            got = receiver.requests()
    finally:
        assert service.stop() == 0
    assert [d["event_type"] for d in after] == ["job.queued", "job.running", "job.evaluation_ready",
                                                "job.succeeded"]
    by_id = {d["id"]: d for d in after}
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(by_id), "each event arrives once"
    for request in got:
        event = Webhook(SECRET).verify(request.body, request.headers)
        delivery = by_id[request.headers["webhook-id"]]
        assert event["type"] == delivery["event_type"] and event["data"]["job_id"] == job_id
        assert delivery["attempts"] > next(d for d in before if d["id"] == delivery["id"])["attempts"]
        assert delivery["last_status_code"] == 204 and delivery["last_error"] is None
    succeeded = next(json.loads(r.body) for r in got if r.headers["webhook-id"] == after[3]["id"])
    assert succeeded["data"]["state"] == "succeeded" and succeeded["data"]["attempt"] == 1
