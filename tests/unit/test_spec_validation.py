"""Bad training specs get a 4xx problem+json naming the problem; good ones are queued."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from service.config import Settings

VALID: dict[str, Any] = {
    "model": "bert-base-uncased",
    "data": {"train": {"records": [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]}},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with the dotted ``path`` set to ``value`` (parents created as needed)."""
    spec = copy.deepcopy(VALID)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def without(path: str) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    del node[leaf]
    return spec


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    problem = response.get_json(force=True)
    assert problem["status"] == status
    assert problem["type"].startswith("https://")
    assert problem["title"] and problem["detail"]
    assert "Traceback" not in response.get_data(as_text=True)
    return problem


FIELD_CASES = [
    ("missing model", without("model"), "model"),
    ("empty model", with_change("model", ""), "model"),
    ("model with spaces", with_change("model", "not a model name"), "model"),
    ("model relative path escape", with_change("model", "../secret"), "model"),
    ("model not a string", with_change("model", 5), "model"),
    ("missing data", without("data"), "data"),
    ("missing train", without("data.train"), "data.train"),
    ("train with two sources", with_change("data.train.path", "a.csv"), "data.train"),
    ("train with split_fraction", with_change("data.train", {"split_fraction": 0.1}), "data.train.split_fraction"),
    ("empty records", with_change("data.train.records", []), "data.train.records"),
    ("records not objects", with_change("data.train.records", ["text"]), "data.train.records.0"),
    ("path outside root", with_change("data.train", {"path": "../../etc/passwd"}), "data.train.path"),
    ("absolute path", with_change("data.train", {"path": "/etc/passwd"}), "data.train.path"),
    ("split_fraction zero", with_change("data.validation", {"split_fraction": 0}), "data.validation.split_fraction"),
    ("split_fraction too big", with_change("data.validation", {"split_fraction": 0.9}), "data.validation.split_fraction"),
    ("text_column empty", with_change("data.text_column", ""), "data.text_column"),
    ("unknown data field", with_change("data.texts", "x"), "data.texts"),
    ("unknown top-level field", with_change("extra", 1), "extra"),
    ("unknown nested field", with_change("hyperparameters.momentum", 0.9), "hyperparameters.momentum"),
    ("epochs zero", with_change("hyperparameters.epochs", 0), "hyperparameters.epochs"),
    ("epochs float", with_change("hyperparameters.epochs", 2.5), "hyperparameters.epochs"),
    ("epochs bool", with_change("hyperparameters.epochs", True), "hyperparameters.epochs"),
    ("batch_size string", with_change("hyperparameters.batch_size", "x"), "hyperparameters.batch_size"),
    ("batch_size negative", with_change("hyperparameters.batch_size", -1), "hyperparameters.batch_size"),
    ("learning_rate zero", with_change("hyperparameters.learning_rate", 0), "hyperparameters.learning_rate"),
    ("learning_rate huge", with_change("hyperparameters.learning_rate", 10), "hyperparameters.learning_rate"),
    ("max_length huge", with_change("hyperparameters.max_length", 10**9), "hyperparameters.max_length"),
    ("seed negative", with_change("hyperparameters.seed", -3), "hyperparameters.seed"),
    ("num_labels one", with_change("num_labels", 1), "num_labels"),
    ("num_labels string", with_change("num_labels", "2"), "num_labels"),
    ("hyperparameters not an object", with_change("hyperparameters", [1]), "hyperparameters"),
]


@pytest.mark.parametrize("name,spec,field", FIELD_CASES, ids=[case[0] for case in FIELD_CASES])
def test_invalid_field_is_422_naming_the_field(client: FlaskClient, name: str, spec: dict, field: str) -> None:
    problem = assert_problem(client.post("/v1/jobs", json=spec), 422)
    assert field in problem["errors"], problem
    assert field in problem["detail"]
    assert client.get("/v1/jobs").get_json()["jobs"] == [], "an invalid spec must not queue a job"


def test_non_json_body_is_400(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", data="{not json", content_type="application/json"), 400)
    assert "not valid JSON" in problem["detail"]


def test_empty_body_is_400(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", data="", content_type="application/json"), 400)
    assert "empty" in problem["detail"]


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", data="model=x", content_type="application/x-www-form-urlencoded"), 415)
    assert "application/json" in problem["detail"]


def test_json_that_is_not_an_object_is_422(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", json=["model"]), 422)
    assert "Invalid input type" in problem["detail"]


def test_body_over_the_size_limit_is_413(client: FlaskClient, app) -> None:  # type: ignore[no-untyped-def]
    app.config["MAX_CONTENT_LENGTH"] = 1000
    big = with_change("data.train.records", [{"text": "x" * 100, "label": "a"}] * 50)
    assert_problem(client.post("/v1/jobs", json=big), 413)


def test_valid_spec_is_queued_with_defaults(client: FlaskClient) -> None:
    response = client.post("/v1/jobs", json=VALID)
    assert response.status_code == 201
    job = response.get_json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    spec = job["spec"]
    assert spec["hyperparameters"] == {"epochs": 3, "batch_size": 32, "learning_rate": 5e-5,
                                       "max_length": 128, "seed": 42, "precision": "auto", "jit_compile": "auto"}
    assert spec["data"]["validation"] == {"split_fraction": 0.1}
    assert spec["data"]["text_column"] == "text" and spec["data"]["label_column"] == "label"
    assert spec["num_labels"] is None
    assert client.get(f"/v1/jobs/{job['id']}").get_json()["spec"] == spec


@pytest.mark.parametrize("model", ["bert-base-uncased", "sentence-transformers/all-MiniLM-L6-v2",
                                   "{home}/models/my-checkpoint"])
def test_hub_names_and_absolute_paths_under_a_model_root_are_accepted(client: FlaskClient, settings: Settings,
                                                                      model: str) -> None:
    spec = with_change("model", model.format(home=settings.home))
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_absolute_model_path_outside_the_model_roots_is_422(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", json=with_change("model", "/models/my-checkpoint")), 422)
    assert "outside the model roots" in problem["errors"]["model"][0]
    assert client.get("/v1/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize(("field", "value"), [
    ("precision", "float16"), ("precision", "bf16"), ("precision", 32),
    ("jit_compile", "true"), ("jit_compile", "yes"), ("jit_compile", 1), ("jit_compile", None),
])
def test_bad_precision_and_jit_compile_are_422_naming_the_field(client: FlaskClient, field: str, value: Any) -> None:
    spec = {**VALID, "hyperparameters": {field: value}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert f"hyperparameters.{field}" in response.get_json()["errors"], response.get_json()


@pytest.mark.parametrize(("precision", "jit"), [("mixed_bfloat16", True), ("mixed_float16", False),
                                                 ("float32", "auto")])
def test_precision_and_jit_compile_settings_are_kept(client: FlaskClient, precision: str, jit: Any) -> None:
    spec = {**VALID, "hyperparameters": {"precision": precision, "jit_compile": jit}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.get_json()
    hyper = response.get_json()["spec"]["hyperparameters"]
    assert (hyper["precision"], hyper["jit_compile"]) == (precision, jit)
