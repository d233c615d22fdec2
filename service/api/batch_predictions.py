"""Batch prediction jobs: a succeeded training job's model run over a data set, queued like training.

A prediction job is a job of kind ``predict`` in the same queue: supervisors claim, lease,
retry, cancel and drain it as they do training jobs, and its events, logs and artifacts are
served by the job routes (/v1/jobs/{id}/events, /logs, /artifacts/predictions.jsonl).
"""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE

from service.api.auth import current_tenant, listed_tenant
from service.api.context import current_store
from service.api.jobs import CURSOR_KIND, job_document, load_job, request_cancel, require_json_body
from service.api.paging import decode_cursor, encode_cursor
from service.api.sources import job_model_errors, source_errors
from service.api.tenant import quota_exceeded
from service.errors import Conflict, NotFound, ValidationFailed, summarize_errors
from service.jobs import Job, JobState
from service.schemas import (
    BatchPredictionListSchema,
    BatchPredictionSchema,
    BatchPredictionSpecSchema,
    IdempotencyHeaderSchema,
    JobListQuerySchema,
    ProblemSchema,
)
from service.store import JobNotFound
from service.store.dataset_store import DatasetNotFound
from service.store.job_store import IdempotencyConflict
from service.tenants import QuotaReached

KIND = "predict"
OUTPUT = "predictions.jsonl"

blp = Blueprint("batch_predictions", __name__, url_prefix="/v1", description="Batch prediction jobs.")


def prediction_document(job: Job) -> dict[str, Any]:
    """The API representation of a prediction job, ready for BatchPredictionSchema."""
    document = job_document(job)
    document["output_url"] = (f"/v1/jobs/{job.id}/artifacts/{OUTPUT}"
                              if job.state is JobState.SUCCEEDED else None)
    return document


def load_prediction(job_id: str) -> Job:
    """The caller's prediction job with this id, or a 404 problem (also for a training job's id)."""
    job = load_job(job_id)
    if job.kind != KIND:
        raise NotFound(f"No prediction job has the id {job_id!r}; it is a training job (GET /v1/jobs/{job_id}).")
    return job


def check_prediction_spec(spec: dict[str, Any]) -> None:
    """Refuse (422, keyed by field) a spec whose job has no usable model or whose data cannot be read here."""
    errors: dict[str, list[str]] = {}
    for field, message in job_model_errors(spec["job"], "job", "predicted with"):
        errors.setdefault(field, []).append(message)
    for field, message in source_errors(spec["data"]):
        errors.setdefault(f"data.{field}", []).append(message)
    if errors:
        raise ValidationFailed(summarize_errors(errors), errors=errors)


@blp.route("/predictions")
class Predictions(MethodView):
    @blp.arguments(JobListQuerySchema, location="query")
    @blp.response(200, BatchPredictionListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List prediction jobs, newest first, optionally of one state; follow `next` for more."""
        before = decode_cursor(CURSOR_KIND, query["cursor"]) if "cursor" in query else None
        page, next_seq = current_store().list_jobs(state=query.get("state"), limit=query["limit"], before_seq=before,
                                                   tenant=listed_tenant(), kind=KIND)
        return {"predictions": [prediction_document(job) for job in page],
                "next": encode_cursor(CURSOR_KIND, next_seq) if next_seq is not None else None}

    @require_json_body
    @blp.arguments(IdempotencyHeaderSchema, location="headers", unknown=EXCLUDE)
    @blp.arguments(BatchPredictionSpecSchema)
    @blp.response(201, BatchPredictionSchema)
    @blp.alt_response(200, schema=BatchPredictionSchema, description="An earlier submission with the same "
                                                                "Idempotency-Key.")
    @blp.alt_response(409, schema=ProblemSchema, description="Idempotency-Key reused with another spec.")
    @blp.alt_response(429, schema=ProblemSchema, description="The tenant is at its active_jobs quota.")
    def post(self, headers: dict[str, Any], spec: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Queue a batch prediction: the model of succeeded job `job` over every row of `data`.

        It runs like a training job (same queue, leases, retries, cancel) and writes
        `predictions.jsonl`, one JSON object a row in the data's order, published as the job's
        artifact (`output_url` once succeeded). Rows stream through in chunks, so large sets
        never sit in memory; a retried attempt goes on after the last row written.
        """
        check_prediction_spec(spec)
        if spec["max_length"] is None:
            trained = current_store().get_job(spec["job"])
            spec = {**spec, "max_length": trained.spec["hyperparameters"]["max_length"]}
        tenant = current_tenant()
        key = headers.get("idempotency_key")
        upload = spec["data"].get("upload")
        try:
            job, created = current_store().create_job(
                spec, idempotency_key=key, priority=spec["priority"], max_attempts=spec["max_attempts"],
                max_runtime_seconds=spec["max_runtime_seconds"], tenant=tenant.name, quotas=tenant.quotas,
                uploads=[upload] if upload else [], parent=spec["job"], kind=KIND)
        except QuotaReached as exc:
            raise quota_exceeded(exc) from exc
        except JobNotFound as exc:
            message = f"No job has the id {spec['job']!r}."
            raise ValidationFailed(f"job: {message}", errors={"job": [message]}) from exc
        except DatasetNotFound as exc:
            message = f"No uploaded dataset has the id {exc.args[0]!r}."
            raise ValidationFailed(f"data.upload: {message}", errors={"data.upload": [message]}) from exc
        except IdempotencyConflict as exc:
            raise Conflict(f"Idempotency-Key {key!r} was already used for job {exc.job_id} with a "
                           "different spec; use a new key for a new job.", extra={"job_id": exc.job_id}) from exc
        return prediction_document(job), 201 if created else 200, {"Location": f"/v1/predictions/{job.id}"}


@blp.route("/predictions/<job_id>")
class PredictionResource(MethodView):
    @blp.response(200, BatchPredictionSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """A prediction job's state, progress (rows done as steps of 2,048 rows), error or result."""
        return prediction_document(load_prediction(job_id))


@blp.route("/predictions/<job_id>/cancel")
class PredictionCancel(MethodView):
    @blp.response(200, BatchPredictionSchema)
    def post(self, job_id: str) -> dict[str, Any]:
        """Cancel a prediction job: a queued one never starts, a running one stops after its current chunk."""
        load_prediction(job_id)
        return prediction_document(request_cancel(job_id))
