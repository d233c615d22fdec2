"""Liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import logging
from typing import cast

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Api, Blueprint
from sqlalchemy.exc import SQLAlchemyError

from service.api.context import current_store
from service.api.lifecycle import is_draining
from service.errors import ServiceUnavailable
from service.schemas import HealthSchema

blp = Blueprint("health", __name__, description="Health checks and the API description.")
log = logging.getLogger(__name__)


@blp.route("/healthz")
class Liveness(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, str]:
        """The process is up and serving requests."""
        return {"status": "ok"}


@blp.route("/readyz")
class Readiness(MethodView):
    @blp.response(200, HealthSchema)
    def get(self) -> dict[str, str]:
        """The database is reachable and the node is not shutting down, so requests can be served."""
        if is_draining():
            raise ServiceUnavailable("This API node is shutting down; send requests to another one.")
        try:
            current_store().ping()
        except SQLAlchemyError as exc:
            log.warning("readiness check failed: %s", exc)
            raise ServiceUnavailable("The database cannot be reached.") from exc
        return {"status": "ready"}


@blp.route("/openapi.yaml")
class OpenApiDocument(MethodView):
    @blp.doc(responses={"200": {"description": "The OpenAPI 3 document of this API.",
                                "content": {"application/yaml": {}}}})
    def get(self) -> Response:
        """This API's OpenAPI document, generated from the same schemas that validate requests."""
        return Response(openapi_yaml(), mimetype="application/yaml")


def openapi_yaml() -> str:
    """The OpenAPI document of the running application, as YAML."""
    api = cast(Api, current_app.extensions["fitjobs.api"])
    return api.spec.to_yaml()
