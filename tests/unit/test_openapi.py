"""The committed openapi.yaml is exactly what the schemas generate, and the API serves it."""

from __future__ import annotations

from pathlib import Path

import yaml
from flask.testing import FlaskClient

from service.cli import generate_openapi

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.yaml"


def test_committed_openapi_matches_the_schemas() -> None:
    generated = generate_openapi()
    assert COMMITTED.read_text() == generated, (
        "openapi.yaml is out of date: regenerate it with `make openapi` and commit it")


def test_openapi_is_served_and_documents_the_jobs_api(client: FlaskClient) -> None:
    response = client.get("/openapi.yaml")
    assert response.status_code == 200 and response.mimetype == "application/yaml"
    document = yaml.safe_load(response.get_data(as_text=True))
    paths = document["paths"]
    for path in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/metrics",
                 "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{name}",
                 "/v1/jobs/{job_id}/model.tar.gz", "/healthz", "/readyz"):
        assert path in paths, path
    spec_schema = document["components"]["schemas"]["TrainingSpec"]
    assert set(spec_schema["required"]) == {"model", "data"}
    assert spec_schema.get("additionalProperties") is False
