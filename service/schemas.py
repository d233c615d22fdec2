"""Marshmallow schemas: the training spec (load) and every API response (dump).

The OpenAPI document is generated from these same classes, so they are the contract.
"""

from __future__ import annotations

import math
import re
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates, validates_schema

from service.jobs import GPU_TYPE_PATTERN, FailureCode, JobState, QueueReason
from service.locations import DATASET_ID, PathRefused, check_data_url_text, check_path_text
from service.webhooks.destinations import MAX_URL_LENGTH, DestinationPolicy, DestinationRefused

MAX_RECORDS = 10_000
MAX_MAX_LENGTH = 4096
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
JOB_ID = r"^job_[0-9a-f]{32}$"
# Validation metrics an epoch can be chosen by (selection_metric, early_stopping.metric).
SELECTION_METRICS: tuple[str, ...] = ("val_loss", "val_accuracy", "val_macro_f1")
# Validation metrics an acceptance threshold can be set on (all in [0, 1], higher is better).
ACCEPTANCE_METRICS: tuple[str, ...] = ("val_accuracy", "val_macro_f1", "val_weighted_f1", "val_roc_auc")
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_WARMUP_RATIO = 0.06
MAX_LABELS = 100_000


# C0 and C1 control characters (NUL included) and DEL: no name, path, column or id holds one.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NO_CONTROL_CHARACTERS = "Must not contain NUL or other control characters."
MAX_INT64 = 2**63 - 1


class PlainString(fields.String):
    """A name, path, column or id: a string without NUL or other control characters."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        if CONTROL_CHARACTERS.search(text):
            raise ValidationError(NO_CONTROL_CHARACTERS)
        return text


class QueryInteger(fields.Integer):
    """An integer from a query string: ASCII digits only (int() would also take '٣', ' 3 ' and '1_0')."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,19}", value):
            raise ValidationError("Must be a whole number written with the digits 0-9 (at most 19 of them).")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictSchema(Schema):
    """Rejects unknown fields, at every nesting level."""

    class Meta:
        unknown = RAISE


SOURCE_REVISION = validate.Regexp(r"^[\w.\-/]{1,256}$", error="Must be a branch, tag or commit id.")


class TrainSourceSchema(StrictSchema):
    """Where training rows come from: exactly one of ``path``, ``url``, ``records``, ``upload`` or ``dataset``."""

    source_keys: tuple[str, ...] = ("path", "url", "records", "upload", "dataset")

    path = PlainString(validate=validate.Length(min=1, max=4096), metadata={
        "description": "A .csv, .json, .jsonl or .parquet file, or a folder written by `save_to_disk`, "
                       "under the data root (FITJOBS_DATA_ROOT): relative to it, or absolute inside it."})
    url = fields.String(validate=validate.Length(min=1, max=4096), metadata={
        "description": "A .csv, .json, .jsonl or .parquet file in an object store (`s3://bucket/key`, "
                       "`gs://bucket/key`) under one of the allowed prefixes (FITJOBS_DATA_URL_PREFIXES)."})
    records = fields.List(
        fields.Dict(keys=PlainString(), values=fields.Raw(allow_none=True)),
        validate=validate.Length(min=1, max=MAX_RECORDS),
        metadata={"description": f"Inline rows, at most {MAX_RECORDS}. A job read back shows `records_count` "
                                 "and `records_sha256` instead, unless asked for `?include=records`."})
    records_count = fields.Integer(dump_only=True, metadata={
        "description": "How many inline rows the job was given (in place of `records`)."})
    records_sha256 = fields.String(dump_only=True, metadata={
        "description": "SHA-256 (hex) of the inline rows as canonical JSON: sorted keys, no spaces, UTF-8."})
    upload = PlainString(validate=validate.Regexp(DATASET_ID.pattern, error="Must be a dataset id from "
                                                                             "POST /v1/datasets (ds_...)."),
                           metadata={"description": "The id of a dataset uploaded with POST /v1/datasets."})
    dataset = PlainString(validate=[validate.Length(min=1, max=256),
                                      validate.Regexp(HUB_NAME.pattern, error="Must be a Hub dataset name "
                                                                              "such as 'glue' or 'org/name'.")],
                            metadata={"description": "A Hugging Face Hub dataset; offline "
                                                     "(HF_DATASETS_OFFLINE=1) it loads from the local cache."})
    config = PlainString(validate=validate.Regexp(r"^[\w.\-]{1,256}$", error="Must be a configuration name."),
                           metadata={"description": "The Hub dataset's configuration (subset), e.g. 'sst2'."})
    split = PlainString(validate=validate.Regexp(r"^[\w.\-]{1,64}(\[[\w%:.\-]{0,64}\])?$",
                                                   error="Must be a split name, optionally sliced: 'train[:1000]'."),
                          metadata={"description": "Split of a Hub dataset or of a `save_to_disk` folder holding "
                                                   "several; default: `train` for training data, `validation` "
                                                   "for validation data."})
    revision = PlainString(validate=SOURCE_REVISION,
                             metadata={"description": "Branch, tag or commit of the Hub dataset."})

    # Keys that go only with some sources, and which sources those are.
    source_options: dict[str, tuple[str, ...]] = {"config": ("dataset",), "revision": ("dataset",),
                                                  "split": ("dataset", "path")}

    @classmethod
    def openapi_rules(cls) -> dict[str, Any]:
        """Exactly one source key, and only the options that go with it, as JSON Schema."""
        variants = []
        for key in cls.source_keys:
            banned = [{"required": [option]} for option, partners in cls.source_options.items()
                      if key not in partners]
            variants.append({"required": [key], **({"not": {"anyOf": banned}} if banned else {})})
        # A job read back shows its inline rows as their count and digest (read-only).
        records = next(variant for variant in variants if variant["required"] == ["records"])
        variants.append({**records, "required": ["records_count", "records_sha256"]})
        return {"oneOf": variants}

    @validates("path")
    def _path_is_plain(self, value: str, **_: Any) -> None:
        check_data_path(value)

    @validates("url")
    def _url_is_plain(self, value: str, **_: Any) -> None:
        try:
            check_data_url_text(value)
        except PathRefused as exc:
            raise ValidationError(f"Must be an s3:// or gs:// URL of a file; this one {exc}.") from exc

    @validates_schema
    def _exactly_one(self, data: dict[str, Any], **_: Any) -> None:
        given = [name for name in self.source_keys if name in data]
        if len(given) != 1:
            names = ", ".join(f"`{name}`" for name in self.source_keys[:-1]) + f" or `{self.source_keys[-1]}`"
            raise ValidationError(f"Give exactly one of {names}.")
        for key, partners in self.source_options.items():
            if key in data and given[0] not in partners:
                raise ValidationError(f"`{key}` goes only with {' or '.join(f'`{p}`' for p in partners)}.", key)


class ValidationSourceSchema(TrainSourceSchema):
    """Where validation rows come from, or which share of the training rows to hold out."""

    source_keys = ("path", "url", "records", "upload", "dataset", "split_fraction")

    split_fraction = fields.Float(
        validate=validate.Range(min=0.0, max=0.5, min_inclusive=False),
        metadata={"description": "Hold out this share of the training rows (seeded, stratified)."})


def check_data_path(value: str) -> None:
    """Refuse path spellings that could leave the data root ('..', escapes, '~') before anything is read.

    Where the path really leads (symlinks, absolute paths) is checked against the data root
    by the API once the spec has loaded.
    """
    try:
        check_path_text(value)
    except PathRefused as exc:
        raise ValidationError(f"Must be a path inside the data root; this one {exc}.") from exc


class DataSchema(StrictSchema):
    """The data of a job and which columns hold texts and labels."""

    train = fields.Nested(TrainSourceSchema, required=True)
    validation = fields.Nested(ValidationSourceSchema,
                               load_default=lambda: {"split_fraction": 0.1},
                               metadata={"description": "Default: {\"split_fraction\": 0.1}."})
    text_column = PlainString(load_default="text", validate=validate.Length(min=1, max=256))
    text_pair_column = PlainString(load_default=None, allow_none=True,
                                     validate=validate.Length(min=1, max=256))
    label_column = PlainString(load_default="label", validate=validate.Length(min=1, max=256))


class JitCompileField(fields.Field):
    """`auto`, or a JSON boolean (strings like "true" are refused, so a typo cannot pass as a setting)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValidationError("Must be `auto`, `true` or `false`.")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class ClassWeightField(fields.Field):
    """`none`, `balanced`, or an object of label name -> weight (finite and > 0)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value in ("none", "balanced"):
            return value
        if isinstance(value, str):
            raise ValidationError("Must be `none`, `balanced` or an object of label -> weight.")
        if not isinstance(value, dict):
            raise ValidationError("Must be `none`, `balanced` or an object of label -> weight.")
        if not 1 <= len(value) <= MAX_LABELS:
            raise ValidationError(f"Give between 1 and {MAX_LABELS} labels.")
        weights: dict[str, float] = {}
        for label, weight in value.items():
            if not isinstance(label, str) or not 1 <= len(label) <= 512:
                raise ValidationError("Labels must be names of 1 to 512 characters.")
            if CONTROL_CHARACTERS.search(label):
                raise ValidationError(f"Label {label!r}: {NO_CONTROL_CHARACTERS}")
            # bool is an int in Python; `true` is no weight.
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                    or not math.isfinite(weight) or weight <= 0:
                raise ValidationError(f"The weight of label {label!r} must be a finite number > 0, "
                                      f"not {weight!r}.")
            weights[label] = float(weight)
        return weights

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class EarlyStoppingSchema(StrictSchema):
    """When to end the fit before `epochs`: a validation metric that stopped improving."""

    metric = fields.String(load_default="val_loss", validate=validate.OneOf(SELECTION_METRICS),
                           metadata={"description": "The validation metric watched after each epoch."})
    mode = fields.String(load_default="auto", validate=validate.OneOf(["auto", "min", "max"]),
                         metadata={"description": "Whether lower (`min`) or higher (`max`) is better; `auto`: "
                                                  "`min` for val_loss, `max` for the others."})
    patience = fields.Integer(strict=True, load_default=2, validate=validate.Range(min=0, max=100),
                              metadata={"description": "Epochs in a row without improvement after which the "
                                                       "fit stops; 0 stops at the first epoch that does not "
                                                       "improve."})
    min_delta = fields.Float(load_default=0.0, validate=validate.Range(min=0.0, max=1e6),
                             metadata={"description": "An epoch improves only when it beats the best value so "
                                                      "far by more than this."})


class AcceptanceSchema(StrictSchema):
    """The score a job's selected model must reach on the validation set."""

    metric = fields.String(required=True, validate=validate.OneOf(ACCEPTANCE_METRICS), metadata={
        "description": "val_roc_auc only for two labels (its positive class is label id 1)."})
    min = fields.Float(required=True, validate=validate.Range(min=0.0, max=1.0),
                       metadata={"description": "The lowest acceptable value, in [0, 1]."})


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
    precision = fields.String(
        load_default="auto", validate=validate.OneOf(["auto", "float32", "mixed_float16", "mixed_bfloat16"]),
        metadata={"description": "Numeric precision of the fit. `auto`: bfloat16 mixed precision on GPUs of "
                                 "compute capability 8.0 or later, float16 mixed precision with loss scaling "
                                 "on 7.x, float32 on older GPUs; on CPU, bfloat16 mixed precision where the "
                                 "CPU has bfloat16 instructions, else float32. The classification head and the "
                                 "loss always compute in float32."})
    jit_compile = JitCompileField(
        load_default="auto",
        metadata={"description": "Compile the train step with XLA: `true`, `false`, or `auto` (on for GPUs, "
                                 "off on CPU, where it is slower).",
                  "oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "boolean"}]})
    optimizer = fields.String(
        load_default="adamw", validate=validate.OneOf(["adamw", "adam"]),
        metadata={"description": "`adamw`: Adam with decoupled weight decay (see `weight_decay`); `adam`: "
                                 "Adam without weight decay."})
    weight_decay = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.0, max=1.0),
        metadata={"description": f"Decoupled weight decay of AdamW; omitted or null: {DEFAULT_WEIGHT_DECAY} "
                                 "with `adamw`, 0 with `adam` (which refuses a non-zero value). "
                                 "LayerNorm weights and biases are never decayed."})
    lr_schedule = fields.String(
        load_default="linear", validate=validate.OneOf(["linear", "cosine", "constant"]),
        metadata={"description": "How the learning rate moves after warmup (update k of w warmup "
                                 "updates runs at k/w × `learning_rate`): `linear` or `cosine` decay to 0 at "
                                 "the run's last update; `constant` stays at `learning_rate`."})
    warmup_ratio = fields.Float(
        load_default=None, allow_none=True, validate=validate.Range(min=0.0, max=1.0, max_inclusive=False),
        metadata={"description": "Share of the run's updates spent warming up; omitted or null: "
                                 f"{DEFAULT_WARMUP_RATIO} (unless `warmup_steps` is given). Give one of "
                                 "`warmup_ratio` and `warmup_steps`, not both."})
    warmup_steps = fields.Integer(
        strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=10_000_000),
        metadata={"description": "Updates spent warming up, instead of `warmup_ratio`."})
    max_grad_norm = fields.Float(
        load_default=1.0, allow_none=True, validate=validate.Range(min=0.0, min_inclusive=False),
        metadata={"description": "Gradients are clipped to this global norm before each update; null: no "
                                 "clipping."})
    gradient_accumulation_steps = fields.Integer(
        strict=True, load_default=1, validate=validate.Range(min=1, max=1024),
        metadata={"description": "Batches whose gradients are summed into one update: an update sees "
                                 "batch_size * gradient_accumulation_steps rows, with the memory of one batch. "
                                 "Warmup and schedules count updates."})
    class_weight = ClassWeightField(
        load_default="none",
        metadata={"description": "How much each class's rows count in the training loss. `none`: equally; "
                                 "`balanced`: each class weighs rows / (classes * rows of the class), as "
                                 "scikit-learn does; or an object of label -> weight (finite, > 0), keyed by "
                                 "label names (integer labels by their decimal string, e.g. \"0\"); labels "
                                 "left out weigh 1. Every key must be a label of the training data (checked "
                                 "at submit).",
                  "oneOf": [{"type": "string", "enum": ["none", "balanced"]},
                            {"type": "object",
                             "additionalProperties": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                             "minProperties": 1}]})
    early_stopping = fields.Nested(
        EarlyStoppingSchema, load_default=None, allow_none=True,
        metadata={"description": "Stop the fit when `metric` has not improved by more than `min_delta` for "
                                 "`patience` epochs in a row; null (default): train every epoch."})
    selection_metric = fields.String(
        load_default="val_loss", validate=validate.OneOf(SELECTION_METRICS),
        metadata={"description": "The published model is the epoch that is best by this validation metric "
                                 "(lowest val_loss, highest of the others), whether or not the fit stopped "
                                 "early."})

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("optimizer") == "adam" and data.get("weight_decay"):
            raise ValidationError("Non-zero weight decay needs optimizer adamw; with adam, leave weight_decay "
                                  "out or set it to 0.", "weight_decay")
        if data.get("warmup_ratio") is not None and data.get("warmup_steps") is not None:
            raise ValidationError("Give warmup_steps or warmup_ratio, not both.", "warmup_steps")


class ResourcesSchema(StrictSchema):
    """What a job needs from the node that runs it."""

    gpus = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(min=0, max=16),
                          metadata={"description": "GPUs the job needs; omitted: one on a GPU node, "
                                                   "none elsewhere; 0 runs it on the CPU."})
    gpu_type = fields.String(
        load_default=None, allow_none=True, validate=validate.Regexp(f"^{GPU_TYPE_PATTERN}$", error=(
            "A GPU type is a name like `h100` or `a100-80gb`: letters, digits, `.`, `_` and `-`, at most 63.")),
        metadata={"description": "The GPU type the job needs, e.g. `h100`: only workers whose FITJOBS_GPU_TYPE "
                                 "names it claim the job (in a cluster, workers of that type are placed on "
                                 "matching nodes by a Kueue ResourceFlavor or a nodeSelector). Omitted or null: "
                                 "workers that name no type.", "maxLength": 63})

    @validates_schema
    def _gpu_type_needs_gpus(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("gpu_type") is not None and data.get("gpus") == 0:
            raise ValidationError("A job that runs on the CPU (gpus: 0) names no GPU type.", "gpu_type")


class HubModelSchema(StrictSchema):
    """A Hugging Face Hub model, optionally at a revision."""

    hub = PlainString(required=True, validate=validate.Length(min=1, max=512))
    revision = PlainString(validate=SOURCE_REVISION, metadata={"description": "Branch, tag or commit."})

    @validates("hub")
    def _is_hub_name(self, value: str, **_: Any) -> None:
        if not HUB_NAME.match(value) or ".." in value:
            raise ValidationError("Must be a Hub model name such as 'bert-base-uncased' or 'org/name'.")


class PathModelSchema(StrictSchema):
    """A local model folder (``save_pretrained`` output) under a model root."""

    path = PlainString(required=True, validate=validate.Length(min=1, max=4096), metadata={
        "description": "Relative to the first model root (FITJOBS_MODEL_ROOTS), or absolute inside a root."})

    @validates("path")
    def _path_is_plain(self, value: str, **_: Any) -> None:
        try:
            check_path_text(value)
        except PathRefused as exc:
            raise ValidationError(f"Must be a path inside a model root; this one {exc}.") from exc


class JobModelSchema(StrictSchema):
    """The model a succeeded job trained, to continue training it."""

    job = PlainString(required=True, validate=validate.Regexp(JOB_ID, error="Must be a job id (job_...)."))


class WebhookSchema(StrictSchema):
    """Where the job's events are POSTed, signed (Standard Webhooks)."""

    url = fields.String(required=True, validate=validate.Length(min=1, max=MAX_URL_LENGTH), metadata={
        "description": "An http:// or https:// URL, without credentials. Each state change and `evaluation_ready` "
                       "is POSTed to it, signed with the deployment's FITJOBS_WEBHOOK_SECRET, and retried with "
                       "backoff until the receiver answers 2xx. Its host must be allowed "
                       "(FITJOBS_WEBHOOK_ALLOWED_HOSTS) and resolve only to public addresses, or to networks "
                       "FITJOBS_WEBHOOK_ALLOWED_NETWORKS allows; redirects are not followed.",
        "format": "uri"})

    @validates("url")
    def _is_webhook_url(self, value: str, **_: Any) -> None:
        try:
            DestinationPolicy().parse(value)
        except DestinationRefused as exc:
            raise ValidationError(f"The webhook URL {exc}.") from exc


MODEL_SCHEMAS: dict[str, type[Schema]] = {"hub": HubModelSchema, "path": PathModelSchema, "job": JobModelSchema}


class ModelField(fields.Field):
    """A model name or path as a string, or an object saying which kind of source it is."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            if not 1 <= len(value) <= 512:
                raise ValidationError("Length must be between 1 and 512.")
            if CONTROL_CHARACTERS.search(value):
                raise ValidationError(NO_CONTROL_CHARACTERS)
            if value.startswith("/"):
                try:
                    check_path_text(value)
                except PathRefused as exc:
                    raise ValidationError(f"Must be a path inside a model root; this one {exc}.") from exc
                return value
            if not HUB_NAME.match(value) or ".." in value:
                raise ValidationError(
                    "Must be a Hub model name such as 'bert-base-uncased' or 'org/name', "
                    "or an absolute path to a local model folder.")
            return value
        if isinstance(value, dict):
            kinds = [kind for kind in MODEL_SCHEMAS if kind in value]
            if len(kinds) != 1:
                raise ValidationError("An object `model` needs exactly one of `hub`, `path` or `job`.")
            return MODEL_SCHEMAS[kinds[0]]().load(value)
        raise ValidationError("Must be a string or an object with `hub`, `path` or `job`.")

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


# The shapes of a spec's `model`, for the OpenAPI document.
MODEL_VARIANTS: list[dict[str, Any]] = [
    {"type": "string", "minLength": 1, "maxLength": 512},
    {"type": "object", "required": ["hub"], "additionalProperties": False,
     "properties": {"hub": {"type": "string"}, "revision": {"type": "string"}}},
    {"type": "object", "required": ["path"], "additionalProperties": False,
     "properties": {"path": {"type": "string"}}},
    {"type": "object", "required": ["job"], "additionalProperties": False,
     "properties": {"job": {"type": "string"}}}]


class TrainingSpecSchema(StrictSchema):
    """What to fine-tune, on which data, how."""

    model = ModelField(required=True, metadata={
        "description": "A Hub model name, or an absolute path to a local model folder under a model root "
                       "(FITJOBS_MODEL_ROOTS); or an object: `{\"hub\": name, \"revision\": ...}`, "
                       "`{\"path\": ...}`, or `{\"job\": id}` to continue from a succeeded job's model "
                       "(its labels must match the data's unless `num_labels` is set).",
        "oneOf": MODEL_VARIANTS})
    num_labels = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=2, max=100_000),
                                metadata={"description": "Inferred from the training labels when omitted."})
    data = fields.Nested(DataSchema, required=True)
    hyperparameters = fields.Nested(HyperparametersSchema,
                                    load_default=lambda: HyperparametersSchema().load({}))
    resources = fields.Nested(ResourcesSchema, load_default=lambda: {"gpus": None, "gpu_type": None})
    priority = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=-100, max=100),
                              metadata={"description": "Higher runs first; equal priorities run in order."})
    max_attempts = fields.Integer(strict=True, load_default=3, validate=validate.Range(min=1, max=10),
                                  metadata={"description": "Attempts allowed after infrastructure failures."})
    max_runtime_seconds = fields.Integer(strict=True, load_default=86_400,
                                         validate=validate.Range(min=1, max=30 * 86_400),
                                         metadata={"description": "An attempt running longer fails as `timeout`."})
    acceptance = fields.Nested(AcceptanceSchema, load_default=None, allow_none=True, metadata={
        "description": "A bar the selected model must clear: when its `metric` on the validation set is below "
                       "`min`, the job ends failed with code `below_threshold`, and its evaluation report and "
                       "model are still published. null (default): no bar."})
    reuse = fields.Boolean(load_default=False, truthy={True}, falsy={False}, metadata={
        "description": "Reuse instead of retraining: when a job with the same spec (ignoring priority, "
                       "max_attempts, max_runtime_seconds, resources and webhook), the same data content and the same "
                       "model files or revision already succeeded, this job succeeds at once with its result "
                       "and artifacts (`reused_from` names it); otherwise it trains."})
    webhook = fields.Nested(WebhookSchema, allow_none=True, metadata={
        "description": "Signed notifications of this job's events; see GET /v1/jobs/{job_id}/webhook-deliveries. "
                       "Refused (422) where the deployment sets no FITJOBS_WEBHOOK_SECRET. Omitted or null: none."})


class ProgressSchema(Schema):
    epoch = fields.Integer()
    epochs = fields.Integer()
    step = fields.Integer()
    steps_per_epoch = fields.Integer(allow_none=True)
    examples_per_second = fields.Float(allow_none=True, metadata={
        "description": "Training examples per second over this attempt's fit so far."})
    eta_seconds = fields.Float(allow_none=True, metadata={
        "description": "Estimated seconds until the fit ends, validation included."})
    step_seconds = fields.Float(allow_none=True, metadata={
        "description": "Mean seconds per training step over this attempt's fit so far."})


class JobErrorSchema(Schema):
    code = fields.Enum(FailureCode, by_value=True, metadata={
        "type": "string",
        "description": "Why the job failed. below_threshold: the model missed the spec's acceptance threshold; "
                       "its result, report and model are kept. storage_unavailable: the object store "
                       "(FITJOBS_STORAGE_URL) could not be reached or refused access."})
    message = fields.String()
    retryable = fields.Boolean(metadata={"description": "Whether submitting the same spec again may succeed."})


class QueueSchema(Schema):
    position = fields.Integer(metadata={
        "description": "Queued jobs that workers take before this one: those of a higher priority, or of the same "
                       "priority and older, that a live worker can run. 0: it is next."})
    reason = fields.Enum(QueueReason, by_value=True, metadata={
        "description": "Why it waits. waiting_for_gpus: the jobs ahead of it go first, or running jobs hold the "
                       "GPUs (or slots) it needs; next in line with room free, it starts on a worker's next pass. "
                       "reserved: it is next and needs more GPUs than any worker has free; workers hold GPUs for "
                       "it as they free up and start no smaller job meanwhile (no backfill). "
                       "no_worker_large_enough: no live worker has as many GPUs as it needs (of its "
                       "`resources.gpu_type`, when it names one). "
                       "waiting_for_worker: no worker is registered at all; with workers scaled from the queue "
                       "(`fitjobs worker --once`), one is being started for it."})


class JobStatusSchema(Schema):
    """What a job and its list entry both show: where it stands."""

    id = fields.String()
    tenant = fields.String(metadata={"description": "The tenant the job belongs to."})
    state = fields.Enum(JobState, by_value=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime(allow_none=True)
    attempt = fields.Integer()
    priority = fields.Integer()
    cancel_requested = fields.Boolean()
    progress = fields.Nested(ProgressSchema)
    error = fields.Nested(JobErrorSchema, allow_none=True)
    reused_from = fields.String(allow_none=True, metadata={
        "description": "The succeeded job whose result and artifacts this job reused (spec `reuse`); "
                       "null for a job that trains."})


class JobSchema(JobStatusSchema):
    """A job as the API shows it."""

    max_attempts = fields.Integer()
    result = fields.Dict(keys=fields.String(), values=fields.Raw(), allow_none=True, metadata={
        "description": "Once succeeded (and for a job that failed as below_threshold): the final metrics (loss, "
                       "accuracy, val_loss, val_accuracy); which epoch was published and why: best_epoch (from "
                       "1, the best by selection_metric), epochs_trained, stopped_early (boolean), stop_reason "
                       "(why early stopping ended the fit, in words; null when every epoch ran), "
                       "selection_metric; "
                       "evaluation (the evaluation report of the published epoch, as GET "
                       "/v1/jobs/{id}/evaluation serves it); acceptance ({metric, min, value, passed}, when the "
                       "spec set a threshold; value is null where the metric is undefined, which fails it); "
                       "and how the fit ran: padding_efficiency (real tokens / padded tokens), batch_shapes "
                       "(distinct padded batch shapes), train_step_traces, train_step_autograph, precision, "
                       "jit_compile, compute_reason, "
                       "examples_per_second and phases (seconds per phase: queued, startup, data, tokenize, "
                       "model_load, fit, evaluate, saved_model, publish); saved_model ({path, signatures, seconds, "
                       "ids_only_path, reason}: the SavedModel artifact saved_model/1/ for TF Serving, its "
                       "signatures (serving_default over raw strings, serving_ids over token ids), the SavedModel "
                       "without tensorflow-text ops (saved_model_ids/1/, when serving_default has them) and, when "
                       "serving_default is missing, why; see docs/serving.md)."})
    spec = fields.Nested(TrainingSpecSchema)
    queue = fields.Nested(QueueSchema, allow_none=True, metadata={
        "description": "A queued job's place in line and why it waits, in GET /v1/jobs/{job_id}; null once it "
                       "started, and in lists and other answers."})


class JobSummarySchema(JobStatusSchema):
    """A job as lists show it: what it trains and where it stands, without its spec or result."""

    model = ModelField(metadata={"description": "The spec's `model`, as submitted.", "oneOf": MODEL_VARIANTS})


class JobQuerySchema(StrictSchema):
    """What GET /v1/jobs/{job_id} includes beyond the defaults."""

    include = fields.String(validate=validate.OneOf(["records"]), metadata={
        "description": "`records`: the spec's inline rows themselves, instead of their count and SHA-256."})


class IdempotencyHeaderSchema(Schema):
    """Headers of POST /v1/jobs (other headers are ignored)."""

    idempotency_key = PlainString(data_key="Idempotency-Key", validate=validate.Length(min=1, max=255),
                                    metadata={"description": "Repeat a submission safely: the same key and "
                                                             "spec return the first job (200)."})


class PageQuerySchema(StrictSchema):
    """Paging of a list endpoint: page size and the cursor of the page to continue from."""

    limit = QueryInteger(load_default=20, validate=validate.Range(min=1, max=200))
    cursor = PlainString(validate=validate.Length(max=200),
                           metadata={"description": "The `next` value of the previous page."})


class JobListQuerySchema(PageQuerySchema):
    state = fields.Enum(JobState, by_value=True)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSummarySchema))
    next = fields.String(allow_none=True, metadata={"description": "Cursor of the next page; null at the end."})


class EpochMetricsSchema(Schema):
    epoch = fields.Integer()
    loss = fields.Float()
    accuracy = fields.Float()
    macro_f1 = fields.Float(metadata={"description": "Macro F1 on the training batches of the epoch."})
    val_loss = fields.Float()
    val_accuracy = fields.Float()
    val_macro_f1 = fields.Float(metadata={"description": "Macro F1 on the validation set."})
    learning_rate = fields.Float()


class StepMetricsSchema(Schema):
    step = fields.Integer()
    epoch = fields.Integer()
    loss = fields.Float()
    learning_rate = fields.Float(metadata={"description": "The learning rate the step's update used."})


class MetricsSchema(Schema):
    epochs = fields.List(fields.Nested(EpochMetricsSchema))
    steps = fields.List(fields.Nested(StepMetricsSchema))
    phases = fields.Dict(keys=fields.String(), values=fields.Float(), metadata={
        "description": "Seconds each finished phase took: queued, startup, data, tokenize, model_load, fit, "
                       "evaluate, publish (of the latest attempt that ran it)."})


class EventSchema(Schema):
    id = fields.Integer()
    kind = fields.String()
    state = fields.Enum(JobState, by_value=True, allow_none=True)
    message = fields.String()
    created_at = fields.DateTime()
    data = fields.Dict(allow_none=True)


class EventListQuerySchema(StrictSchema):
    after = QueryInteger(load_default=0, validate=validate.Range(min=0, max=MAX_INT64),
                           metadata={"description": "Only events with an id above this one."})


class EventListSchema(Schema):
    events = fields.List(fields.Nested(EventSchema))


class ArtifactSchema(Schema):
    name = fields.String()
    size = fields.Integer()


class ArtifactListSchema(Schema):
    artifacts = fields.List(fields.Nested(ArtifactSchema))


class WebhookDeliverySchema(Schema):
    """One event sent, or being sent, to the job's webhook URL."""

    id = fields.String(metadata={"description": "The `webhook-id` header, the same on every attempt (msg_...)."})
    event_type = fields.String(metadata={
        "description": "`job.queued`, `job.running`, `job.succeeded`, `job.failed`, `job.cancelled` (the state "
                       "the job entered) or `job.evaluation_ready` (GET /v1/jobs/{job_id}/evaluation answers)."})
    state = fields.String(validate=validate.OneOf(["pending", "delivered", "failed"]), metadata={
        "description": "pending: being tried; delivered: the receiver answered 2xx; failed: given up after "
                       "FITJOBS_WEBHOOK_GIVE_UP_SECONDS.", "enum": ["pending", "delivered", "failed"]})
    attempts = fields.Integer(metadata={"description": "Attempts made so far."})
    created_at = fields.DateTime(metadata={"description": "When the event happened."})
    last_attempt_at = fields.DateTime(allow_none=True)
    next_attempt_at = fields.DateTime(allow_none=True, metadata={
        "description": "When it is tried next (pending only)."})
    delivered_at = fields.DateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True, metadata={
        "description": "The HTTP status of the last answer, when there was one."})
    last_error = fields.String(allow_none=True, metadata={
        "description": "Why the last attempt failed: no connection, a timeout, a refused address, a non-2xx "
                       "answer (a redirect is never followed)."})


class WebhookDeliveryListSchema(Schema):
    deliveries = fields.List(fields.Nested(WebhookDeliverySchema))


class ClassScoresSchema(Schema):
    precision = fields.Float()
    recall = fields.Float()
    f1 = fields.Float()
    support = fields.Integer(metadata={"description": "Validation rows of this class."})


class ConfusionMatrixSchema(Schema):
    labels = fields.List(fields.String(), metadata={"description": "Label names in id order."})
    matrix = fields.List(fields.List(fields.Integer()), metadata={
        "description": "Row counts: row i holds the rows whose true label is labels[i], column j those "
                       "predicted as labels[j]."})


class ConfidentErrorSchema(Schema):
    row = fields.Integer(metadata={"description": "Validation row number, from 1, in the validation set's "
                                                  "order (a held-out split's own, shuffled order)."})
    text = fields.String(metadata={"description": "The row's text, cut at 1000 characters."})
    text_pair = fields.String(metadata={"description": "Its pair text; absent for single texts."})
    true_label = fields.String()
    predicted_label = fields.String()
    probability = fields.Float(metadata={"description": "The probability the model gave its wrong label."})


class EvaluationMetricsSchema(Schema):
    """The report's headline numbers under the names `acceptance` and `selection_metric` use."""

    val_accuracy = fields.Float(allow_none=True)
    val_macro_f1 = fields.Float(allow_none=True)
    val_weighted_f1 = fields.Float(allow_none=True)
    val_roc_auc = fields.Float(allow_none=True)
    val_loss = fields.Float(allow_none=True)


class EvaluationSchema(Schema):
    """How the published model scores on the validation set (the file evaluation.json)."""

    rows = fields.Integer(metadata={"description": "Validation rows evaluated."})
    labels = fields.List(fields.String(), metadata={"description": "Label names in id order."})
    accuracy = fields.Float(allow_none=True)
    macro_f1 = fields.Float(allow_none=True, metadata={
        "description": "F1 averaged over the classes, each counting the same whatever its size."})
    weighted_f1 = fields.Float(allow_none=True, metadata={
        "description": "F1 averaged over the classes, each weighted by its rows."})
    macro_precision = fields.Float(allow_none=True)
    macro_recall = fields.Float(allow_none=True)
    per_class = fields.Dict(keys=fields.String(), values=fields.Nested(ClassScoresSchema), metadata={
        "description": "Precision, recall, F1 and support of each label, by label name."})
    confusion_matrix = fields.Nested(ConfusionMatrixSchema)
    roc_auc = fields.Float(allow_none=True, metadata={
        "description": "Area under the ROC curve of the probability of label id 1; two labels only, and null "
                       "when there are more or the validation rows hold only one of them."})
    loss = fields.Float(allow_none=True, metadata={"description": "Cross-entropy of the predicted probabilities "
                                                                 "(unweighted)."})
    most_confident_errors = fields.List(fields.Nested(ConfidentErrorSchema), metadata={
        "description": "Misclassified validation rows (at most 20), the most confidently wrong first."})
    metrics = fields.Nested(EvaluationMetricsSchema)
    epoch = fields.Integer(allow_none=True, metadata={"description": "The evaluated (selected) epoch, from 1."})


class DatasetSchema(Schema):
    """An uploaded dataset."""

    id = fields.String(metadata={"description": "Use as `{\"upload\": id}` in a spec's data."})
    filename = fields.String(metadata={"description": "The name the file was uploaded with."})
    format = fields.String(metadata={"description": "csv, json, jsonl or parquet."})
    size_bytes = fields.Integer()
    sha256 = fields.String(metadata={"description": "SHA-256 of the stored file, hex."})
    rows = fields.Integer()
    columns = fields.List(fields.String())
    created_at = fields.DateTime()
    tenant = fields.String(metadata={"description": "The tenant the dataset belongs to."})


class DatasetListQuerySchema(PageQuerySchema):
    """Paging of the uploaded datasets."""


class DatasetListSchema(Schema):
    datasets = fields.List(fields.Nested(DatasetSchema))
    next = fields.String(allow_none=True, metadata={"description": "Cursor of the next page; null at the end."})


# What `POST /v1/datasets` reads, by the file name's suffix (any case); for the OpenAPI document.
UPLOAD_NAME_PATTERN = (r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f/\\]"
                       r"\.([cC][sS][vV]|[jJ][sS][oO][nN][lL]?|[pP][aA][rR][qQ][uU][eE][tT])$")


class UploadQuerySchema(StrictSchema):
    """Query of a raw-body upload (a multipart upload names its file in the form)."""

    filename = PlainString(validate=[validate.Length(min=1, max=255), validate.Regexp(
        UPLOAD_NAME_PATTERN, error="Must be a file name ending in .csv, .json, .jsonl or .parquet.")], metadata={
        "description": "Name of the uploaded file; its suffix (.csv, .json, .jsonl, .parquet) fixes how it is "
                       "read. Needed for a raw body without a Content-Disposition file name."})


class FindingSchema(Schema):
    """A problem (the job would fail) or a warning (it would not) found by a dry run, and where."""

    code = fields.String(metadata={"description": "For problems, the failure code the job would get "
                                                  "(invalid_data, model_not_found, unsupported_model, "
                                                  "model_load_failed); for warnings, truncation, duplicates "
                                                  "or class_imbalance."})
    check = fields.String(metadata={"description": "Which check found it: missing_column, empty_text, "
                                                   "unknown_label, single_class, file_not_found, ..., "
                                                   "class_weight (a class_weight key that is not a training "
                                                   "label) and acceptance (val_roc_auc for more than two "
                                                   "labels), which POST /v1/jobs refuses with 422."})
    message = fields.String()
    split = fields.String(allow_none=True)
    column = fields.String(allow_none=True)
    row = fields.Integer(allow_none=True, metadata={"description": "Row number, from 1, in the source's order."})
    value = fields.Raw(allow_none=True, metadata={"description": "The offending value."})


class TokenLengthsSchema(Schema):
    p50 = fields.Integer()
    p90 = fields.Integer()
    p99 = fields.Integer()
    max = fields.Integer()
    max_length = fields.Integer()
    truncated_rows = fields.Integer(metadata={"description": "Rows longer than max_length, which are cut."})
    truncated_share = fields.Float()
    measured_rows = fields.Integer(metadata={"description": "Rows measured (a seeded sample of large splits)."})


class SplitReportSchema(Schema):
    rows = fields.Integer()
    labels = fields.Dict(keys=fields.String(), values=fields.Integer(), allow_none=True,
                         metadata={"description": "Rows per label."})
    tokens = fields.Nested(TokenLengthsSchema, allow_none=True,
                           metadata={"description": "Token lengths with special tokens, before truncation."})


class DuplicatesSchema(Schema):
    rows = fields.Integer(metadata={"description": "Validation rows whose text also occurs in the training rows."})
    share = fields.Float()
    first_rows = fields.List(fields.Integer(), metadata={"description": "Their first validation row numbers."})


class ModelReportSchema(Schema):
    source = fields.String(metadata={"description": "hub, local or job."})
    name = fields.String()
    model_type = fields.String()
    tokenizer = fields.String()
    max_position_embeddings = fields.Integer(allow_none=True)


class DryRunReportSchema(Schema):
    """What a job on this spec would train on, and what would go wrong."""

    valid = fields.Boolean(metadata={"description": "True when there are no problems."})
    num_labels = fields.Integer(allow_none=True)
    labels = fields.List(fields.String(), allow_none=True, metadata={"description": "Label names in id order."})
    model = fields.Nested(ModelReportSchema, allow_none=True)
    splits = fields.Dict(keys=fields.String(), values=fields.Nested(SplitReportSchema))
    duplicates = fields.Nested(DuplicatesSchema, allow_none=True)
    steps_per_epoch = fields.Integer(allow_none=True)
    epochs = fields.Integer()
    problems = fields.List(fields.Nested(FindingSchema))
    warnings = fields.List(fields.Nested(FindingSchema))
    seconds = fields.Float(metadata={"description": "How long the checks took."})


class HealthSchema(Schema):
    status = fields.String()


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()))
    request_id = fields.String(metadata={
        "description": "The id of the request this answers (its `X-Request-ID`); the logs name it too."})
    # Extension members (RFC 9457 section 3.2) that some answers add.
    retryable = fields.Boolean(metadata={"description": "503: whether the same request may succeed later."})
    job_id = fields.String(metadata={"description": "409 on an Idempotency-Key: the job the key names."})
    jobs = fields.List(fields.String(), metadata={
        "description": "409 on a dataset delete: the queued or running jobs that read it."})
    state = fields.String(metadata={"description": "409 on a job: the state it is in."})
    role = fields.String(metadata={"description": "403: the role the request needs."})
    quota = fields.String(metadata={"description": "429: the quota or rate limit reached."})
    limit = fields.Integer(metadata={"description": "429: that quota's limit."})
    used = fields.Integer(metadata={"description": "429: how much of it is in use."})


class DryRunProblemSchema(ProblemSchema):
    """Problem details of a dry run that found problems; ``report`` is the whole report."""

    report = fields.Nested(DryRunReportSchema)


class QuotaUseSchema(Schema):
    """One quota of a tenant: its limit and what the tenant uses of it now."""

    limit = fields.Integer(metadata={"description": "0: no limit."})
    used = fields.Integer(allow_none=True, metadata={
        "description": "In use now; for requests_per_minute, requests in the current minute (this one "
                       "included), null without a limit."})


class TenantQuotasSchema(Schema):
    active_jobs = fields.Nested(QuotaUseSchema, metadata={"description": "Queued plus running jobs."})
    gpus = fields.Nested(QuotaUseSchema, metadata={
        "description": "GPUs requested by queued plus running jobs; a job without `resources.gpus` counts one."})
    upload_bytes = fields.Nested(QuotaUseSchema, metadata={"description": "Bytes of uploaded datasets stored."})
    requests_per_minute = fields.Nested(QuotaUseSchema, metadata={"description": "Requests to /v1 per minute."})


class TenantSchema(Schema):
    """The caller's tenant: its name, roles, quotas and their use."""

    name = fields.String()
    roles = fields.List(fields.String(), metadata={"description": "read, submit and/or admin."})
    quotas = fields.Nested(TenantQuotasSchema)


MAX_PREDICTION_TEXTS = 64
MAX_PREDICTION_TEXT_CHARS = 100_000
PredictionText = fields.String(validate=validate.Length(max=MAX_PREDICTION_TEXT_CHARS))


class PredictionRequestSchema(StrictSchema):
    """Texts (or text pairs) to classify with a succeeded job's model: one of the two fields, 1 to 64 items."""

    texts = fields.List(PredictionText, validate=validate.Length(min=1, max=MAX_PREDICTION_TEXTS), metadata={
        "description": f"1 to {MAX_PREDICTION_TEXTS} texts, for a model trained without a text pair column."})
    text_pairs = fields.List(
        fields.List(PredictionText, validate=validate.Length(equal=2)),
        validate=validate.Length(min=1, max=MAX_PREDICTION_TEXTS), metadata={
            "description": f"1 to {MAX_PREDICTION_TEXTS} `[text, text_pair]` pairs, for a model trained with "
                           "`data.text_pair_column`."})

    @validates_schema
    def one_of_texts_or_pairs(self, data: dict[str, Any], **_: Any) -> None:
        """Exactly one of ``texts`` and ``text_pairs``."""
        if ("texts" in data) == ("text_pairs" in data):
            message = "Send either `texts` or `text_pairs`, not both." if "texts" in data else \
                "Send `texts` (a list of strings) or `text_pairs` (a list of [text, text_pair])."
            raise ValidationError({"texts": [message], "text_pairs": [message]})


class PredictionSchema(Schema):
    """The model's answer for one text."""

    label = fields.String(metadata={"description": "The most probable label's name."})
    probability = fields.Float(metadata={"description": "That label's probability."})
    probabilities = fields.Dict(keys=fields.String(), values=fields.Float(),
                                metadata={"description": "Every label's probability (softmax of the logits, float32), "
                                                         "by label name."})


class PredictionTimingSchema(Schema):
    """Where a prediction request's time went, in milliseconds."""

    load_wait_ms = fields.Float(metadata={"description": "Finding the model: its load when cold, or waiting for "
                                                         "another request's load of it."})
    tokenize_ms = fields.Float()
    inference_ms = fields.Float()
    server_ms = fields.Float(metadata={"description": "Everything the predict process did."})
    total_ms = fields.Float(metadata={"description": "The whole request in the API worker, the above included."})


class PredictionListSchema(Schema):
    """Predictions for every text of a request, in order, and what they cost."""

    job_id = fields.String()
    labels = fields.List(fields.String(), metadata={"description": "The model's label names, by label id."})
    predictions = fields.List(fields.Nested(PredictionSchema))
    model_load_ms = fields.Float(metadata={
        "description": "0 when the model was already loaded; otherwise the time this request spent loading it."})
    timing = fields.Nested(PredictionTimingSchema)


class BatchPredictionSpecSchema(StrictSchema):
    """A batch prediction: a succeeded training job's model, run over every row of a data set."""

    job = PlainString(required=True, validate=validate.Regexp(JOB_ID, error="Must be a job id (job_...)."),
                      metadata={"description": "The succeeded training job whose model predicts."})
    data = fields.Nested(TrainSourceSchema, required=True, metadata={
        "description": "Where the rows come from: any source a training spec's `data.train` takes (`path`, "
                       "`url`, `records`, `upload`, `dataset`). Labels, if the rows have them, are ignored."})
    text_column = PlainString(load_default="text", validate=validate.Length(min=1, max=256))
    text_pair_column = PlainString(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    batch_size = fields.Integer(strict=True, load_default=64, validate=validate.Range(min=1, max=1024),
                                metadata={"description": "Rows per forward pass; rows are grouped by length."})
    max_length = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=8, max=MAX_MAX_LENGTH),
                                metadata={"description": "Tokens per text after truncation; omitted or null: "
                                                         "the training job's own max_length."})
    priority = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=-100, max=100),
                              metadata={"description": "Higher runs first; prediction and training jobs share "
                                                       "one queue."})
    max_attempts = fields.Integer(strict=True, load_default=3, validate=validate.Range(min=1, max=10),
                                  metadata={"description": "Attempts allowed after infrastructure failures; "
                                                           "a later attempt goes on after the last row written."})
    max_runtime_seconds = fields.Integer(strict=True, load_default=86_400,
                                         validate=validate.Range(min=1, max=30 * 86_400),
                                         metadata={"description": "An attempt running longer fails as "
                                                                  "`timeout`."})


class BatchPredictionSchema(JobStatusSchema):
    """A batch prediction job as the API shows it; its events, logs and artifacts are under /v1/jobs/{id}/."""

    max_attempts = fields.Integer()
    spec = fields.Nested(BatchPredictionSpecSchema)
    result = fields.Dict(keys=fields.String(), values=fields.Raw(), allow_none=True, metadata={
        "description": "Once succeeded: rows, output (the artifact `predictions.jsonl`: one JSON object a row, "
                       "in the data's order, with row (from 0), label, probability and probabilities by label), "
                       "model_job, labels, examples_per_second, resumed_from_row (the row a later attempt "
                       "went on from; 0 when one attempt did it all), peak_rss_bytes of the process, and "
                       "phases (seconds)."})
    output_url = fields.String(allow_none=True, metadata={
        "description": "Where to download predictions.jsonl once the job succeeded; null before."})


class BatchPredictionSummarySchema(JobStatusSchema):
    """A prediction job as lists show it: where it stands, without its spec or result."""

    output_url = fields.String(allow_none=True)


class BatchPredictionListSchema(Schema):
    predictions = fields.List(fields.Nested(BatchPredictionSummarySchema))
    next = fields.String(allow_none=True, metadata={"description": "Cursor of the next page; null at the end."})
