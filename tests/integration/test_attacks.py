"""Hostile requests against a real `fitjobs api` (gunicorn, gevent workers): each is refused with a
problem+json answer that names the problem, and none gets a 500.

Categories: the HTTP edge (what gunicorn and werkzeug refuse), input limits (numbers, nesting,
cursors and event ids, control characters), what error messages disclose, list sizes, the drain
flag, and a dataset delete racing a submit that reads it (PostgreSQL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.postgres import temporary_database
from tests.support.sentiment_data import sentiment_rows, write_table
from tests.support.service import RunningService, start_service

PROBLEM = "application/problem+json"
# Every answer the cases below got, as (case, status); checked for 500s at the end of the module.
ANSWERS: list[tuple[str, int]] = []


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    home = tmp_path_factory.mktemp("attacks")
    service = start_service(home, role="api", extra_env={"FITJOBS_API_WORKERS": "1",
                                                         "FITJOBS_MAX_REQUEST_BYTES": str(2 * 1024 * 1024)})
    yield service
    service.stop()
    assert "Traceback" not in service.output(), service.output()[-3000:]


def host_port(api: RunningService) -> tuple[str, int]:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def raw_exchange(api: RunningService, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection; the (status, headers, body) of the answer."""
    with socket.create_connection(host_port(api), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def problem(case: str, response: requests.Response, status: int, *, mentions: str = "") -> dict[str, Any]:
    """Assert ``response`` is a problem+json answer of ``status`` (whose detail mentions ``mentions``)."""
    ANSWERS.append((case, response.status_code))
    assert response.status_code == status, f"{case}: {response.status_code} {response.text[:500]}"
    assert response.headers["Content-Type"].startswith(PROBLEM), f"{case}: {response.headers['Content-Type']}"
    body = response.json()
    assert body["status"] == status and body["type"].startswith("https://fitjobs.dev/problems/")
    assert body["request_id"] == response.headers["X-Request-ID"], case
    assert mentions.lower() in json.dumps(body).lower(), f"{case}: {body}"
    return body


def records_spec(**data: Any) -> dict[str, Any]:
    return {"model": "bert-base-uncased", "data": {"train": {"records": sentiment_rows(4, seed=1)}, **data}}


# -- the edge: what gunicorn refuses before the application runs ------------------------------

GUNICORN_REFUSALS = [
    ("request line too long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "too large"),
    ("too many header fields",
     b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(80)) + b"\r\n",
     431, "headers"),
    ("header field too large", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
     431, "headers"),
    ("malformed request line", b"GARBAGE\r\n\r\n", 400, "request line"),
    ("malformed header name", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "header"),
    ("NUL in the request line", b"GET /v1/jobs/\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""),
]


@pytest.mark.parametrize(("case", "data", "status", "mentions"), GUNICORN_REFUSALS,
                         ids=[case[0] for case in GUNICORN_REFUSALS])
def test_gunicorn_refusals_are_problem_json(api: RunningService, case: str, data: bytes, status: int,
                                            mentions: str) -> None:
    got, headers, body = raw_exchange(api, data)
    ANSWERS.append((case, got))
    assert got == status, body
    assert headers["content-type"] == PROBLEM
    document = json.loads(body)
    assert document["status"] == status and mentions.lower() in document["detail"].lower()
    assert document["request_id"] == headers["x-request-id"]
    assert document["type"].startswith("https://fitjobs.dev/problems/")


def test_gthread_workers_answer_their_refusals_as_problem_json_too(tmp_path: Path) -> None:
    service = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_API_WORKER_CLASS": "gthread"})
    try:
        for case, data, status, mentions in GUNICORN_REFUSALS[:3]:
            got, headers, body = raw_exchange(service, data)
            ANSWERS.append((f"gthread: {case}", got))
            assert (got, headers["content-type"]) == (status, PROBLEM)
            assert mentions in json.loads(body)["detail"].lower()
    finally:
        service.stop()


def test_broken_chunked_body_is_400(api: RunningService) -> None:
    status, headers, body = raw_exchange(api, (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"))
    ANSWERS.append(("broken chunk framing", status))
    assert status == 400 and headers["content-type"] == PROBLEM
    assert json.loads(body)["request_id"] == headers["x-request-id"]


# -- the edge: what werkzeug and Flask refuse --------------------------------------------------

def test_unknown_paths_wrong_methods_and_large_bodies(api: RunningService) -> None:
    problem("unknown path", api.get("/v1/nothing-here"), 404)
    wrong = requests.delete(api.url + "/v1/jobs", timeout=10)
    problem("wrong method", wrong, 405)
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    problem("too large a body", api.post("/v1/jobs", data=b"{" + b" " * (3 * 1024 * 1024) + b"}",
                                         headers={"Content-Type": "application/json"}), 413)
    problem("not JSON", api.post("/v1/jobs", data=b"{nope", headers={"Content-Type": "application/json"}),
            400, mentions="not valid JSON")
    problem("not UTF-8", api.post("/v1/jobs", data=b'{"model": "\xff"}', headers={"Content-Type": "application/json"}),
            400)
    problem("wrong content type", api.post("/v1/jobs", data=b"x", headers={"Content-Type": "text/plain"}), 415)


def test_artifact_names_no_file_can_have_are_404(api: RunningService) -> None:
    job = api.post("/v1/jobs", json=records_spec()).json()["id"]
    for case, name in [("a 300-byte artifact name", "a" * 300), ("a 300-byte component", "x/" + "b" * 300 + "/c"),
                       ("a 300-byte multibyte name", "\u00e9" * 150),
                       ("a name leaving the folder", "..%2F..%2F..%2Fetc%2Fpasswd")]:
        problem(case, api.get(f"/v1/jobs/{job}/artifacts/{name}"), 404, mentions="no artifact")


# -- input limits -------------------------------------------------------------------------------

def test_long_integers_deep_nesting_and_non_numbers_are_refused_before_parsing(api: RunningService) -> None:
    def post(body: str) -> requests.Response:
        return api.post("/v1/jobs", data=body.encode(), headers={"Content-Type": "application/json"})

    spec = json.dumps(records_spec())
    problem("5,000-digit integer", post(spec[:-1] + ', "priority": ' + "9" * 5000 + "}"), 422,
            mentions="more than 19 digits")
    problem("20-digit integer", post(spec[:-1] + ', "priority": ' + "1" * 20 + "}"), 422, mentions="digits")
    problem("integer in a record", post(spec.replace('"label": "positive"', '"label": ' + "7" * 4400, 1)), 422)
    problem("100,000 deep", post("[" * 100_000 + "]" * 100_000), 400, mentions="64 deep")
    problem("65 deep", post('{"model": ' + "[" * 65 + "]" * 65 + "}"), 400, mentions="64 deep")
    problem("NaN", post(spec[:-1] + ', "priority": NaN}'), 400, mentions="NaN")
    problem("-Infinity", post(spec[:-1] + ', "priority": -Infinity}'), 400)
    problem("float overflow", post(spec[:-1] + ', "num_labels": 1e999}'), 422)
    # Right at the limits, a body is read: the answer is about the field, not the body.
    problem("19-digit priority", post(spec[:-1] + ', "priority": ' + "1" * 19 + "}"), 422, mentions="priority")
    ok = post(spec[:-1] + ', "hyperparameters": {"seed": 4294967295}}')
    ANSWERS.append(("largest seed", ok.status_code))
    assert ok.status_code == 201, ok.text


def cursor(text: str) -> str:
    """A cursor in the encoding this API's cursors use, holding ``text``."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(("case", "path", "headers", "field"), [
    ("cursor above 2**63", "/v1/jobs?cursor=" + cursor(f"seq:{2**63}"), {}, "cursor"),
    ("cursor of 2,000 digits", "/v1/jobs?cursor=" + cursor("seq:" + "9" * 2000), {}, "cursor"),
    ("cursor of Unicode digits", "/v1/jobs?cursor=" + cursor("seq:\u0663\u0663"), {}, "cursor"),
    ("cursor with a NUL", "/v1/datasets?cursor=%00", {}, "cursor"),
    ("cursor not ASCII", "/v1/datasets?cursor=%C3%A9", {}, "cursor"),
    ("after above 2**63", "/v1/jobs/{job}/events?after=" + str(2**63), {}, "after"),
    # 4,000 digits: as many as fit in gunicorn's request line limit.
    ("after of 4,000 digits", "/v1/jobs/{job}/events?after=" + "9" * 4000, {}, "after"),
    ("after of Arabic-Indic digits", "/v1/jobs/{job}/events?after=%D9%A3", {}, "after"),
    ("after with spaces", "/v1/jobs/{job}/events?after=%201", {}, "after"),
    ("limit of fullwidth digits", "/v1/jobs?limit=%EF%BC%95", {}, "limit"),
    ("Last-Event-ID above 2**63", "/v1/jobs/{job}/events",
     {"Accept": "text/event-stream", "Last-Event-ID": str(2**63)}, "Last-Event-ID"),
    ("Last-Event-ID of Unicode digits", "/v1/jobs/{job}/events",
     {"Accept": "text/event-stream", "Last-Event-ID": "\u0663".encode().decode("latin-1")}, "Last-Event-ID"),
    ("Last-Event-ID of 5,000 digits", "/v1/jobs/{job}/events",
     {"Accept": "text/event-stream", "Last-Event-ID": "9" * 5000}, "Last-Event-ID"),
])
def test_cursors_and_event_ids_take_ascii_digits_in_range(api: RunningService, case: str, path: str,
                                                          headers: dict[str, str], field: str) -> None:
    job = api.post("/v1/jobs", json=records_spec()).json()["id"]
    body = problem(case, api.get(path.format(job=job), headers=headers), 422)
    assert field in body["errors"], body


def test_event_ids_in_range_still_work(api: RunningService) -> None:
    job = api.post("/v1/jobs", json=records_spec()).json()["id"]
    events = api.get(f"/v1/jobs/{job}/events?after=0").json()["events"]
    assert events and api.get(f"/v1/jobs/{job}/events?after={2**63 - 1}").json()["events"] == []
    with requests.get(f"{api.url}/v1/jobs/{job}/events", timeout=10, stream=True,
                      headers={"Accept": "text/event-stream", "Last-Event-ID": str(events[0]["id"])}) as stream:
        assert stream.status_code == 200
    ANSWERS.extend([("event ids in range", 200)])


SPEC_FIELDS_WITH_NUL = [
    ("data.train.path", lambda v: {"model": "m", "data": {"train": {"path": v}}}),
    ("data.text_column", lambda v: {**records_spec(text_column=v)}),
    ("data.label_column", lambda v: {**records_spec(label_column=v)}),
    ("data.text_pair_column", lambda v: {**records_spec(text_pair_column=v)}),
    ("data.train.upload", lambda v: {"model": "m", "data": {"train": {"upload": "ds_" + "0" * 32 + v}}}),
    ("data.train.dataset", lambda v: {"model": "m", "data": {"train": {"dataset": "glue" + v}}}),
    ("data.train.split", lambda v: {"model": "m", "data": {"train": {"dataset": "glue", "split": "train" + v}}}),
    ("model", lambda v: {**records_spec(), "model": "bert" + v}),
    ("model.hub", lambda v: {**records_spec(), "model": {"hub": "bert" + v}}),
    ("model.path", lambda v: {**records_spec(), "model": {"path": "m" + v}}),
    ("model.job", lambda v: {**records_spec(), "model": {"job": "job_" + "0" * 32 + v}}),
    ("data.train.records", lambda v: {"model": "m", "data": {"train": {"records": [{"text" + v: "a", "label": 0}]}}}),
    ("hyperparameters.class_weight", lambda v: {**records_spec(), "hyperparameters": {"class_weight": {"a" + v: 1}}}),
]


@pytest.mark.parametrize("character", ["\x00", "\n", "\x1b", "\x85"], ids=["NUL", "newline", "ESC", "NEL"])
@pytest.mark.parametrize(("field", "make"), SPEC_FIELDS_WITH_NUL, ids=[f for f, _ in SPEC_FIELDS_WITH_NUL])
def test_control_characters_in_names_paths_columns_and_ids_are_422(api: RunningService, field: str, make: Any,
                                                                   character: str) -> None:
    body = problem(f"{field} with {character!r}", api.post("/v1/jobs", json=make(character)), 422)
    assert any(key.startswith(field) for key in body["errors"]), body["errors"]
    assert any("control characters" in text or "NUL" in text for texts in body["errors"].values()
               for text in texts), body["errors"]


@pytest.mark.parametrize(("case", "method", "path", "field"), [
    ("NUL in a job id", "GET", "/v1/jobs/job_%00", "job_id"),
    ("NUL in a job id to cancel", "POST", "/v1/jobs/job_%00/cancel", "job_id"),
    ("NUL in an artifact name", "GET", "/v1/jobs/job_{hex}/artifacts/model%00.bin", "name"),
    ("escape in an artifact name", "GET", "/v1/jobs/job_{hex}/artifacts/a%1bb", "name"),
    ("NUL in a dataset id", "GET", "/v1/datasets/ds_%00", "dataset_id"),
    ("NUL in a dataset id to delete", "DELETE", "/v1/datasets/ds_%00", "dataset_id"),
    ("NUL in an upload's file name", "POST", "/v1/datasets?filename=a%00.csv", "filename"),
])
def test_control_characters_in_urls_are_422(api: RunningService, case: str, method: str, path: str,
                                            field: str) -> None:
    response = requests.request(method, api.url + path.format(hex="0" * 32), data=b"text,label\na,b\n",
                                headers={"Content-Type": "text/csv"}, timeout=10)
    assert field in problem(case, response, 422, mentions="control characters")["errors"]


def test_control_characters_in_headers_are_refused(api: RunningService) -> None:
    # gunicorn refuses C0 controls in any header value; a C1 control (as latin-1) reaches the schema.
    problem("ESC in Idempotency-Key", api.post("/v1/jobs", json=records_spec(), headers={"Idempotency-Key": "k\x1b"}),
            400, mentions="Idempotency-Key")
    body = problem("NEL in Idempotency-Key",
                   api.post("/v1/jobs", json=records_spec(), headers={"Idempotency-Key": "k\x85"}), 422)
    assert "Idempotency-Key" in body["errors"], body


def test_request_ids_are_echoed_when_sane_and_replaced_otherwise(api: RunningService) -> None:
    mine = api.get("/v1/jobs/job_missing", headers={"X-Request-ID": "caller-42.a"})
    assert problem("request id echoed", mine, 404)["request_id"] == "caller-42.a"
    for insane in ("a b", "x" * 200, "<script>", "a\x85b", "\u00e9t\u00e9"):
        answer = api.get("/v1/jobs/job_missing", headers={"X-Request-ID": insane})
        given = problem("request id replaced", answer, 404)["request_id"]
        assert given != insane and len(given) == 32
    tagged = api.get("/healthz", headers={"X-Request-ID": "access-log-probe-1"})
    assert tagged.headers["X-Request-ID"] == "access-log-probe-1"
    deadline = time.monotonic() + 5
    while "access-log-probe-1" not in api.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert '"GET /healthz HTTP/1.1" 200' in next(line for line in api.output().splitlines()
                                                  if "access-log-probe-1" in line)


def test_an_uploaded_json_file_is_data_not_a_request_document(api: RunningService) -> None:
    # An uploaded file is read by the upload check, not parsed as a request: no body limit applies.
    rows: list[dict[str, Any]] = [{"text": "a" * 10, "label": "x"}, {"text": "b" * 10, "label": "y"}]
    plain = api.post("/v1/datasets?filename=rows.json", data=json.dumps(rows).encode(),
                     headers={"Content-Type": "application/json"})
    ANSWERS.append(("JSON upload", plain.status_code))
    assert plain.status_code == 201 and plain.json()["rows"] == 2, plain.text
    rows[0]["id"] = int("9" * 25)
    wide = api.post("/v1/datasets?filename=rows.json", data=json.dumps(rows).encode(),
                    headers={"Content-Type": "application/json"})
    assert list(problem("JSON upload with a 25-digit number", wide, 422)["errors"]) == ["file"]


# -- what error messages disclose --------------------------------------------------------------

def test_path_refusals_name_the_rule_and_not_where_the_path_leads(api: RunningService, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    write_table(sentiment_rows(4, seed=1), secret)
    (api.data_root / "link.csv").symlink_to(secret)
    (api.data_root / "dir-link").symlink_to(secret.parent)
    repository = os.getcwd()
    for case, path, rule in [
        ("/proc/self/cwd", "/proc/self/cwd/pyproject.toml", "leads into /proc, /sys or /dev"),
        ("/proc/self/root", "/proc/self/root/etc/passwd", "leads into /proc, /sys or /dev"),
        ("/proc/self/exe", "/proc/self/exe", "leads into /proc, /sys or /dev"),
        ("/proc/self/environ", "/proc/self/environ", "leads into /proc, /sys or /dev"),
        ("file symlink", "link.csv", "through a symbolic link"),
        ("folder symlink", "dir-link/secret.csv", "through a symbolic link"),
        ("absolute symlink", str(api.data_root / "link.csv"), "through a symbolic link"),
    ]:
        for endpoint in ("/v1/jobs", "/v1/jobs:validate"):
            body = problem(f"{case} via {endpoint}", api.post(endpoint, json={
                "model": "m", "data": {"train": {"path": path}}}), 422, mentions=rule)
            text = json.dumps(body)
            assert str(secret.parent) not in text and repository not in text, text
            assert "/usr/" not in text and "python" not in text.lower(), text
    body = problem("model symlink", api.post("/v1/jobs", json={**records_spec(), "model": {"path": "/proc/self/cwd"}}),
                   422, mentions="leads into /proc, /sys or /dev")
    assert repository not in json.dumps(body)


# -- lists and single jobs ----------------------------------------------------------------------

def test_lists_show_summaries_and_one_job_shows_records_as_count_and_digest(api: RunningService) -> None:
    rows = sentiment_rows(500, seed=3)
    job = api.post("/v1/jobs", json={"model": "bert-base-uncased", "data": {"train": {"records": rows}}})
    assert job.status_code == 201
    assert job.json()["spec"]["data"]["train"]["records_count"] == 500
    listed = api.get("/v1/jobs?limit=200").json()["jobs"]
    mine = next(item for item in listed if item["id"] == job.json()["id"])
    assert "spec" not in mine and "result" not in mine and mine["model"] == "bert-base-uncased"
    assert mine["state"] == "queued" and "progress" in mine
    assert len(json.dumps(mine)) < 1000, "a summary stays small whatever the spec holds"

    read = api.get(f"/v1/jobs/{job.json()['id']}").json()
    train = read["spec"]["data"]["train"]
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert train == {"records_count": 500, "records_sha256": hashlib.sha256(canonical).hexdigest()}
    full = api.get(f"/v1/jobs/{job.json()['id']}?include=records").json()
    assert full["spec"]["data"]["train"]["records"] == rows
    problem("include of something else", api.get(f"/v1/jobs/{job.json()['id']}?include=secrets"), 422,
            mentions="include")
    # The count and digest are read-only: a spec that sends them back is refused.
    problem("records_count in a spec", api.post("/v1/jobs", json={"model": "m", "data": {"train": train}}), 422)


# -- the drain flag ---------------------------------------------------------------------------------

def test_no_file_anyone_can_write_flips_readiness(tmp_path: Path) -> None:
    service = start_service(tmp_path / "home", role="api", extra_env={"FITJOBS_API_DRAIN_SECONDS": "3"})
    try:
        master = service.process.pid
        # Where the flag used to be: a name in /tmp that any local user could create.
        planted = Path("/tmp") / f"fitjobs-api-{socket.gethostname()}-{master}.draining"
        planted.touch()
        try:
            assert service.get("/readyz").status_code == 200
        finally:
            planted.unlink()
        service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2.5
        while (ready := service.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        ANSWERS.append(("draining readiness", ready.status_code))
        assert ready.status_code == 503 and "shutting down" in ready.json()["detail"]
        assert not list(Path("/tmp").glob(f"fitjobs-api-*{master}*")), "draining leaves no file in /tmp"
        assert service.process.wait(timeout=30) == 0
    finally:
        service.stop()


# -- a dataset delete racing a submit (PostgreSQL) -----------------------------------------------------

def test_a_dataset_delete_and_a_submit_reading_it_never_both_succeed(tmp_path: Path) -> None:
    rounds = 40
    with temporary_database() as url:
        service = start_service(tmp_path / "home", role="api", extra_env={
            "FITJOBS_DATABASE_URL": url, "FITJOBS_API_WORKERS": "2"})
        try:
            csv = write_table(sentiment_rows(6, seed=2), tmp_path / "rows.csv").read_bytes()
            outcomes: dict[tuple[int, int], int] = {}
            for _ in range(rounds):
                dataset = service.post("/v1/datasets?filename=rows.csv", data=csv,
                                       headers={"Content-Type": "text/csv"}).json()["id"]
                barrier = threading.Barrier(2)
                answers: dict[str, requests.Response] = {}

                def submit(dataset_id: str = dataset, barrier: threading.Barrier = barrier,
                           answers: dict[str, requests.Response] = answers) -> None:
                    barrier.wait()
                    answers["submit"] = requests.post(service.url + "/v1/jobs", timeout=30, json={
                        "model": "bert-base-uncased", "data": {"train": {"upload": dataset_id}}})

                def delete(dataset_id: str = dataset, barrier: threading.Barrier = barrier,
                           answers: dict[str, requests.Response] = answers) -> None:
                    barrier.wait()
                    answers["delete"] = requests.delete(f"{service.url}/v1/datasets/{dataset_id}", timeout=30)

                threads = [threading.Thread(target=submit), threading.Thread(target=delete)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                pair = (answers["submit"].status_code, answers["delete"].status_code)
                outcomes[pair] = outcomes.get(pair, 0) + 1
                ANSWERS.extend([("racing submit", pair[0]), ("racing delete", pair[1])])
                assert pair in {(201, 409), (422, 204)}, (pair, answers["submit"].text, answers["delete"].text)
                exists = service.get(f"/v1/datasets/{dataset}").status_code == 200
                assert exists == (pair[0] == 201)
                if pair[0] == 201:
                    service.post(f"/v1/jobs/{answers['submit'].json()['id']}/cancel")
            print(f"\n{rounds} delete/submit races on PostgreSQL: {outcomes}")
        finally:
            service.stop()


def test_no_case_got_a_500() -> None:
    """Runs last in this module: every answer collected above."""
    assert ANSWERS, "the cases above ran"
    errors = [(case, status) for case, status in ANSWERS if status >= 500 and status != 503]
    print(f"\n{len(ANSWERS)} hostile requests, {len(errors)} answered 5xx (other than 503)")
    assert errors == []
