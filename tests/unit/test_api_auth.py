"""Bearer tokens: /v1 needs one when FITJOBS_API_TOKENS is set; probes and metrics stay open."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api import create_app
from service.config import ConfigError, Settings

TOKEN = "s3cret-token-0123456789"
OTHER = "another-token-abcdefghij"
SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


@pytest.fixture
def client(tmp_path: Path):
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_TOKENS": f"{TOKEN}, {OTHER}"})
    app = create_app(settings)
    yield app.test_client()
    app.extensions["fitjobs.store"].engine.dispose()


def test_requests_without_a_valid_token_get_401_problem_json(client) -> None:
    for headers in ({}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer wrong-token-123456789"},
                    {"Authorization": "Bearer "}):
        response = client.post("/v1/jobs", json=SPEC, headers=headers)
        assert response.status_code == 401, headers
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["status"] == 401 and "bearer" in response.get_json()["detail"].lower()
        assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_each_configured_token_is_accepted(client) -> None:
    created = client.post("/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {TOKEN}"})
    assert created.status_code == 201
    listed = client.get("/v1/jobs", headers={"Authorization": f"bearer {OTHER}"}).get_json()["jobs"]
    assert [job["id"] for job in listed] == [created.get_json()["id"]]


def test_probes_metrics_and_the_api_description_need_no_token(client) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.yaml"):
        assert client.get(path).status_code == 200, path


def test_without_tokens_the_api_is_open(tmp_path: Path) -> None:
    app = create_app(Settings.from_env({"FITJOBS_HOME": str(tmp_path)}))
    assert app.test_client().post("/v1/jobs", json=SPEC).status_code == 201
    app.extensions["fitjobs.store"].engine.dispose()


def test_short_tokens_are_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="FITJOBS_API_TOKENS.*16 characters"):
        Settings.from_env({"FITJOBS_API_TOKENS": "short"})
