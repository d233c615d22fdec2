"""Job fingerprints on real files: what changes them, what does not, and the per-process hash cache."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.fingerprint import FileDigests, normalized_spec, spec_fingerprint
from service.locations import Locations
from service.schemas import TrainingSpecSchema
from service.uploads import UploadedDataset

ONE_HOUR_AGO = time.time() - 3600


@pytest.fixture
def locations(tmp_path: Path) -> Locations:
    """Data root with a CSV and a folder of files, and a model root with a small model folder."""
    data, models = tmp_path / "data", tmp_path / "models"
    (data / "saved" / "train").mkdir(parents=True)
    (data / "train.csv").write_text("text,label\ngood film,pos\nbad film,neg\n")
    (data / "saved" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (data / "saved" / "train" / "data-00000-of-00001.arrow").write_bytes(bytes(range(256)) * 8)
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text('{"model_type": "bert"}')
    (models / "tiny" / "tf_model.h5").write_bytes(os.urandom(4096))
    return Locations(data_root=data, uploads_dir=tmp_path / "uploads", artifacts_dir=tmp_path / "artifacts",
                     model_roots=(models,))


def load(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the API stores it, defaults filled in."""
    return TrainingSpecSchema().load(spec)


def base_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"path": "tiny"}, "data": {"train": {"path": "train.csv"}}}
    spec.update(overrides)
    return load(spec)


def no_uploads(dataset_id: str) -> UploadedDataset | None:
    return None


def fingerprint(spec: dict[str, Any], locations: Locations, digests: FileDigests | None = None,
                uploads: Any = no_uploads) -> str | None:
    return spec_fingerprint(spec, locations, uploads, digests or FileDigests())


def flip_last_byte(path: Path) -> None:
    """Change one byte in place, keeping the size."""
    content = bytearray(path.read_bytes())
    content[-1] ^= 0x01
    path.write_bytes(bytes(content))


def test_fields_that_do_not_change_what_is_trained_are_ignored(locations: Locations) -> None:
    plain = fingerprint(base_spec(), locations)
    assert plain is not None and len(plain) == 64
    for changed in ({"priority": 9}, {"max_attempts": 1}, {"max_runtime_seconds": 60}, {"reuse": True},
                    {"resources": {"gpus": 0}}):
        assert fingerprint(base_spec(**changed), locations) == plain, changed
    assert "priority" not in normalized_spec(base_spec(priority=9))
    # A default written out is the same spec as the default left out.
    assert fingerprint(base_spec(hyperparameters={"epochs": 3}), locations) == plain


def test_what_is_trained_changes_it(locations: Locations) -> None:
    plain = fingerprint(base_spec(), locations)
    for changed in ({"hyperparameters": {"epochs": 4}}, {"hyperparameters": {"seed": 7}}, {"num_labels": 3},
                    {"data": {"train": {"path": "train.csv"}, "validation": {"split_fraction": 0.2}}},
                    {"data": {"train": {"path": "train.csv"}, "text_column": "review"}}):
        assert fingerprint(base_spec(**changed), locations) != plain, changed


def test_one_changed_byte_in_a_data_file_changes_it(locations: Locations) -> None:
    digests = FileDigests()
    before = fingerprint(base_spec(), locations, digests)
    flip_last_byte(locations.data_root / "train.csv")
    after = fingerprint(base_spec(), locations, digests)
    assert before is not None and after is not None and after != before


def test_one_changed_byte_in_a_saved_folder_changes_it(locations: Locations) -> None:
    spec = base_spec(data={"train": {"path": "saved", "split": "train"}})
    before = fingerprint(spec, locations)
    assert before is not None
    flip_last_byte(locations.data_root / "saved" / "train" / "data-00000-of-00001.arrow")
    assert fingerprint(spec, locations) != before
    (locations.data_root / "saved" / "train" / "data-00000-of-00001.arrow").rename(
        locations.data_root / "saved" / "train" / "renamed.arrow")
    assert fingerprint(spec, locations) not in (before, None), "file names count, not only contents"


def test_same_content_under_another_name_is_the_same_data(locations: Locations) -> None:
    (locations.data_root / "copy.csv").write_bytes((locations.data_root / "train.csv").read_bytes())
    (locations.data_root / "copy.jsonl").write_bytes((locations.data_root / "train.csv").read_bytes())
    plain = fingerprint(base_spec(), locations)
    assert fingerprint(base_spec(data={"train": {"path": "copy.csv"}}), locations) == plain
    # The suffix decides how the bytes are read, so the same bytes as JSON Lines are other data.
    assert fingerprint(base_spec(data={"train": {"path": "copy.jsonl"}}), locations) != plain


def test_one_changed_byte_in_a_model_file_changes_it(locations: Locations) -> None:
    digests = FileDigests()
    before = fingerprint(base_spec(), locations, digests)
    flip_last_byte(locations.model_roots[0] / "tiny" / "tf_model.h5")
    assert fingerprint(base_spec(), locations, digests) not in (before, None)


def test_a_model_is_hashed_once_until_it_changes(locations: Locations) -> None:
    weights = locations.model_roots[0] / "tiny" / "tf_model.h5"
    for root in (locations.data_root, locations.model_roots[0]):
        for path in root.rglob("*"):
            os.utime(path, (ONE_HOUR_AGO, ONE_HOUR_AGO))  # written long ago, like a downloaded model
    digests = FileDigests()
    first = fingerprint(base_spec(), locations, digests)
    read_once = digests.hashed_bytes
    assert read_once >= weights.stat().st_size
    assert fingerprint(base_spec(priority=5), locations, digests) == first
    assert digests.hashed_bytes == read_once, "a second request reads no model file again"

    flip_last_byte(weights)  # rewritten now: new mtime, same size
    assert fingerprint(base_spec(), locations, digests) != first
    assert digests.hashed_bytes > read_once


def test_a_file_rewritten_within_the_same_timestamp_is_not_taken_from_the_cache(locations: Locations) -> None:
    weights = locations.model_roots[0] / "tiny" / "tf_model.h5"
    digests = FileDigests()
    stamp = os.stat(weights).st_mtime_ns
    first = fingerprint(base_spec(), locations, digests)
    flip_last_byte(weights)
    os.utime(weights, ns=(stamp, stamp))  # same size and mtime: only the contents changed
    assert fingerprint(base_spec(), locations, digests) != first


def test_uploads_count_by_their_sha256_not_their_id(locations: Locations) -> None:
    def uploaded(sha256: str) -> UploadedDataset:
        return UploadedDataset(id="ds_x", filename="t.csv", format="csv", size_bytes=1, sha256=sha256, rows=1,
                               columns=["text", "label"], created_at=datetime.now(UTC))

    records = {"ds_" + "a" * 32: uploaded("1" * 64), "ds_" + "b" * 32: uploaded("1" * 64),
               "ds_" + "c" * 32: uploaded("2" * 64)}

    def by_upload(dataset_id: str) -> str | None:
        return fingerprint(base_spec(data={"train": {"upload": dataset_id}}), locations, uploads=records.get)

    assert by_upload("ds_" + "a" * 32) is not None
    assert by_upload("ds_" + "a" * 32) == by_upload("ds_" + "b" * 32), "the same file uploaded twice"
    assert by_upload("ds_" + "a" * 32) != by_upload("ds_" + "c" * 32), "another file"
    assert by_upload("ds_" + "d" * 32) is None, "an unknown upload has no fingerprint"


def test_hub_sources_count_by_name_and_revision(locations: Locations) -> None:
    def hub(model: Any, **source: str) -> str | None:
        return fingerprint(base_spec(model=model, data={"train": {"dataset": "glue", "config": "sst2", **source}}),
                           locations)

    plain = hub("bert-base-uncased")
    assert plain is not None
    assert hub({"hub": "bert-base-uncased"}) == plain, "the string and object forms name one model"
    assert hub({"hub": "bert-base-uncased", "revision": "v2"}) != plain
    assert hub("bert-base-uncased", revision="abc123") != plain
    assert hub("bert-base-uncased", split="train[:100]") != plain


def test_records_and_job_models_are_their_own_identity(locations: Locations) -> None:
    records = {"train": {"records": [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}]}}
    changed = {"train": {"records": [{"text": "a", "label": "x"}, {"text": "c", "label": "y"}]}}
    assert fingerprint(base_spec(data=records), locations) != fingerprint(base_spec(data=changed), locations)
    job_a, job_b = {"job": "job_" + "a" * 32}, {"job": "job_" + "b" * 32}
    assert fingerprint(base_spec(model=job_a), locations) != fingerprint(base_spec(model=job_b), locations)
    assert fingerprint(base_spec(model=job_a), locations) is not None


def test_unreadable_inputs_give_no_fingerprint(locations: Locations) -> None:
    assert fingerprint(base_spec(data={"train": {"path": "missing.csv"}}), locations) is None
    assert fingerprint(base_spec(model={"path": "no-such-model"}), locations) is None
    assert fingerprint(base_spec(data={"train": {"path": "train.csv"}, "validation": {"path": "nope.jsonl"}}),
                       locations) is None
