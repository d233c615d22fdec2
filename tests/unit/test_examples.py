"""Every example spec in examples/ is a valid training spec, and together they show every source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.schemas import TrainingSpecSchema

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").rglob("*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_spec_loads(path: Path) -> None:
    TrainingSpecSchema().load(json.loads(path.read_text()))


def test_examples_show_every_data_and_model_source() -> None:
    specs = [json.loads(path.read_text()) for path in EXAMPLES]
    sources = {key for spec in specs for role in ("train", "validation") for key in spec["data"].get(role, {})}
    assert {"path", "records", "upload", "dataset", "split_fraction"} <= sources
    models = {next(iter(spec["model"])) if isinstance(spec["model"], dict) else "name" for spec in specs}
    assert models == {"name", "hub", "path", "job"}
    assert any(spec["data"].get("text_pair_column") for spec in specs)
