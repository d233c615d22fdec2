"""The edge of the API in process: request ids on unexpected errors, JSON limits, the drain flag,
gunicorn's problem answers and the OpenAPI document's error content type."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml
from flask import Flask

from service.api import lifecycle
from service.api.edge import MAX_JSON_DEPTH, check_json_text
from service.api.gunicorn_workers import PROBLEM_CONTENT_TYPE as GUNICORN_PROBLEM_TYPE
from service.api.gunicorn_workers import PROBLEM_TYPE_BASE as GUNICORN_TYPE_BASE
from service.api.gunicorn_workers import problem_answer
from service.errors import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, BadRequest, ValidationFailed
from service.store import JobStore

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.yaml"


def test_an_unexpected_exception_is_a_500_problem_logged_with_its_request_id(
        app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    @app.get("/v1/boom")
    def boom() -> str:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = app.test_client().get("/v1/boom", headers={"X-Request-ID": "trace-7"})
    assert response.status_code == 500 and response.mimetype == PROBLEM_CONTENT_TYPE
    body = response.get_json()
    assert body["request_id"] == "trace-7" == response.headers["X-Request-ID"]
    assert "a bug" not in json.dumps(body), "the exception's text stays in the log"
    logged = [record for record in caplog.records if "trace-7" in record.getMessage()]
    assert logged and logged[0].exc_info is not None and "a bug" in str(logged[0].exc_info[1])


@pytest.mark.parametrize(("text", "refusal"), [
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), BadRequest),
    ('{"a": ' + "1" * 20 + "}", ValidationFailed),
    ('{"a": -' + "1" * 4301 + "}", ValidationFailed),
    ('{"a": NaN}', BadRequest),
    ('{"a": Infinity}', BadRequest),
    ('{"a": 1e400}', ValidationFailed),
    ('{"a": 1e+0289}', ValidationFailed),
    ('{"a": [' + "[]," * 1000 + "[" * 64 + "]" * 64 + "]}", BadRequest),
])
def test_json_past_the_limits_is_refused_before_parsing(text: str, refusal: type[Exception]) -> None:
    with pytest.raises(refusal):
        check_json_text(text)


@pytest.mark.parametrize("text", [
    "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
    '{"a": ' + "9" * 19 + ', "b": 1.5e288, "c": 0.' + "1" * 40 + ', "d": -' + "9" * 19 + "e288, \"e\": 1e-999}",
    # Brackets, digits and NaN inside strings are text, not structure.
    json.dumps({"text": "[" * 500 + "NaN " + "9" * 5000, "escaped": 'a\\"[[[' * 100}),
])
def test_json_within_the_limits_passes(text: str) -> None:
    check_json_text(text)


def test_the_drain_flag_is_shared_with_forked_children_and_has_no_file() -> None:
    flag = lifecycle.create_drain_flag()
    try:
        assert not lifecycle.is_draining()
        child = os.fork()
        if child == 0:  # the child sets it, as the master does on SIGTERM
            lifecycle.mark_draining()
            os._exit(0)
        os.waitpid(child, 0)
        assert lifecycle.is_draining() and flag.is_set()
    finally:
        lifecycle._flag = None
    assert not lifecycle.is_draining(), "outside gunicorn nothing is draining"


def test_gunicorn_refusals_are_problem_json_of_the_same_types() -> None:
    assert (GUNICORN_PROBLEM_TYPE, GUNICORN_TYPE_BASE) == (PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE)
    answer = problem_answer(431, "Request Header Fields Too Large", "x" * 1000, "abc123")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Content-Type: application/problem+json" in head and b"X-Request-ID: abc123" in head
    assert f"Content-Length: {len(body)}".encode() in head
    document = json.loads(body)
    assert document["type"] == PROBLEM_TYPE_BASE + "request-header-fields-too-large"
    assert document["status"] == 431 and document["request_id"] == "abc123" and len(document["detail"]) < 400


def test_every_documented_error_response_is_problem_json() -> None:
    document = yaml.safe_load(COMMITTED.read_text())
    responses = list(document["components"]["responses"].values())
    for operations in document["paths"].values():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            responses += [response for status, response in operation["responses"].items()
                          if (status == "default" or int(status) >= 400) and "content" in response]
    assert len(responses) > len(document["components"]["responses"]), "inline error responses are checked too"
    for response in responses:
        assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], response
    assert "request_id" in document["components"]["schemas"]["Problem"]["properties"]
    sources = document["components"]["schemas"]["TrainSource"]["oneOf"]
    assert [variant["required"] for variant in sources][:5] == [["path"], ["url"], ["records"], ["upload"],
                                                                 ["dataset"]]


class FailingChecks:
    """Stands in for the check server (a child process) failing with an OS error that names a path."""

    def run(self, kind: str, payload: dict[str, object], timeout: float) -> dict[str, object]:
        from service.check_runner import CheckFailed

        raise CheckFailed("the check server stopped: [Errno 2] No such file or directory: '/srv/secret/run.sock'")


def test_503s_of_failed_checks_do_not_quote_the_os_error(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    app.extensions["fitjobs.check_runner"] = FailingChecks()
    client = app.test_client()
    spec = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": 0}]}}}
    with caplog.at_level(logging.WARNING):
        answers = [client.post("/v1/jobs:validate", json=spec),
                   client.post("/v1/datasets?filename=rows.csv", data=b"text,label\na,0\n",
                               headers={"Content-Type": "text/csv"})]
    for response in answers:
        assert response.status_code == 503 and response.mimetype == PROBLEM_CONTENT_TYPE
        body = json.dumps(response.get_json())
        assert "/srv/secret" not in body and "Errno" not in body, body
        assert "check process failed" in response.get_json()["detail"]
    assert "/srv/secret/run.sock" in caplog.text, "the cause is in the log for the operator"


def test_job_summaries_read_the_model_but_neither_spec_nor_result(store: JobStore) -> None:
    records = [{"text": "x" * 1000, "label": i % 2} for i in range(2000)]
    hub, _ = store.create_job({"model": "bert-base-uncased", "data": {"train": {"records": records}}})
    folder, _ = store.create_job({"model": {"path": "models/m", "revision": None}, "data": {"train": {"path": "a"}}})
    page, _ = store.list_jobs(summary=True)
    assert [(job.id, job.spec, job.result) for job in page] == [
        (folder.id, {"model": {"path": "models/m", "revision": None}}, None),
        (hub.id, {"model": "bert-base-uncased"}, None)]
    full, _ = store.list_jobs()
    assert full[1].spec["data"]["train"]["records"] == records
    assert [job.state for job in page] == [job.state for job in full]
