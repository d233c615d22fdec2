"""Marshmallow schemas: the training spec (load) and every API response (dump).

The OpenAPI document is generated from these same classes, so they are the contract.
"""

from __future__ import annotations

import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from service.jobs import JobState

MAX_RECORDS = 10_000
MAX_MAX_LENGTH = 4096
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class StrictSchema(Schema):
    """Rejects unknown fields, at every nesting level."""

    class Meta:
        unknown = RAISE


class TrainSourceSchema(StrictSchema):
    """Where training rows come from: exactly one of ``path`` or ``records``."""

    path = fields.String(validate=validate.Length(min=1, max=4096), metadata={
        "description": "File under the data root (FITJOBS_DATA_ROOT): .csv, .json, .jsonl or .parquet."})
    records = fields.List(
        fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True)),
        validate=validate.Length(min=1, max=MAX_RECORDS),
        metadata={"description": f"Inline rows, at most {MAX_RECORDS}."})

    @validates("path")
    def _path_is_relative_to_root(self, value: str, **_: Any) -> None:
        check_data_path(value)

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        given = [name for name in self.fields if name in data]
        if len(given) != 1:
            names = " or ".join(f"`{name}`" for name in self.fields)
            raise ValidationError(f"Give exactly one of {names}.")


class ValidationSourceSchema(TrainSourceSchema):
    """Where validation rows come from, or which share of the training rows to hold out."""

    split_fraction = fields.Float(
        validate=validate.Range(min=0.0, max=0.5, min_inclusive=False),
        metadata={"description": "Hold out this share of the training rows (seeded, stratified)."})


def check_data_path(value: str) -> None:
    """Refuse data paths that point outside the data root before anything is read."""
    parts = value.replace("\\", "/").split("/")
    if value.startswith("/") or value.startswith("~") or ".." in parts or "\x00" in value:
        raise ValidationError(
            "Must be a relative path inside the data root (no leading '/', '~' or '..').")


class DataSchema(StrictSchema):
    """The data of a job and which columns hold texts and labels."""

    train = fields.Nested(TrainSourceSchema, required=True)
    validation = fields.Nested(ValidationSourceSchema,
                               load_default=lambda: {"split_fraction": 0.1},
                               metadata={"description": "Default: {\"split_fraction\": 0.1}."})
    text_column = fields.String(load_default="text", validate=validate.Length(min=1, max=256))
    text_pair_column = fields.String(load_default=None, allow_none=True,
                                     validate=validate.Length(min=1, max=256))
    label_column = fields.String(load_default="label", validate=validate.Length(min=1, max=256))


class HyperparametersSchema(StrictSchema):
    """Knobs of the fit; every number has a range."""

    epochs = fields.Integer(strict=True, load_default=3, validate=validate.Range(min=1, max=100))
    batch_size = fields.Integer(strict=True, load_default=32, validate=validate.Range(min=1, max=4096))
    learning_rate = fields.Float(load_default=5e-5,
                                 validate=validate.Range(min=0.0, max=1.0, min_inclusive=False))
    max_length = fields.Integer(strict=True, load_default=128,
                                validate=validate.Range(min=8, max=MAX_MAX_LENGTH),
                                metadata={"description": "Tokens per text after truncation."})
    seed = fields.Integer(strict=True, load_default=42, validate=validate.Range(min=0, max=2**32 - 1))


class ResourcesSchema(StrictSchema):
    """What a job needs from the node that runs it."""

    gpus = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=16),
                          metadata={"description": "GPUs the job needs; omitted: one on a GPU node, "
                                                   "none elsewhere; 0 runs it on the CPU."})


class TrainingSpecSchema(StrictSchema):
    """What to fine-tune, on which data, how."""

    model = fields.String(required=True, validate=validate.Length(min=1, max=512), metadata={
        "description": "A Hugging Face Hub model name, or an absolute path to a local model folder."})
    num_labels = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=2, max=100_000),
                                metadata={"description": "Inferred from the training labels when omitted."})
    data = fields.Nested(DataSchema, required=True)
    hyperparameters = fields.Nested(HyperparametersSchema,
                                    load_default=lambda: HyperparametersSchema().load({}))
    resources = fields.Nested(ResourcesSchema, load_default=lambda: {"gpus": None})
    priority = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=-100, max=100),
                              metadata={"description": "Higher runs first; equal priorities run in order."})
    max_attempts = fields.Integer(strict=True, load_default=3, validate=validate.Range(min=1, max=10),
                                  metadata={"description": "Attempts allowed after infrastructure failures."})
    max_runtime_seconds = fields.Integer(strict=True, load_default=86_400,
                                         validate=validate.Range(min=1, max=30 * 86_400),
                                         metadata={"description": "An attempt running longer fails as `timeout`."})

    @validates("model")
    def _model_is_name_or_path(self, value: str, **_: Any) -> None:
        if value.startswith("/"):
            return
        if not HUB_NAME.match(value) or ".." in value:
            raise ValidationError(
                "Must be a Hub model name such as 'bert-base-uncased' or 'org/name', "
                "or an absolute path to a local model folder.")


class ProgressSchema(Schema):
    epoch = fields.Integer()
    epochs = fields.Integer()
    step = fields.Integer()
    steps_per_epoch = fields.Integer(allow_none=True)


class JobErrorSchema(Schema):
    code = fields.String(metadata={"description": "invalid_data, model_load_failed, killed, internal, ..."})
    message = fields.String()
    retryable = fields.Boolean(metadata={"description": "Whether submitting the same spec again may succeed."})


class JobSchema(Schema):
    """A job as the API shows it."""

    id = fields.String()
    state = fields.Enum(JobState, by_value=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime(allow_none=True)
    attempt = fields.Integer()
    max_attempts = fields.Integer()
    priority = fields.Integer()
    cancel_requested = fields.Boolean()
    progress = fields.Nested(ProgressSchema)
    error = fields.Nested(JobErrorSchema, allow_none=True)
    result = fields.Dict(keys=fields.String(), values=fields.Float(), allow_none=True,
                         metadata={"description": "Final metrics by name once succeeded."})
    spec = fields.Nested(TrainingSpecSchema)


class IdempotencyHeaderSchema(Schema):
    """Headers of POST /v1/jobs (other headers are ignored)."""

    idempotency_key = fields.String(data_key="Idempotency-Key", validate=validate.Length(min=1, max=255),
                                    metadata={"description": "Repeat a submission safely: the same key and "
                                                             "spec return the first job (200)."})


class JobListQuerySchema(StrictSchema):
    state = fields.Enum(JobState, by_value=True)
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))
    cursor = fields.String(validate=validate.Length(max=200),
                           metadata={"description": "The `next` value of the previous page."})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema))
    next = fields.String(allow_none=True, metadata={"description": "Cursor of the next page; null at the end."})


class EpochMetricsSchema(Schema):
    epoch = fields.Integer()
    loss = fields.Float()
    accuracy = fields.Float()
    val_loss = fields.Float()
    val_accuracy = fields.Float()
    learning_rate = fields.Float()


class StepMetricsSchema(Schema):
    step = fields.Integer()
    epoch = fields.Integer()
    loss = fields.Float()


class MetricsSchema(Schema):
    epochs = fields.List(fields.Nested(EpochMetricsSchema))
    steps = fields.List(fields.Nested(StepMetricsSchema))


class EventSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    state = fields.Enum(JobState, by_value=True, allow_none=True)
    message = fields.String()
    created_at = fields.DateTime()
    data = fields.Dict(allow_none=True)


class EventListQuerySchema(StrictSchema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0),
                           metadata={"description": "Only events with an id above this one."})


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema))


class ArtifactSchema(Schema):
    name = fields.String()
    size = fields.Integer()


class ArtifactListSchema(Schema):
    artifacts = fields.List(fields.Nested(ArtifactSchema))


class HealthSchema(Schema):
    status = fields.String()


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
