"""Artifacts of jobs: the list, single files, the model tarball and the evaluation report.

A succeeded job has published artifacts, and so has a job that failed as below_threshold
(its model and report are published before the threshold is checked). A job that reused
another job's result serves that job's published files: nothing is copied. With an object
store (FITJOBS_STORAGE_URL) files are streamed from it; nothing is copied to the API's disk.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Response, request, send_file
from flask.views import MethodView
from flask_smorest import Blueprint
from werkzeug.wsgi import wrap_file

from service.api.context import current_settings
from service.api.jobs import artifact_owner, load_job
from service.artifacts import (
    ARTIFACTS,
    EVALUATION_FILE,
    MODEL_FOLDER,
    SAVED_MODEL_FOLDER,
    SAVED_MODEL_IDS_FOLDER,
    ArtifactNotFound,
    artifact_path,
    list_artifacts,
    model_tarball,
    open_artifact,
    read_artifact,
    stored_model_tarball,
)
from service.errors import NotFound, ServiceUnavailable
from service.schemas import ArtifactListSchema, EvaluationSchema
from service.storage import StorageUnavailable

blp = Blueprint("artifacts", __name__, url_prefix="/v1/jobs", description="Trained models and files.")

STREAM_CHUNK_BYTES = 1 << 20  # each read of an object store file is a call on another thread
# RFC 9530's digest of the whole file, so that a client can check what it saved.
DIGEST_HEADER: dict[str, Any] = {"headers": {"Repr-Digest": {
    "description": "`sha-256=:<base64>:` of the whole file (RFC 9530); sent for files on the API's disk.",
    "schema": {"type": "string"}}}}
BINARY: dict[str, Any] = {"content": {"application/octet-stream": {}}, **DIGEST_HEADER}


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Answer 503 when the object store cannot be reached, as for the database."""
    try:
        yield
    except StorageUnavailable as exc:
        raise ServiceUnavailable(f"The artifact store cannot be reached right now: {exc}.",
                                 extra={"retryable": True}) from exc


def streamed(stream: Any, size: int, mimetype: str, download_name: str) -> Response:
    """A download response that streams ``stream`` (read in blocks, closed at the end) of ``size`` bytes."""
    response = Response(wrap_file(request.environ, stream, buffer_size=STREAM_CHUNK_BYTES), mimetype=mimetype,
                        direct_passthrough=True)
    response.content_length = size
    response.headers.set("Content-Disposition", "attachment", filename=download_name)
    return response


def with_digest(response: Response, path: Path) -> Response:
    """``response`` (a local file's) with its Repr-Digest; published files never change, so it cannot go stale."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").digest()
    response.headers["Repr-Digest"] = f"sha-256=:{base64.b64encode(digest).decode()}:"
    return response


@blp.route("/<job_id>/artifacts")
class JobArtifacts(MethodView):
    @blp.response(200, ArtifactListSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """Every published file with its size; empty until the job publishes its model."""
        owner = artifact_owner(load_job(job_id))
        with storage_errors():
            found = list_artifacts(current_settings().storage, owner)
        return {"artifacts": [{"name": a.name, "size": a.size} for a in found]}


@blp.route("/<job_id>/artifacts/<path:name>")
class JobArtifact(MethodView):
    @blp.doc(responses={"200": {"description": "The file.", **BINARY}})
    def get(self, job_id: str, name: str) -> Response:
        """One published file, by the name the artifact list gives."""
        owner = artifact_owner(load_job(job_id))
        storage = current_settings().storage
        try:
            if storage.local_root is not None:
                path = artifact_path(storage.local_root / ARTIFACTS, owner, name)
                return with_digest(send_file(path, as_attachment=True, download_name=path.name, conditional=True),
                                   path)
            with storage_errors():
                stream, size = open_artifact(storage, owner, name)
        except ArtifactNotFound as exc:
            raise NotFound(f"Job {job_id} has no artifact named {name!r}.") from exc
        return streamed(stream, size, "application/octet-stream", name.rsplit("/", 1)[-1])


def folder_tarball(job_id: str, folder: str, what: str) -> Response:
    """The tar.gz of one published folder of the job (built once and cached), or 404 naming ``what`` it lacks."""
    job = load_job(job_id)
    settings = current_settings()
    storage = settings.storage
    name = f"{job_id}.{folder}.tar.gz"
    try:
        # Built and cached under the owner's id, so a reused model is archived once.
        if storage.local_root is not None:
            tarball = model_tarball(storage.local_root / ARTIFACTS, settings.cache_dir, artifact_owner(job), folder)
            return with_digest(send_file(tarball, mimetype="application/gzip", as_attachment=True,
                                         download_name=name, conditional=True), tarball)
        with storage_errors():
            key, size = stored_model_tarball(storage, settings.cache_dir, artifact_owner(job), folder)
            stream = storage.open(key)
    except ArtifactNotFound as exc:
        raise NotFound(f"Job {job_id} is {job.state.value}; it has no {what} to download.") from exc
    return streamed(stream, size, "application/gzip", name)


@blp.route("/<job_id>/model.tar.gz")
class JobModelTarball(MethodView):
    @blp.doc(responses={"200": {"description": "The model folder (weights, config, tokenizer).",
                                "content": {"application/gzip": {}}, **DIGEST_HEADER}})
    def get(self, job_id: str) -> Response:
        """The trained model as a tar.gz whose top level `from_pretrained` loads."""
        return folder_tarball(job_id, MODEL_FOLDER, "model")


@blp.route("/<job_id>/saved_model.tar.gz")
class JobSavedModelTarball(MethodView):
    @blp.doc(responses={"200": {"description": "The SavedModel folder: its version folder `1/` at the top.",
                                "content": {"application/gzip": {}}, **DIGEST_HEADER}})
    def get(self, job_id: str) -> Response:
        """The SavedModel for TF Serving as a tar.gz; unpack it into the model's base path (docs/serving.md).

        The artifacts `saved_model/1/...` are the same files one by one.
        """
        return folder_tarball(job_id, SAVED_MODEL_FOLDER, "SavedModel")


@blp.route("/<job_id>/saved_model_ids.tar.gz")
class JobIdsSavedModelTarball(MethodView):
    @blp.doc(responses={"200": {"description": "The SavedModel with serving_ids alone: its version folder `1/` at "
                                               "the top.", "content": {"application/gzip": {}}, **DIGEST_HEADER}})
    def get(self, job_id: str) -> Response:
        """The SavedModel without tensorflow-text ops (signature serving_ids only) as a tar.gz.

        For TF Serving builds without tensorflow-text's ops, which cannot load saved_model.tar.gz
        when its serving_default tokenizes in the graph (docs/serving.md). Absent (404) when
        that SavedModel has no tensorflow-text ops: it then serves the same purpose itself.
        """
        return folder_tarball(job_id, SAVED_MODEL_IDS_FOLDER, "SavedModel without tensorflow-text ops")


@blp.route("/<job_id>/evaluation")
class JobEvaluation(MethodView):
    @blp.response(200, EvaluationSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """The evaluation report: how the published model scores on the validation set.

        Accuracy, macro and weighted F1, per-class scores, the confusion matrix, ROC AUC (two
        labels), loss and the most confidently wrong rows, of the selected epoch. There for a
        succeeded job and for one that failed its acceptance threshold (below_threshold); a job
        that reused another's result serves that job's report.
        """
        job = load_job(job_id)
        try:
            with storage_errors():
                report: dict[str, Any] = json.loads(read_artifact(current_settings().storage, artifact_owner(job),
                                                                  EVALUATION_FILE))
        except (ArtifactNotFound, FileNotFoundError) as exc:
            still = "" if job.state.is_terminal else " yet"
            raise NotFound(f"Job {job_id} is {job.state.value}; it has no evaluation{still}.") from exc
        return report
