"""Submit-time checks of where a spec's data and model come from, and the API's check server.

These run in the API process on every POST /v1/jobs and POST /v1/jobs:validate: they only
look at paths, the dataset records and the job store, never at the data itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

from flask import current_app

from service.api.auth import current_tenant
from service.api.context import current_settings, current_store
from service.artifacts import has_model
from service.check_runner import CheckFailed, CheckLimits, CheckRunner
from service.errors import ServiceUnavailable, ValidationFailed, summarize_errors
from service.jobs import Job, JobState
from service.locations import Locations, PathRefused, check_data_url, contained_path
from service.store import JobNotFound
from service.store.dataset_store import DatasetNotFound, DatasetStore

log = logging.getLogger(__name__)


def check_unavailable(exc: CheckFailed, failed: str, hint: str = "") -> ServiceUnavailable:
    """The 503 of a check that did not finish; it says whether time ran out, and logs the cause.

    The cause itself (an OS error, the check process's exception) stays in the log: it can
    name files and folders of this host.
    """
    log.warning("%s: %s", failed, exc)
    why = (f"it ran out of its {current_settings().check_timeout:g} s limit" if exc.timed_out
           else "the check process failed; the cause was logged with this request's id")
    return ServiceUnavailable(f"{failed}: {why}.{hint}", extra={"retryable": not exc.timed_out})


def current_dataset_store() -> DatasetStore:
    """The DatasetStore of this application, on the JobStore's database."""
    extensions = current_app.extensions
    if "fitjobs.dataset_store" not in extensions:
        extensions["fitjobs.dataset_store"] = DatasetStore(current_store().engine)
    return cast(DatasetStore, extensions["fitjobs.dataset_store"])


def current_check_runner() -> CheckRunner:
    """This application's check server client (its child starts on first use)."""
    extensions = current_app.extensions
    if "fitjobs.check_runner" not in extensions:
        settings = current_settings()
        extensions["fitjobs.check_runner"] = CheckRunner(settings.child_environ(), CheckLimits.from_settings(settings))
    return cast(CheckRunner, extensions["fitjobs.check_runner"])


def current_locations() -> Locations:
    """The folders this application's specs resolve against."""
    return Locations.from_settings(current_settings())


def check_spec_sources(spec: dict[str, Any]) -> None:
    """Refuse (422, keyed by field) data paths and model folders outside their roots, unknown uploads and jobs."""
    errors: dict[str, list[str]] = {}
    for role in ("train", "validation"):
        for field, message in source_errors(spec["data"][role]):
            errors.setdefault(f"data.{role}.{field}", []).append(message)
    for field, message in model_errors(spec["model"]):
        errors.setdefault(field, []).append(message)
    if errors:
        raise ValidationFailed(summarize_errors(errors), errors=errors)


def source_errors(source: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, message) for a data source that leaves the data root or names an unknown upload."""
    settings = current_settings()
    if "path" in source:
        try:
            contained_path(source["path"], [settings.data_root], "data")
        except PathRefused as exc:
            yield "path", f"{source['path']!r} {exc}."
    if "url" in source:
        try:
            check_data_url(source["url"], settings.data_url_prefixes)
        except PathRefused as exc:
            yield "url", f"{source['url']!r} {exc}."
    if "upload" in source:
        try:
            dataset = current_dataset_store().get(source["upload"])
        except DatasetNotFound:
            dataset = None
        # A spec reads only its own tenant's uploads, also an admin's: another's is as good as missing.
        if dataset is None or dataset.tenant != current_tenant().name:
            yield "upload", f"No uploaded dataset has the id {source['upload']!r}."


def model_errors(model: str | dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field, message) for a local model outside the model roots, or a job with no model to continue from."""
    settings = current_settings()
    if isinstance(model, str) and model.startswith("/"):
        field, path = "model", model
    elif isinstance(model, dict) and "path" in model:
        field, path = "model.path", model["path"]
    elif isinstance(model, dict) and "job" in model:
        yield from job_model_errors(model["job"])
        return
    else:
        return
    try:
        contained_path(path, settings.model_roots, "model")
    except PathRefused as exc:
        yield field, f"{path!r} {exc}."


def job_model_errors(job_id: str, field: str = "model.job", use: str = "continued from") -> Iterator[tuple[str, str]]:
    """Why a job's model cannot be ``use``d (continued from, predicted with), if it cannot; keyed by ``field``."""
    try:
        job = current_store().get_job(job_id)
    except JobNotFound:
        job = None
    # Only a job of the submitting tenant can be used, also by an admin.
    if job is None or job.tenant != current_tenant().name:
        yield field, f"No job has the id {job_id!r}."
        return
    if job.kind != "train":
        yield field, f"Job {job_id} is a {job.kind} job; only a training job has a model."
    elif job.state is not JobState.SUCCEEDED:
        yield field, f"Job {job_id} is {job.state.value}; only a succeeded job's model can be {use}."
    elif job.reused_from is not None:
        verb = "continue from" if field == "model.job" else "predict with"
        yield field, (f"Job {job_id} trained nothing: it reused job {job.reused_from}'s model; {verb} "
                      f"{{\"job\": \"{job.reused_from}\"}} instead.")
    elif not has_model(current_settings().storage, job_id):
        yield field, f"Job {job_id} has no published model."


def uses_upload(spec: dict[str, Any], dataset_id: str) -> bool:
    """Whether a spec reads the uploaded dataset, as training or validation data, or as a prediction's data."""
    data = spec.get("data") or {}
    return data.get("upload") == dataset_id or \
        any((data.get(role) or {}).get("upload") == dataset_id for role in ("train", "validation"))


def active_jobs_using(dataset_id: str) -> list[Job]:
    """Queued and running jobs whose spec reads the uploaded dataset."""
    using = []
    for state in (JobState.QUEUED, JobState.RUNNING):
        before = None
        while True:
            page, before = current_store().list_jobs(state=state, limit=200, before_seq=before)
            using += [job for job in page if uses_upload(job.spec, dataset_id)]
            if before is None:
                break
    return using
