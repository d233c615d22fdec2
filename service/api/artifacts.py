"""Artifacts of succeeded jobs: the list, single files and the model tarball.

A job that reused another job's result serves that job's published files: nothing is copied.
"""

from __future__ import annotations

from typing import Any

from flask import Response, send_file
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.context import current_settings
from service.api.jobs import artifact_owner, load_job
from service.artifacts import ArtifactNotFound, artifact_path, list_artifacts, model_tarball
from service.errors import NotFound
from service.schemas import ArtifactListSchema

blp = Blueprint("artifacts", __name__, url_prefix="/v1/jobs", description="Trained models and files.")

BINARY = {"content": {"application/octet-stream": {}}}


@blp.route("/<job_id>/artifacts")
class JobArtifacts(MethodView):
    @blp.response(200, ArtifactListSchema)
    def get(self, job_id: str) -> dict[str, Any]:
        """Every published file with its size; empty until the job succeeds."""
        found = list_artifacts(current_settings().artifacts_dir, artifact_owner(load_job(job_id)))
        return {"artifacts": [{"name": a.name, "size": a.size} for a in found]}


@blp.route("/<job_id>/artifacts/<path:name>")
class JobArtifact(MethodView):
    @blp.doc(responses={"200": {"description": "The file.", **BINARY}})
    def get(self, job_id: str, name: str) -> Response:
        """One published file, by the name the artifact list gives."""
        owner = artifact_owner(load_job(job_id))
        try:
            path = artifact_path(current_settings().artifacts_dir, owner, name)
        except ArtifactNotFound as exc:
            raise NotFound(f"Job {job_id} has no artifact named {name!r}.") from exc
        return send_file(path, as_attachment=True, download_name=path.name, conditional=True)


@blp.route("/<job_id>/model.tar.gz")
class JobModelTarball(MethodView):
    @blp.doc(responses={"200": {"description": "The model folder (weights, config, tokenizer).",
                                "content": {"application/gzip": {}}}})
    def get(self, job_id: str) -> Response:
        """The trained model as a tar.gz whose top level `from_pretrained` loads."""
        job = load_job(job_id)
        settings = current_settings()
        try:
            # Built and cached under the owner's id, so a reused model is archived once.
            tarball = model_tarball(settings.artifacts_dir, settings.cache_dir, artifact_owner(job))
        except ArtifactNotFound as exc:
            raise NotFound(f"Job {job_id} is {job.state.value}; it has no model to download.") from exc
        return send_file(tarball, mimetype="application/gzip", as_attachment=True,
                         download_name=f"{job_id}.model.tar.gz", conditional=True)
