"""Jobs: create, list, read, cancel; their metrics, events, trainer logs and webhook deliveries."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import EXCLUDE

from service.api.auth import current_tenant, listed_tenant, visible
from service.api.context import current_event_streams, current_settings, current_store
from service.api.event_streams import open_stream, stream_frames
from service.api.paging import MAX_SEQ, decode_cursor, encode_cursor
from service.api.sources import (
    check_spec_sources,
    check_unavailable,
    current_check_runner,
    current_dataset_store,
    current_locations,
)
from service.api.tenant import quota_exceeded
from service.artifacts import published_artifacts
from service.check_runner import CheckBusy, CheckFailed, CheckLimitExceeded
from service.errors import (
    BadRequest,
    Conflict,
    DryRunFailed,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
    ValidationFailed,
    summarize_errors,
)
from service.fingerprint import spec_fingerprint
from service.jobs import PHASE_METRIC, FailureCode, Job, JobState, MetricPoint, QueuePlace, Worker, place_in_queue
from service.locations import fetch_inputs, remove_job_files, trainer_log_key
from service.schemas import (
    DryRunProblemSchema,
    DryRunReportSchema,
    EventListQuerySchema,
    EventListSchema,
    IdempotencyHeaderSchema,
    JobListQuerySchema,
    JobListSchema,
    JobQuerySchema,
    JobSchema,
    MetricsSchema,
    ProblemSchema,
    TrainingSpecSchema,
    WebhookDeliveryListSchema,
)
from service.storage import StorageKeyRefused
from service.store import InvalidTransition, JobNotFound
from service.store.dataset_store import DatasetNotFound
from service.store.job_store import IdempotencyConflict, JobInUse, utcnow
from service.store.webhook_store import WebhookStore
from service.tenants import QuotaReached
from service.uploads import UploadedDataset
from service.webhooks.destinations import DestinationRefused

# The prefix stops at /v1 so that the dry run can live at /v1/jobs:validate (a custom method).
CURSOR_KIND = "seq"  # the prefix inside this list's cursors

blp = Blueprint("jobs", __name__, url_prefix="/v1", description="Training jobs.")
log = logging.getLogger(__name__)


def require_json_body(view: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse bodies that are not JSON, or empty, before any field is validated."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not request.is_json:
            raise UnsupportedMediaType(
                f"Send the training spec as application/json, not {request.mimetype or 'no content type'}.")
        if not request.get_data(cache=True):
            raise BadRequest("The request body is empty; send a JSON training spec.")
        return view(*args, **kwargs)

    return wrapper


def load_job(job_id: str) -> Job:
    """The caller's job with this id, or a 404 problem; another tenant's job is missing alike."""
    try:
        job = current_store().get_job(job_id)
    except JobNotFound as exc:
        raise NotFound(f"No job has the id {job_id!r}.") from exc
    if not visible(job.tenant):
        raise NotFound(f"No job has the id {job_id!r}.")
    return job


def records_digest(records: list[dict[str, Any]]) -> str:
    """SHA-256 (hex) of inline rows as canonical JSON: sorted keys, no spaces, UTF-8."""
    canonical = json.dumps(records, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_document(spec: dict[str, Any], *, include_records: bool = False) -> dict[str, Any]:
    """A stored spec as the API shows it: inline rows as their count and digest, unless included."""
    data = spec.get("data")
    if include_records or not isinstance(data, dict):
        return spec
    shown = dict(data)
    for role in ("train", "validation"):
        source = data.get(role)
        if isinstance(source, dict) and isinstance(source.get("records"), list):
            rest = {key: value for key, value in source.items() if key != "records"}
            shown[role] = {**rest, "records_count": len(source["records"]),
                           "records_sha256": records_digest(source["records"])}
    return {**spec, "data": shown}


def job_error(job: Job) -> dict[str, Any] | None:
    """A job's error for JobErrorSchema, which dumps the failure code as a FailureCode member."""
    return {**asdict(job.error), "code": FailureCode(job.error.code)} if job.error else None


def job_document(job: Job, queue: QueuePlace | None = None, *, include_records: bool = False) -> dict[str, Any]:
    """The API representation of a job, ready for JobSchema; ``queue`` is its place while queued."""
    document = asdict(job)
    document["spec"] = spec_document(job.spec, include_records=include_records)
    document["error"] = job_error(job)
    document["queue"] = asdict(queue) if queue is not None else None
    return document


def job_summary(job: Job) -> dict[str, Any]:
    """A job as lists show it, ready for JobSummarySchema: no spec, no result."""
    return {"id": job.id, "state": job.state, "model": job.spec.get("model"), "created_at": job.created_at,
            "started_at": job.started_at, "finished_at": job.finished_at, "updated_at": job.updated_at,
            "attempt": job.attempt, "priority": job.priority, "cancel_requested": job.cancel_requested,
            "progress": asdict(job.progress), "error": job_error(job), "reused_from": job.reused_from,
            "tenant": job.tenant}


def registered_workers() -> list[Worker]:
    """Workers that heartbeated recently enough to count as registered."""
    window = max(300.0, 3 * current_settings().lease_seconds)
    return current_store().live_workers(since=utcnow() - timedelta(seconds=window))


def queue_place(job: Job) -> QueuePlace | None:
    """A queued job's position among the jobs workers take before it, and why it waits; None once it left."""
    if job.state is not JobState.QUEUED:
        return None
    store = current_store()
    workers = registered_workers()
    largest = max((worker.gpus for worker in workers), default=0)
    return place_in_queue(job, store.count_queued_ahead(job, largest), workers, store.running_gpu_requests())


def check_gpus_available(gpus: int | None, gpu_type: str | None = None) -> None:
    """Refuse a GPU request the deployment never serves.

    With FITJOBS_GPU_SIZES, any count it does not list; without, a count larger than every
    registered worker's GPUs. While no worker is registered, a job waits for one. With
    FITJOBS_GPU_TYPES, a GPU type it does not list.
    """
    types = current_settings().gpu_types
    if gpu_type is not None and types and gpu_type not in types:
        message = f"This deployment offers GPU types {', '.join(types)}, not {gpu_type!r} (FITJOBS_GPU_TYPES)."
        raise ValidationFailed(f"resources.gpu_type: {message}", errors={"resources.gpu_type": [message]})
    if not gpus:
        return
    offered = current_settings().gpu_sizes
    if offered:
        if gpus not in offered:
            message = (f"This deployment runs jobs of {', '.join(map(str, offered))} GPU(s), "
                       f"not {gpus} (FITJOBS_GPU_SIZES).")
            raise ValidationFailed(f"resources.gpus: {message}", errors={"resources.gpus": [message]})
        return
    live = registered_workers()
    largest = max((worker.gpus for worker in live), default=0)
    if live and gpus > largest:
        message = f"No registered worker has {gpus} GPU(s); the largest has {largest}."
        raise ValidationFailed(f"resources.gpus: {message}", errors={"resources.gpus": [message]})


def check_webhook(spec: dict[str, Any]) -> None:
    """Refuse (422) a webhook where no secret signs them, or whose URL leads to a host or address not allowed.

    The host is resolved here as the sender will resolve it; the sender checks again at every attempt.
    """
    webhook = spec.get("webhook")
    if webhook is None:
        return
    settings = current_settings()
    if not settings.webhook_secret:
        message = "This deployment sends no webhooks: FITJOBS_WEBHOOK_SECRET is not set."
        raise ValidationFailed(f"webhook: {message}", errors={"webhook": [message]})
    try:
        settings.webhook_policy.check(webhook["url"])
    except DestinationRefused as exc:
        message = f"The webhook URL {exc}."
        raise ValidationFailed(f"webhook.url: {message}", errors={"webhook.url": [message]}) from exc


def job_fingerprint(spec: dict[str, Any]) -> str | None:
    """What a loaded spec trains, hashed; None when its data or model cannot be read now."""
    datasets = current_dataset_store()

    def lookup_upload(dataset_id: str) -> UploadedDataset | None:
        try:
            return datasets.get(dataset_id)
        except DatasetNotFound:
            return None

    return spec_fingerprint(spec, current_locations(), lookup_upload)


def reusable_job(fingerprint: str | None) -> Job | None:
    """The caller's succeeded job a spec with ``reuse`` can take its result from, if one trained the same thing."""
    if fingerprint is None:
        return None
    source = current_store().find_reusable_job(fingerprint, current_tenant().name)
    # Without its published files there is nothing to share; the new job trains instead.
    if source is None or published_artifacts(current_settings().storage, source.id) is None:
        return None
    return source


# Dry-run checks of spec settings against the training labels, and the spec field each one is about;
# POST /v1/jobs refuses a spec they find fault with (other problems fail the job when it runs).
LABEL_SETTING_CHECKS = {"class_weight": "hyperparameters.class_weight", "acceptance": "acceptance.metric"}


def names_labels(spec: dict[str, Any]) -> bool:
    """Whether a loaded spec has settings that only the training labels can check."""
    acceptance = spec["acceptance"]
    return (isinstance(spec["hyperparameters"]["class_weight"], dict)
            or (acceptance is not None and acceptance["metric"] == "val_roc_auc"))


def check_label_settings(spec: dict[str, Any]) -> None:
    """Refuse (422) `class_weight` keys that are not training labels and val_roc_auc for more than 2 labels.

    Reads the data through a dry run, so only specs that have such settings pay for it.
    """
    if not names_labels(spec):
        return
    errors: dict[str, list[str]] = {}
    for problem in dry_run(spec)["problems"]:
        field = LABEL_SETTING_CHECKS.get(problem["check"])
        if field is not None:
            errors.setdefault(field, []).append(problem["message"])
    if errors:
        raise ValidationFailed(summarize_errors(errors), errors=errors)


def artifact_owner(job: Job) -> str:
    """The job whose published files are this job's: its reuse source, or itself."""
    return job.reused_from or job.id


def group_metrics(points: list[MetricPoint]) -> dict[str, Any]:
    """Per-epoch rows (one dict per epoch), per-step rows and phase durations from raw metric points."""
    epochs: dict[int, dict[str, Any]] = {}
    steps: dict[int, dict[str, Any]] = {}
    phases: dict[str, float] = {}
    for point in points:
        if point.name.startswith(PHASE_METRIC):
            phases[point.name.removeprefix(PHASE_METRIC)] = point.value
        elif point.step is None:
            epochs.setdefault(point.epoch, {"epoch": point.epoch})[point.name] = point.value
        else:
            steps.setdefault(point.step, {"step": point.step, "epoch": point.epoch})[point.name] = point.value
    return {"epochs": [epochs[k] for k in sorted(epochs)], "steps": [steps[k] for k in sorted(steps)],
            "phases": phases}


@blp.route("/jobs")
class Jobs(MethodView):
    @blp.arguments(JobListQuerySchema, location="query")
    @blp.response(200, JobListSchema)
    def get(self, query: dict[str, Any]) -> dict[str, Any]:
        """List jobs, newest first, optionally of one state; follow `next` for more.

        Each job is a summary: its model, state, progress, times and error; GET /v1/jobs/{job_id}
        has its spec and result.
        """
        before = decode_cursor(CURSOR_KIND, query["cursor"]) if "cursor" in query else None
        page, next_seq = current_store().list_jobs(
            state=query.get("state"), limit=query["limit"], before_seq=before, tenant=listed_tenant(), summary=True,
            kind="train")
        return {"jobs": [job_summary(job) for job in page],
                "next": encode_cursor(CURSOR_KIND, next_seq) if next_seq is not None else None}

    @require_json_body
    @blp.arguments(IdempotencyHeaderSchema, location="headers", unknown=EXCLUDE)
    @blp.arguments(TrainingSpecSchema)
    @blp.response(201, JobSchema)
    @blp.alt_response(200, schema=JobSchema, description="An earlier submission with the same Idempotency-Key.")
    @blp.alt_response(409, schema=ProblemSchema, description="Idempotency-Key reused with another spec.")
    @blp.alt_response(429, schema=ProblemSchema,
                      description="The tenant is at its active_jobs or gpus quota (`quota` names it); retry "
                                  "after `Retry-After` seconds.")
    def post(self, headers: dict[str, Any], spec: dict[str, Any]) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Queue a training job; answers with the job and its URL in `Location`.

        With `reuse: true` and an identical job that succeeded, the job is created succeeded at
        once with that job's result and artifacts, and `reused_from` names it. A spec whose
        `class_weight` names labels, or whose `acceptance` metric is val_roc_auc, is checked
        against the training labels first (a dry run reads the data): a label the data lacks,
        or val_roc_auc for more than two labels, is a 422.
        """
        key = headers.get("idempotency_key")
        tenant = current_tenant()
        check_spec_sources(spec)
        check_gpus_available(spec["resources"]["gpus"], spec["resources"]["gpu_type"])
        check_webhook(spec)
        check_label_settings(spec)
        # Every job gets a fingerprint, so that any later spec with `reuse` can find it.
        fingerprint = job_fingerprint(spec)
        source = reusable_job(fingerprint) if spec["reuse"] else None
        uploads = {spec["data"][role]["upload"]: role for role in ("train", "validation")
                   if "upload" in spec["data"][role]}
        parent = spec["model"]["job"] if isinstance(spec["model"], dict) and "job" in spec["model"] else None
        try:
            job, created = current_store().create_job(
                spec, idempotency_key=key, priority=spec["priority"], max_attempts=spec["max_attempts"],
                max_runtime_seconds=spec["max_runtime_seconds"], gpus=spec["resources"]["gpus"],
                gpu_type=spec["resources"]["gpu_type"],
                fingerprint=fingerprint, reuse_of=source, tenant=tenant.name, quotas=tenant.quotas,
                uploads=list(uploads), parent=parent)
        except QuotaReached as exc:
            raise quota_exceeded(exc) from exc
        except JobNotFound as exc:
            # The job to continue from was deleted since check_spec_sources saw it.
            message = f"No job has the id {parent!r}."
            raise ValidationFailed(f"model.job: {message}", errors={"model.job": [message]}) from exc
        except DatasetNotFound as exc:
            # Deleted since check_spec_sources saw it.
            dataset_id = exc.args[0]
            message = f"No uploaded dataset has the id {dataset_id!r}."
            field = f"data.{uploads.get(dataset_id, 'train')}.upload"
            raise ValidationFailed(f"{field}: {message}", errors={field: [message]}) from exc
        except IdempotencyConflict as exc:
            raise Conflict(f"Idempotency-Key {key!r} was already used for job {exc.job_id} with a "
                           "different spec; use a new key for a new job.", extra={"job_id": exc.job_id}) from exc
        return job_document(job), 201 if created else 200, {"Location": f"/v1/jobs/{job.id}"}


MAX_PROBLEMS_IN_DETAIL = 3


def dry_run(spec: dict[str, Any]) -> dict[str, Any]:
    """The dry-run report of a loaded spec, from the check server, within FITJOBS_CHECK_TIMEOUT."""
    settings = current_settings()
    timeout = settings.check_timeout
    # With an object store, the uploads and job model the spec reads are copied to this node first.
    try:
        fetch_inputs(spec, settings.storage, current_locations())
    except OSError as exc:
        raise ServiceUnavailable(f"The dry run could not read the spec's stored inputs: {exc}.",
                                 extra={"retryable": True}) from exc
    try:
        return current_check_runner().run("dry_run", {"spec": spec, "locations": current_locations().to_dict()},
                                          timeout)
    except CheckLimitExceeded as exc:
        message = f"The dry run could not finish within its limits: {exc}."
        raise ValidationFailed(message, errors={"data": [message]}) from exc
    except CheckBusy as exc:
        raise ServiceUnavailable(f"The dry run could not start: {exc}; try again later.", extra={"retryable": True},
                                 headers={"Retry-After": str(exc.retry_after)}) from exc
    except CheckFailed as exc:
        hint = (" The data may be too large to check quickly; a job checks it again as its first phase."
                if exc.timed_out else "")
        raise check_unavailable(exc, "The dry run could not finish", hint) from exc


@blp.route("/jobs:validate")
class JobValidation(MethodView):
    @require_json_body
    @blp.arguments(TrainingSpecSchema)
    @blp.response(200, DryRunReportSchema)
    @blp.alt_response(422, schema=DryRunProblemSchema,
                      description="The spec has problems: invalid fields (`errors`), or problems in its data or "
                                  "model (`report` lists them, with the statistics).")
    def post(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Dry run: check a spec as a job would before training, and report on its data. Trains nothing.

        Takes the same body as POST /v1/jobs. Loads the data and the model's tokenizer and config
        (no weights) and reports rows and labels per split, token lengths and truncation at
        max_length, validation rows duplicating training rows, a rare class, steps per epoch,
        problems (the job would fail; answered with 422) and warnings (it would not).
        """
        check_spec_sources(spec)
        check_gpus_available(spec["resources"]["gpus"], spec["resources"]["gpu_type"])
        check_webhook(spec)
        report = dry_run(spec)
        problems = report["problems"]
        if problems:
            listed = "; ".join(problem["message"] for problem in problems[:MAX_PROBLEMS_IN_DETAIL])
            extra = len(problems) - MAX_PROBLEMS_IN_DETAIL
            more = f" (and {extra} more)" if extra > 0 else ""
            raise DryRunFailed(f"{len(problems)} problem(s): {listed}{more}.",
                               extra={"report": DryRunReportSchema().dump(report)})
        return report


@blp.route("/jobs/<job_id>")
class JobResource(MethodView):
    @blp.arguments(JobQuerySchema, location="query")
    @blp.response(200, JobSchema)
    def get(self, query: dict[str, Any], job_id: str) -> dict[str, Any]:
        """A job's state, progress, timestamps, error or result; while queued, its place in line and why it waits.

        Inline `records` of its spec show as `records_count` and `records_sha256`; `?include=records`
        returns the rows themselves.
        """
        job = load_job(job_id)
        if job.kind != "train":
            raise NotFound(f"No training job has the id {job_id!r}; it is a prediction job "
                           f"(GET /v1/predictions/{job_id}).")
        return job_document(job, queue_place(job), include_records=query.get("include") == "records")


    @blp.response(204)
    @blp.alt_response(409, schema=ProblemSchema,
                      description="The job is queued or running (`state`; cancel it first), or other jobs still "
                                  "need its files (`jobs`): queued or running jobs that continue from its model "
                                  "or predict with it, or jobs that reused its result.")
    def delete(self, job_id: str) -> Response:
        """Delete a finished job and everything of it: record, events, metrics, artifacts, checkpoints, logs.

        Only a succeeded, failed or cancelled job can be deleted. It is refused while a queued or
        running job continues from its model, and while a job that reused its result remains
        (that job serves the same files): delete those first. Afterwards the job is a 404.
        """
        load_job(job_id)
        try:
            job = current_store().delete_job(job_id)
        except JobNotFound as exc:
            raise NotFound(f"No job has the id {job_id!r}.") from exc
        except JobInUse as exc:
            raise delete_refused(exc) from exc
        settings = current_settings()
        try:
            remove_job_files(settings.storage, job.id, jobs_dir=settings.jobs_dir,
                             artifacts_dir=settings.artifacts_dir, cache_dir=settings.cache_dir)
        except OSError as exc:
            # The job is gone from the API; its files are swept by the next retention pass.
            log.warning("job %s deleted, but its files could not all be removed yet: %s", job.id, exc)
        log.info("deleted job %s (%s)", job.id, job.state.value)
        return Response(status=204)


def delete_refused(exc: JobInUse) -> Conflict:
    """The 409 problem of a delete that JobStore.delete_job refused."""
    job = exc.job
    if not job.state.is_terminal:
        return Conflict(f"Job {job.id} is {job.state.value}; cancel it and wait until it ends before deleting it.",
                        extra={"state": job.state.value})
    if exc.dependents:
        return Conflict(f"Job {job.id} cannot be deleted while queued or running jobs continue from its model "
                        f"or predict with it: {', '.join(exc.dependents)}; cancel them or wait until they end.",
                        extra={"state": job.state.value, "jobs": exc.dependents})
    return Conflict(f"Job {job.id} cannot be deleted while jobs that reused its result remain: "
                    f"{', '.join(exc.reusers)}; delete them first.",
                    extra={"state": job.state.value, "jobs": exc.reusers})


@blp.route("/jobs/<job_id>/cancel")
class JobCancel(MethodView):
    @blp.response(200, JobSchema)
    def post(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one never starts, a running one is stopped. Idempotent."""
        load_job(job_id)
        return job_document(request_cancel(job_id))


def request_cancel(job_id: str) -> Job:
    """Ask for the job's end (see JobStore.request_cancel); 409 once it has ended."""
    try:
        return current_store().request_cancel(job_id)
    except InvalidTransition as exc:
        raise Conflict(f"Job {job_id} already {exc.job.state.value}; there is nothing to cancel.",
                       extra={"state": exc.job.state.value}) from exc


@blp.route("/jobs/<job_id>/metrics")
class JobMetrics(MethodView):
    @blp.response(200, MetricsSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """Per-epoch loss, accuracy and macro F1 (and their val_ twins), per-step loss and learning rate, so far.

        A job that reused another's result shows that job's series, which its result summarizes.
        """
        job = load_job(job_id)
        return group_metrics(current_store().list_metrics(artifact_owner(job)))


@blp.route("/jobs/<job_id>/events")
class JobEvents(MethodView):
    @blp.arguments(EventListQuerySchema, location="query")
    @blp.response(200, EventListSchema)
    @blp.alt_response(503, schema=ProblemSchema,
                      description="`Accept: text/event-stream` while this API process already follows "
                                  "FITJOBS_API_MAX_STREAMS streams; retry after `Retry-After` seconds.")
    def get(self, query: dict[str, Any], job_id: str) -> Any:
        """The job's event log (state changes and milestones); pass `after` to continue.

        With `Accept: text/event-stream` the events come as Server-Sent Events (`id` is the event's
        id) and the stream follows the job live until it ends, with a `: keep-alive` comment while
        nothing happens; reconnecting with `Last-Event-ID` resumes after that event.
        """
        job = load_job(job_id)
        if request.accept_mimetypes.best_match(["application/json", "text/event-stream"]) == "text/event-stream":
            after = last_event_id() if request.headers.get("Last-Event-ID", "").strip() else query["after"]
            streams = current_event_streams()
            backlog, subscription = open_stream(streams, job, after)
            response = Response(stream_frames(streams, backlog, subscription,
                                              current_settings().api_stream_heartbeat_seconds),
                                mimetype="text/event-stream",
                                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            if subscription is not None:
                # Also when the body is never iterated (the client left before it started).
                response.call_on_close(lambda: streams.unsubscribe(subscription))
            return response
        events = current_store().list_events(job_id, after=query["after"])
        return {"events": [asdict(event) for event in events]}


@blp.route("/jobs/<job_id>/webhook-deliveries")
class JobWebhookDeliveries(MethodView):
    @blp.response(200, WebhookDeliveryListSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """The events sent, or being sent, to the job's webhook URL, oldest first, with how each went.

        Each is tried until the receiver answers 2xx, waiting FITJOBS_WEBHOOK_RETRY_SECONDS after the
        first failure and twice as long after each further one, and given up (`failed`) once
        FITJOBS_WEBHOOK_GIVE_UP_SECONDS have passed since its event. A job without a webhook has none.
        """
        load_job(job_id)
        deliveries = WebhookStore(current_store().engine).list_for_job(job_id)
        return {"deliveries": [{**asdict(delivery), "state": delivery.state.value} for delivery in deliveries]}


def last_event_id() -> int:
    """The event id a reconnecting event stream resumes after, from `Last-Event-ID`; a 422 unless it is one."""
    given = request.headers.get("Last-Event-ID", "").strip()
    # [0-9], not str.isdigit(): that accepts other scripts' digits, which int() then reads.
    if not re.fullmatch(r"[0-9]{1,19}", given) or int(given) > MAX_SEQ:
        message = "Must be the id of an event this stream sent (digits 0-9, at most 2**63 - 1)."
        raise ValidationFailed(f"Last-Event-ID: {message}", errors={"Last-Event-ID": [message]})
    return int(given)


@blp.route("/jobs/<job_id>/logs")
class JobLogs(MethodView):
    @blp.doc(responses={"200": {"description": "The trainer's output of the job's latest attempt.",
                                "content": {"text/plain": {}}}})
    def get(self, job_id: str) -> Response:
        """The trainer's log of the latest attempt, as plain text."""
        job = load_job(job_id)
        if job.attempt == 0:
            return Response("", mimetype="text/plain")
        settings = current_settings()
        log_file = settings.attempt_dir(job.id, job.attempt) / "trainer.log"
        if log_file.is_file():
            text = log_file.read_text(errors="replace")
        else:
            # Trained on a node whose disk this pod cannot see: the copy its supervisor stored.
            try:
                text = settings.storage.read_bytes(trainer_log_key(job.id, job.attempt)).decode(errors="replace")
            except (OSError, StorageKeyRefused):
                text = ""
        return Response(text, mimetype="text/plain")
