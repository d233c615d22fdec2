"""service.client against a real `fitjobs serve` (SQLite) and a real API on PostgreSQL: every method, the retries."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.client import (
    ApiError,
    Conflict,
    FitjobsClient,
    NotFound,
    RetryPolicy,
    ServiceUnavailable,
    ValidationFailed,
    WaitTimeout,
    sha256_of_repr_digest,
)
from tests.support.postgres import ADMIN_URL, temporary_database
from tests.support.sentiment_data import sentiment_rows, tiny_job_spec, write_sentiment_files, write_table
from tests.support.service import RunningService, start_service
from tests.support.tcp_proxy import TcpProxy

FAST_RETRY = RetryPolicy(attempts=8, backoff=0.1, max_backoff=1.0)


def tiny_spec(model_dir: Path, **hyper: Any) -> dict[str, Any]:
    return tiny_job_spec(model_dir, "client", **hyper)


@pytest.fixture(scope="module")
def data_files(service: RunningService) -> Path:
    return write_sentiment_files(service.data_root / "client", 96, 32)


@pytest.fixture
def client(service: RunningService) -> Iterator[FitjobsClient]:
    with FitjobsClient(service.url, retry=FAST_RETRY) as made:
        yield made


@pytest.fixture(scope="module")
def finished_job(service: RunningService, tiny_model_dir: Path, data_files: Path) -> dict[str, Any]:
    """One tiny job trained to the end through the client."""
    with FitjobsClient(service.url) as client:
        job = client.submit(tiny_spec(tiny_model_dir))
        assert job["state"] == "queued" and job["id"].startswith("job_")
        done = client.wait(job["id"], timeout=300, interval=0.3)
    assert done["state"] == "succeeded", done
    return dict(done)


def test_service_endpoints(client: FitjobsClient) -> None:
    assert client.health()["status"] == "ok"
    assert client.ready()["status"] == "ready"
    assert client.openapi().startswith("info:") and "/v1/jobs" in client.openapi()
    assert "fitjobs_jobs" in client.prometheus_metrics()
    assert client.tenant()["name"] == "default"


def test_validate_returns_the_report_or_raises_it(client: FitjobsClient, tiny_model_dir: Path,
                                                   data_files: Path) -> None:
    report = client.validate(tiny_spec(tiny_model_dir))
    assert report["valid"] is True and report["num_labels"] == 2
    assert report["splits"]["train"]["rows"] == 96 and report["problems"] == []
    spec = tiny_spec(tiny_model_dir)
    spec["data"]["text_column"] = "review_body"
    with pytest.raises(ValidationFailed) as refused:
        client.validate(spec)
    assert refused.value.status == 422 and refused.value.report is not None
    assert refused.value.report["valid"] is False and refused.value.report["problems"]
    with pytest.raises(ValidationFailed) as invalid:
        client.submit({"model": str(tiny_model_dir), "data": {}, "surprise": 1})
    assert invalid.value.status == 422 and "surprise" in invalid.value.errors


def test_a_job_through_every_job_method(client: FitjobsClient, finished_job: dict[str, Any], tmp_path: Path) -> None:
    job_id = finished_job["id"]
    job = client.get_job(job_id)
    assert job["state"] == "succeeded" and job["progress"]["epoch"] == 2 and job["result"]
    assert job_id in [listed["id"] for listed in client.list_jobs()]
    assert job_id in [listed["id"] for listed in client.list_jobs(state="succeeded")]
    assert job_id not in [listed["id"] for listed in client.list_jobs(state="failed")]

    metrics = client.metrics(job_id)
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert all("loss" in row for row in metrics["steps"])

    events = client.events(job_id)
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)) and events[-1]["state"] == "succeeded"
    assert client.events(job_id, after=ids[-2]) == events[-1:]
    # Following a finished job replays its log and ends with its final event.
    assert list(client.follow(job_id)) == events
    assert list(client.follow(job_id, after=ids[2])) == events[3:]

    assert "Epoch 2/2" in client.logs(job_id)
    artifacts = {a["name"]: a["size"] for a in client.artifacts(job_id)}
    assert {"spec.json", "metrics.json", "model/config.json"} <= set(artifacts)
    assert len(client.artifact(job_id, "spec.json")) == artifacts["spec.json"]
    assert client.evaluation(job_id) == job["result"]["evaluation"]
    assert client.webhook_deliveries(job_id) == []  # its spec names no webhook

    model = client.download(job_id, tmp_path / "out" / "model.tar.gz")
    assert model.digest_checked and model.path.is_file()
    assert model.sha256 == hashlib.sha256(model.path.read_bytes()).hexdigest()
    assert model.size == model.path.stat().st_size
    with tarfile.open(model.path) as tar:
        assert "config.json" in tar.getnames()
    assert client.download_model(job_id, tmp_path / "again.tar.gz").read_bytes() == model.path.read_bytes()
    config = client.download(job_id, tmp_path / "config.json", name="model/config.json")
    assert config.digest_checked and config.size == artifacts["model/config.json"]
    assert not list(tmp_path.rglob("*.part")), "no partial file is left behind"

    with pytest.raises(Conflict) as conflict:
        client.cancel(job_id)
    assert conflict.value.status == 409 and conflict.value.extensions["state"] == "succeeded"


def test_errors_carry_the_problem_members(client: FitjobsClient) -> None:
    missing = "job_" + "0" * 32
    with pytest.raises(NotFound) as found:
        client.get_job(missing)
    error = found.value
    assert isinstance(error, ApiError) and error.status == 404 and error.problem["status"] == 404
    assert error.title and missing in error.detail and error.request_id
    with pytest.raises(NotFound):
        client.download(missing, Path("/nonexistent/never-written"))


def test_a_checksum_mismatch_is_refused_and_leaves_no_file(service: RunningService, finished_job: dict[str, Any],
                                                            tmp_path: Path) -> None:
    """The API's Repr-Digest is altered in flight (a fake network fault: a transport that rewrites one header)."""

    class CorruptingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if "Repr-Digest" in response.headers:
                response.headers["Repr-Digest"] = "sha-256=:" + "A" * 43 + "=:"
            return response

    from service.client import ChecksumMismatch

    with FitjobsClient(service.url, transport=CorruptingTransport()) as client:
        with pytest.raises(ChecksumMismatch):
            client.download(finished_job["id"], tmp_path / "model.tar.gz")
    assert list(tmp_path.iterdir()) == []


def test_repr_digest_parsing() -> None:
    digest = hashlib.sha256(b"abc").digest()
    import base64

    header = f"sha-512=:xx:, sha-256=:{base64.b64encode(digest).decode()}:"
    assert sha256_of_repr_digest(header) == digest.hex()
    assert sha256_of_repr_digest(None) is None and sha256_of_repr_digest("sha-256=nope") is None


def test_datasets_and_pagination(service: RunningService, tmp_path: Path) -> None:
    sent: list[httpx.Request] = []

    class CountingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            sent.append(request)
            return super().handle_request(request)

    with FitjobsClient(service.url, transport=CountingTransport()) as client:
        uploaded = []
        for index in range(5):
            path = write_table(sentiment_rows(10 + index, seed=index), tmp_path / f"rows-{index}.csv")
            dataset = client.upload_dataset(path)
            assert dataset["rows"] == 10 + index and dataset["filename"] == f"rows-{index}.csv"
            assert dataset["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            uploaded.append(dataset["id"])
        assert client.get_dataset(uploaded[0])["rows"] == 10
        sent.clear()
        listed = [d["id"] for d in client.list_datasets(page_size=2)]
        assert listed[:5] == uploaded[::-1], "newest first, across pages"
        assert len(sent) == (len(listed) + 1) // 2 + (1 if len(listed) % 2 == 0 else 0)
        assert all("limit=2" in str(request.url) for request in sent)
        assert "cursor=" in str(sent[1].url)
        for dataset_id in uploaded:
            client.delete_dataset(dataset_id)
        with pytest.raises(NotFound):
            client.get_dataset(uploaded[0])


def test_jobs_list_follows_every_page(service: RunningService, finished_job: dict[str, Any]) -> None:
    with FitjobsClient(service.url) as client:
        everything = [job["id"] for job in client.list_jobs()]
        one_by_one = [job["id"] for job in client.list_jobs(page_size=1)]
    assert one_by_one == everything and len(everything) >= 1 and finished_job["id"] in everything


def test_a_dropped_event_stream_resumes_without_losing_or_repeating_an_event(
        service: RunningService, tiny_model_dir: Path, data_files: Path) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    with TcpProxy("127.0.0.1", port) as proxy, FitjobsClient(proxy.url, retry=FAST_RETRY) as client:
        job = client.submit(tiny_spec(tiny_model_dir, epochs=2))
        seen = []
        dropped_after = 0
        for event in client.follow(job["id"]):
            seen.append(event)
            if not dropped_after and len(seen) == 3:
                dropped_after = event["id"]
                assert proxy.drop() >= 1, "the stream's connection was open"
        events = client.events(job["id"])
    ids = [event["id"] for event in seen]
    assert seen == events, "every event exactly once, in order"
    assert len(ids) == len(set(ids)) and ids == sorted(ids) and seen[-1]["state"] in {"succeeded", "failed"}
    # Frames already received before the cut are still handed out, so it resumes at the last of those.
    resumed = [int(match) for head in proxy.request_heads
               for match in re.findall(rb"(?im)^last-event-id: *([0-9]+)\r$", head)]
    assert resumed, "the client reconnected with Last-Event-ID"
    assert resumed[0] in ids and resumed[0] >= dropped_after and resumed[0] != ids[-1]


def test_wait_times_out_with_the_last_job(client: FitjobsClient, tiny_model_dir: Path, data_files: Path) -> None:
    job = client.submit(tiny_spec(tiny_model_dir, epochs=50, batch_size=2))
    try:
        with pytest.raises(WaitTimeout) as timed_out:
            client.wait(job["id"], timeout=0.5, interval=0.1)
        assert timed_out.value.job["id"] == job["id"] and timed_out.value.job["state"] in {"queued", "running"}
        assert isinstance(timed_out.value, TimeoutError)
    finally:
        assert client.cancel(job["id"])["cancel_requested"] or client.get_job(job["id"])["state"] == "cancelled"
        assert client.wait(job["id"], timeout=60, interval=0.2)["state"] == "cancelled"


def test_delete_job(client: FitjobsClient, tiny_model_dir: Path, data_files: Path) -> None:
    """DELETE /v1/jobs/{id}: 204 for a finished job, 409 while one is queued or running."""
    queued = client.submit(tiny_spec(tiny_model_dir, epochs=50, batch_size=2))
    try:
        with pytest.raises(Conflict) as busy:
            client.delete_job(queued["id"])
        assert busy.value.status == 409
    finally:
        client.cancel(queued["id"])
    client.wait(queued["id"], timeout=60, interval=0.2)
    client.delete_job(queued["id"])
    with pytest.raises(NotFound):
        client.get_job(queued["id"])


# -- retries against a real API whose database goes away ---------------------------------------

@pytest.fixture
def postgres_api(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[RunningService, str]]:
    """An API alone (no supervisor: jobs stay queued) on a throwaway PostgreSQL database."""
    with temporary_database() as url:
        api = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_DATABASE_URL": url})
        try:
            yield api, make_url(url).database or ""
        finally:
            api.stop()


def set_database_open(database: str, allow: bool) -> None:
    """Let clients into ``database`` or keep them out, cutting the connections it has (only that database)."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                             {"name": database})
    finally:
        admin.dispose()


def test_requests_during_a_database_outage_are_retried_until_it_is_back(
        postgres_api: tuple[RunningService, str], tiny_model_dir: Path) -> None:
    api, database = postgres_api
    spec = {"model": str(tiny_model_dir),
            "data": {"train": {"records": sentiment_rows(8, seed=1)},
                     "validation": {"records": sentiment_rows(4, seed=2)}},
            "hyperparameters": {"epochs": 1, "batch_size": 4}}
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        # Instead of sleeping: the database comes back after the client has waited twice.
        pauses.append(seconds)
        if len(pauses) == 2:
            set_database_open(database, True)

    set_database_open(database, False)
    try:
        down = httpx.get(f"{api.url}/v1/jobs", timeout=30)
        assert down.status_code == 503 and down.headers["Content-Type"] == "application/problem+json"
        retry_after = float(down.headers["Retry-After"])
        with FitjobsClient(api.url, sleep=sleep) as client:
            job = client.submit(spec)
            assert len(pauses) >= 2 and all(pause >= retry_after for pause in pauses[:2]), \
                "each 503 was retried after its Retry-After"
            assert client.get_job(job["id"])["state"] == "queued"
            assert [listed["id"] for listed in client.list_jobs()] == [job["id"]], "one job"
    finally:
        set_database_open(database, True)


def test_a_database_outage_longer_than_the_retries_raises_service_unavailable(
        postgres_api: tuple[RunningService, str]) -> None:
    api, database = postgres_api
    pauses: list[float] = []
    set_database_open(database, False)
    try:
        with FitjobsClient(api.url, retry=RetryPolicy(attempts=3), sleep=pauses.append) as client:
            with pytest.raises(ServiceUnavailable) as unavailable:
                client.get_job("job_" + "0" * 32)
        assert unavailable.value.status == 503 and unavailable.value.retry_after == 5
        assert len(pauses) == 2, "three tries, two waits"
    finally:
        set_database_open(database, True)


def test_a_submit_whose_answer_is_lost_is_resent_with_its_key_and_makes_one_job(
        postgres_api: tuple[RunningService, str], tiny_model_dir: Path) -> None:
    """The first answer to POST /v1/jobs is thrown away after the API made the job (a fake network fault:
    a transport that raises ReadError in place of a real response)."""
    api, _ = postgres_api
    posts: list[httpx.Request] = []

    class LosingTransport(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.method == "POST" and request.url.path == "/v1/jobs":
                posts.append(request)
                if len(posts) == 1:
                    response.read()
                    assert response.status_code == 201, "the API made the job"
                    raise httpx.ReadError("connection reset before the answer arrived", request=request)
            return response

    spec = {"model": str(tiny_model_dir), "data": {"train": {"records": sentiment_rows(8, seed=1)}}}
    with FitjobsClient(api.url, transport=LosingTransport(), sleep=lambda _: None) as client:
        job = client.submit(spec)
        keys = {request.headers["Idempotency-Key"] for request in posts}
        assert len(posts) == 2 and len(keys) == 1, "resent once, with the same Idempotency-Key"
        assert [listed["id"] for listed in client.list_jobs()] == [job["id"]], "one job"
        other = client.submit(spec)
        assert other["id"] != job["id"], "a new submit gets a new key"


def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    from service.client import TransportError
    from tests.support.service import free_port

    pauses: list[float] = []
    with FitjobsClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=4), sleep=pauses.append) as client:
        with pytest.raises(TransportError):
            client.health()
    assert len(pauses) == 3 and pauses == sorted(pauses), "backing off between tries"


def test_uploads_are_streamed(client: FitjobsClient, tmp_path: Path) -> None:
    path = write_table(sentiment_rows(12, seed=9), tmp_path / "rows.jsonl")
    dataset = client.upload_dataset(path)
    try:
        assert dataset["format"] == "jsonl" and dataset["rows"] == 12
        assert dataset["size_bytes"] == len(io.BytesIO(path.read_bytes()).getvalue())
    finally:
        client.delete_dataset(dataset["id"])
