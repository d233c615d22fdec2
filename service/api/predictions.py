"""Online predictions: classify a few texts with a succeeded job's model, to check it before deploying it.

The model runs in the node's predict process (service.predict_client), which keeps the most
recently used models loaded; the API worker only checks the request and the job and passes
the texts on. A read role may predict: nothing is created or changed.
"""

from __future__ import annotations

import time
from typing import Any, cast

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.artifacts import storage_errors
from service.api.context import current_settings
from service.api.jobs import artifact_owner, load_job, require_json_body
from service.artifacts import has_model
from service.errors import Conflict, ServiceUnavailable, ValidationFailed
from service.jobs import JobState
from service.predict_client import PredictClient, PredictRefused, PredictUnavailable
from service.schemas import PredictionListSchema, PredictionRequestSchema, ProblemSchema

blp = Blueprint("predictions", __name__, url_prefix="/v1/jobs", description="Online predictions with trained models.")


def current_predict_client() -> PredictClient:
    """This application's client of the node's predict process."""
    extensions = current_app.extensions
    if "fitjobs.predict_client" not in extensions:
        settings = current_settings()
        extensions["fitjobs.predict_client"] = PredictClient(settings.predict_socket, settings.predict_timeout)
    return cast(PredictClient, extensions["fitjobs.predict_client"])


@blp.route("/<job_id>/predictions")
class JobPredictions(MethodView):
    @require_json_body
    @blp.arguments(PredictionRequestSchema)
    @blp.response(200, PredictionListSchema)
    @blp.alt_response(409, schema=ProblemSchema, description="The job has not succeeded, or has no model.")
    @blp.alt_response(503, schema=ProblemSchema,
                      description="Predictions are off on this node (FITJOBS_PREDICT_MODELS=0), or the predict "
                                  "process did not answer in time.")
    def post(self, body: dict[str, Any], job_id: str) -> dict[str, Any]:
        """Classify up to 64 texts (or text pairs) with the job's model: each text's label and probabilities.

        The first request for a model loads it (`model_load_ms` says how long that took); later
        ones find it loaded until it is among the least recently used beyond
        FITJOBS_PREDICT_MODELS or FITJOBS_PREDICT_MEMORY_BYTES. Texts are tokenized as in
        training (the job's tokenizer and `max_length`) and padded to the longest of a batch.
        """
        started = time.perf_counter()
        job = load_job(job_id)
        settings = current_settings()
        if job.state is not JobState.SUCCEEDED:
            raise Conflict(f"Job {job_id} is {job.state.value}; only a succeeded job's model predicts.",
                           extra={"state": job.state.value})
        owner = artifact_owner(job)
        with storage_errors():
            if not has_model(settings.storage, owner):
                raise Conflict(f"Job {job_id} has no published model to predict with.",
                               extra={"state": job.state.value})
        paired = bool(job.spec.get("data", {}).get("text_pair_column"))
        if paired != ("text_pairs" in body):
            field, other = ("text_pairs", "texts") if paired else ("texts", "text_pairs")
            message = (f"Job {job_id}'s model was trained {'with' if paired else 'without'} a text pair column; "
                       f"send `{field}`, not `{other}`.")
            raise ValidationFailed(message, errors={other: [message]})
        if settings.predict_models == 0:
            raise ServiceUnavailable("Online predictions are off on this node (FITJOBS_PREDICT_MODELS=0).")
        pairs = body.get("text_pairs")
        args = {"job_id": owner, "texts": [pair[0] for pair in pairs] if pairs else body["texts"],
                "pairs": [pair[1] for pair in pairs] if pairs else None,
                "max_length": int(job.spec.get("hyperparameters", {}).get("max_length", 128))}
        try:
            result = current_predict_client().request("predict", args)
        except PredictUnavailable as exc:
            raise ServiceUnavailable(f"The prediction could not be made: {exc}.", extra={"retryable": True}) from exc
        except PredictRefused as exc:
            if exc.code == "model_not_found":
                raise Conflict(f"Job {job_id} has no published model to predict with.",
                               extra={"state": job.state.value}) from exc
            raise ServiceUnavailable(f"The prediction could not be made: {exc}.",
                                     extra={"retryable": exc.code != "model_load_failed"}) from exc
        result["timing"]["total_ms"] = (time.perf_counter() - started) * 1000
        return {"job_id": job_id, **result}
