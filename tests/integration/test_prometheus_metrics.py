"""`GET /metrics` of a real `fitjobs serve` (gunicorn, gevent workers, multiprocess metrics) after a failed,
a cancelled and a succeeded tiny BERT job, and the supervisor's own /metrics while a job trains;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.postgres import temporary_database
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService, free_port, start_service

OUTCOMES = ("succeeded", "failed", "cancelled")


@pytest.fixture(params=["sqlite", "postgresql"])
def metered(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[RunningService, int]]:
    """`fitjobs serve` (two API workers) with the supervisor's metrics on a free port, and that port."""
    port = free_port()
    env = {"FITJOBS_SUPERVISOR_METRICS_PORT": str(port), "FITJOBS_API_WORKERS": "2"}
    with ExitStack() as stack:
        if request.param == "postgresql":
            env["FITJOBS_DATABASE_URL"] = stack.enter_context(temporary_database())
        running = start_service(tmp_path / "home", extra_env=env)
        try:
            folder = running.data_root / "sentiment"
            folder.mkdir(parents=True)
            write_table(sentiment_rows(240, seed=3), folder / "train.csv")
            write_table(sentiment_rows(60, seed=4), folder / "val.jsonl")
            yield running, port
        finally:
            assert running.stop() == 0, running.output()[-3000:]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by (name, labels)."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def spec(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    hyperparameters = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, "seed": 1}
    hyperparameters.update(overrides)
    return {"model": str(model_dir),
            "data": {"train": {"path": "sentiment/train.csv"}, "validation": {"path": "sentiment/val.jsonl"}},
            "hyperparameters": hyperparameters}


def submit(service: RunningService, body: dict[str, Any]) -> str:
    response = service.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def api_metrics(service: RunningService) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = service.get("/metrics")
    assert response.status_code == 200
    return samples(response.text)


def wait_for_pace(service: RunningService, job_id: str, timeout: float = 180) -> None:
    """Until the running job has reported its examples/s (it is fitting, and its progress was written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(f"/v1/jobs/{job_id}").json()
        assert job["state"] in {"queued", "running"}, job
        if job["progress"].get("examples_per_second") and job["progress"].get("step_seconds"):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reported its pace:\n{service.output()[-3000:]}")


def test_metrics_after_a_failed_a_cancelled_and_a_succeeded_job(metered: tuple[RunningService, int],
                                                               tiny_model_dir: Path) -> None:
    service, supervisor_port = metered
    bad = spec(tiny_model_dir)
    bad["data"]["text_column"] = "review_body"  # no such column: the trainer fails it as invalid_data
    failed = submit(service, bad)
    assert service.wait_for_state(failed, {"failed", "succeeded", "cancelled"}, 180)["state"] == "failed"

    # A long job, followed over an event stream while it trains, then cancelled.
    long_job = submit(service, spec(tiny_model_dir, epochs=100, batch_size=2))
    wait_for_pace(service, long_job)
    pace = samples(requests.get(f"http://127.0.0.1:{supervisor_port}/metrics", timeout=10).text)
    assert (value(pace, "fitjobs_running_job_examples_per_second", job_id=long_job, tenant="default") or 0) > 0
    assert (value(pace, "fitjobs_running_job_step_seconds", job_id=long_job, tenant="default") or 0) > 0
    assert value(pace, "fitjobs_supervisor_running_jobs") == 1
    assert value(api_metrics(service), "fitjobs_api_open_event_streams") == 0
    with requests.get(f"{service.url}/v1/jobs/{long_job}/events", headers={"Accept": "text/event-stream"},
                      stream=True, timeout=60) as stream:
        assert stream.status_code == 200
        assert value(api_metrics(service), "fitjobs_api_open_event_streams") == 1
        assert service.post(f"/v1/jobs/{long_job}/cancel").status_code == 200
        body = b"".join(stream.iter_content(chunk_size=None))  # the stream ends with the job
        assert b"event: state" in body and b'"state": "cancelled"' in body
    assert value(api_metrics(service), "fitjobs_api_open_event_streams") == 0
    assert service.wait_for_state(long_job, {"cancelled"}, 60)["state"] == "cancelled"
    idle = samples(requests.get(f"http://127.0.0.1:{supervisor_port}/metrics", timeout=10).text)
    assert value(idle, "fitjobs_supervisor_running_jobs") == 0
    assert not any(name == "fitjobs_running_job_examples_per_second" for name, _ in idle), "its series went with it"

    succeeded = submit(service, spec(tiny_model_dir))
    assert service.wait_for_state(succeeded, {"failed", "succeeded", "cancelled"}, 300)["state"] == "succeeded"

    found = api_metrics(service)
    for outcome in OUTCOMES:
        assert value(found, "fitjobs_jobs", state=outcome, priority="0") == 1
        for name in ("fitjobs_job_queue_wait_seconds", "fitjobs_job_startup_seconds", "fitjobs_job_run_seconds"):
            assert value(found, f"{name}_count", outcome=outcome) == 1, (name, outcome)
            assert value(found, f"{name}_bucket", outcome=outcome, le="+Inf") == 1, (name, outcome)
            assert (value(found, f"{name}_sum", outcome=outcome) or 0) > 0, (name, outcome)
    assert value(found, "fitjobs_jobs", state="queued", priority="0") == 0
    assert value(found, "fitjobs_oldest_queued_job_age_seconds") == 0
    assert value(found, "fitjobs_job_failures_total", code="invalid_data") == 1
    assert sum(v for (name, _), v in found.items() if name == "fitjobs_job_failures_total") == 1
    # The run time of the job that trained one epoch lies in a bucket below the longest.
    assert value(found, "fitjobs_job_run_seconds_bucket", outcome="succeeded", le="259200.0") == 1

    # Request latency, by URL rule (not by the job ids in the paths), summed over both gunicorn workers.
    def requests_of(method: str, route: str, status: str) -> float:
        return value(found, "fitjobs_api_request_duration_seconds_count", method=method, route=route,
                     status=status) or 0

    assert requests_of("POST", "/v1/jobs", "201") == 3
    assert requests_of("POST", "/v1/jobs/<job_id>/cancel", "200") == 1
    assert requests_of("GET", "/v1/jobs/<job_id>/events", "200") == 1
    assert requests_of("GET", "/v1/jobs/<job_id>", "200") >= 3
    assert requests_of("GET", "/readyz", "200") >= 1
    assert not any("route" in dict(labels) and long_job in dict(labels)["route"] for _, labels in found)
