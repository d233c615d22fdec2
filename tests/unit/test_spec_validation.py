"""Bad training specs get a 4xx problem+json naming the problem; good ones are queued."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask import Flask
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
    ("split_fraction too big", with_change("data.validation", {"split_fraction": 0.9}),
     "data.validation.split_fraction"),
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
    problem = assert_problem(client.post("/v1/jobs", data="model=x",
                                         content_type="application/x-www-form-urlencoded"), 415)
    assert "application/json" in problem["detail"]


def test_json_that_is_not_an_object_is_422(client: FlaskClient) -> None:
    problem = assert_problem(client.post("/v1/jobs", json=["model"]), 422)
    assert "Invalid input type" in problem["detail"]


def test_body_over_the_size_limit_is_413(client: FlaskClient, app: Flask) -> None:
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
                                       "max_length": 128, "seed": 42, "precision": "auto", "jit_compile": "auto",
                                       "optimizer": "adamw", "weight_decay": None, "lr_schedule": "linear",
                                       "warmup_ratio": None, "warmup_steps": None, "max_grad_norm": 1.0,
                                       "gradient_accumulation_steps": 1, "class_weight": "none",
                                       "early_stopping": None, "selection_metric": "val_loss"}
    assert spec["acceptance"] is None
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


FIT_FIELD_CASES = [
    ("warmup_ratio 2", {"warmup_ratio": 2}, "hyperparameters.warmup_ratio"),
    ("warmup_ratio 1", {"warmup_ratio": 1}, "hyperparameters.warmup_ratio"),
    ("warmup_steps negative", {"warmup_steps": -1}, "hyperparameters.warmup_steps"),
    ("both warmup fields", {"warmup_ratio": 0.1, "warmup_steps": 10}, "hyperparameters.warmup_steps"),
    ("weight_decay with adam", {"optimizer": "adam", "weight_decay": 0.01}, "hyperparameters.weight_decay"),
    ("weight_decay above 1", {"weight_decay": 1.5}, "hyperparameters.weight_decay"),
    ("unknown optimizer", {"optimizer": "sgd"}, "hyperparameters.optimizer"),
    ("unknown lr_schedule", {"lr_schedule": "step"}, "hyperparameters.lr_schedule"),
    ("max_grad_norm zero", {"max_grad_norm": 0}, "hyperparameters.max_grad_norm"),
    ("gradient_accumulation_steps zero", {"gradient_accumulation_steps": 0},
     "hyperparameters.gradient_accumulation_steps"),
    ("gradient_accumulation_steps huge", {"gradient_accumulation_steps": 2048},
     "hyperparameters.gradient_accumulation_steps"),
    ("unknown selection_metric", {"selection_metric": "val_f1"}, "hyperparameters.selection_metric"),
    ("patience -1", {"early_stopping": {"patience": -1}}, "hyperparameters.early_stopping.patience"),
    ("unknown early_stopping metric", {"early_stopping": {"metric": "accuracy"}},
     "hyperparameters.early_stopping.metric"),
    ("unknown early_stopping mode", {"early_stopping": {"mode": "up"}}, "hyperparameters.early_stopping.mode"),
    ("negative min_delta", {"early_stopping": {"min_delta": -0.1}}, "hyperparameters.early_stopping.min_delta"),
    ("unknown early_stopping field", {"early_stopping": {"epochs": 3}}, "hyperparameters.early_stopping.epochs"),
    ("class_weight zero", {"class_weight": {"pos": 0}}, "hyperparameters.class_weight"),
    ("class_weight negative", {"class_weight": {"pos": 2, "neg": -1.5}}, "hyperparameters.class_weight"),
    ("class_weight a boolean weight", {"class_weight": {"pos": True}}, "hyperparameters.class_weight"),
    ("class_weight a string weight", {"class_weight": {"pos": "2"}}, "hyperparameters.class_weight"),
    ("class_weight a bad string", {"class_weight": "balance"}, "hyperparameters.class_weight"),
    ("class_weight empty", {"class_weight": {}}, "hyperparameters.class_weight"),
    ("class_weight a list", {"class_weight": [1, 2]}, "hyperparameters.class_weight"),
]


@pytest.mark.parametrize("name,hyper,field", FIT_FIELD_CASES, ids=[case[0] for case in FIT_FIELD_CASES])
def test_bad_fit_settings_are_422_naming_the_field(client: FlaskClient, name: str, hyper: dict, field: str) -> None:
    problem = assert_problem(client.post("/v1/jobs", json={**VALID, "hyperparameters": hyper}), 422)
    assert list(problem["errors"]) == [field], problem
    assert field in problem["detail"]
    assert client.get("/v1/jobs").get_json()["jobs"] == []


def test_weight_decay_with_adam_says_it_needs_adamw(client: FlaskClient) -> None:
    spec = {**VALID, "hyperparameters": {"optimizer": "adam", "weight_decay": 0.1}}
    problem = assert_problem(client.post("/v1/jobs", json=spec), 422)
    assert "weight decay needs optimizer adamw" in problem["errors"]["hyperparameters.weight_decay"][0]


ACCEPTANCE_CASES = [
    ("unknown metric", {"metric": "val_f1", "min": 0.5}, "acceptance.metric"),
    ("val_loss is no acceptance metric", {"metric": "val_loss", "min": 0.5}, "acceptance.metric"),
    ("min 1.5", {"metric": "val_accuracy", "min": 1.5}, "acceptance.min"),
    ("min negative", {"metric": "val_accuracy", "min": -0.1}, "acceptance.min"),
    ("min missing", {"metric": "val_accuracy"}, "acceptance.min"),
    ("metric missing", {"min": 0.5}, "acceptance.metric"),
    ("unknown field", {"metric": "val_accuracy", "min": 0.5, "max": 1}, "acceptance.max"),
]


@pytest.mark.parametrize("name,acceptance,field", ACCEPTANCE_CASES, ids=[case[0] for case in ACCEPTANCE_CASES])
def test_bad_acceptance_is_422_naming_the_field(client: FlaskClient, name: str, acceptance: dict,
                                                field: str) -> None:
    problem = assert_problem(client.post("/v1/jobs", json={**VALID, "acceptance": acceptance}), 422)
    assert list(problem["errors"]) == [field], problem


def test_fit_settings_are_kept_and_nested_defaults_filled_in(client: FlaskClient, settings: Settings) -> None:
    # Labels in class_weight send the spec through a dry run: a local model keeps it off the Hub.
    local = with_change("model", str(settings.home / "models" / "not-there"))
    hyper = {"optimizer": "adam", "weight_decay": 0, "lr_schedule": "cosine", "warmup_steps": 0,
             "max_grad_norm": None, "gradient_accumulation_steps": 4, "class_weight": {"pos": 2, "neg": 0.5},
             "early_stopping": {"metric": "val_macro_f1"}, "selection_metric": "val_accuracy"}
    spec = {**local, "hyperparameters": hyper, "acceptance": {"metric": "val_macro_f1", "min": 0.7}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.get_json()
    loaded = response.get_json()["spec"]
    assert {key: loaded["hyperparameters"][key] for key in hyper} == {
        **hyper, "weight_decay": 0.0, "class_weight": {"pos": 2.0, "neg": 0.5},
        "early_stopping": {"metric": "val_macro_f1", "mode": "auto", "patience": 2, "min_delta": 0.0}}
    assert loaded["acceptance"] == {"metric": "val_macro_f1", "min": 0.7}
    balanced = client.post("/v1/jobs", json={**VALID, "hyperparameters": {"class_weight": "balanced",
                                                                          "warmup_ratio": 0.0}})
    assert balanced.status_code == 201, balanced.get_json()
    assert balanced.get_json()["spec"]["hyperparameters"]["class_weight"] == "balanced"
