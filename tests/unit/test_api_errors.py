"""Problem responses keep the headers their status needs: Allow, WWW-Authenticate, Retry-After."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from flask import Flask, abort
from flask.testing import FlaskClient

from service import errors
from service.api import create_app
from service.config import Settings
from service.errors import ServiceError
from tests.support.service import free_port

TOKEN = "s3cret-token-0123456789"
SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


def test_405_names_the_allowed_methods(client: FlaskClient) -> None:
    response = client.delete("/v1/jobs")
    assert response.status_code == 405 and response.mimetype == "application/problem+json"
    assert {method.strip() for method in response.headers["Allow"].split(",")} >= {"GET", "POST"}
    assert response.get_json()["status"] == 405
    one_job = client.put("/v1/jobs/job_x")
    assert one_job.status_code == 405 and "GET" in one_job.headers["Allow"]


def test_401_challenges_with_bearer(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_TOKENS": TOKEN})
    app = create_app(settings)
    client = app.test_client()
    try:
        missing = client.get("/v1/jobs")
        assert missing.status_code == 401 and missing.mimetype == "application/problem+json"
        assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
        wrong = client.get("/v1/jobs", headers={"Authorization": "Bearer not-the-token-0123456789"})
        assert wrong.status_code == 401
        assert wrong.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    finally:
        app.extensions["fitjobs.store"].engine.dispose()


def test_503_says_when_to_retry(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the database is "down"
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path),
                                  "FITJOBS_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"})
    client = create_app(settings, migrate=False).test_client()
    for response in (client.get("/v1/jobs"), client.get("/readyz")):
        assert response.status_code == 503 and response.mimetype == "application/problem+json"
        assert int(response.headers["Retry-After"]) > 0


def test_werkzeug_429_and_503_keep_their_retry_after(app: Flask) -> None:
    from werkzeug.exceptions import ServiceUnavailable, TooManyRequests

    @app.get("/test/limited")
    def limited() -> NoReturn:
        raise TooManyRequests(retry_after=7)

    @app.get("/test/down")
    def down() -> NoReturn:
        raise ServiceUnavailable(retry_after=9)

    @app.get("/test/abort")
    def aborted() -> NoReturn:
        abort(405, valid_methods=["GET"])

    client = app.test_client()
    limited_response = client.get("/test/limited")
    assert limited_response.status_code == 429 and limited_response.headers["Retry-After"] == "7"
    assert limited_response.mimetype == "application/problem+json"
    assert client.get("/test/down").headers["Retry-After"] == "9"
    assert client.get("/test/abort").headers["Allow"] == "GET"


def every_subclass(cls: type[object]) -> list[type[object]]:
    found: list[type[object]] = []
    for sub in cls.__subclasses__():
        found += [sub, *every_subclass(sub)]
    return found


def test_every_service_error_lives_in_the_errors_module(app: Flask) -> None:
    # create_app (the fixture) has imported every blueprint module.
    assert {cls.__module__ for cls in every_subclass(ServiceError)} == {errors.__name__}
