"""The Flask application factory: settings, store, event streams, blueprints and the error handler."""

from __future__ import annotations

from typing import Any

from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from flask_smorest import Api

from service.api.auth import install_auth
from service.api.edge import install_edge
from service.api.event_streams import EventStreams
from service.api.openapi import (
    PathParametersPlugin,
    ProblemResponsesPlugin,
    SchemaRulesPlugin,
    exclusive_bounds,
    plain_string_pattern,
)
from service.api.rate_limits import install_rate_limits
from service.api.request_metrics import install_request_metrics
from service.config import Settings
from service.errors import install_error_handlers
from service.logconfig import configure_logging
from service.schemas import ProblemSchema
from service.store import JobStore, open_store

API_TITLE = "fitjobs"
API_VERSION = "v1"


class FitjobsApi(Api):
    """flask-smorest Api whose documented error body is RFC 9457 problem details."""

    ERROR_SCHEMA = ProblemSchema


def build_api(app: Flask) -> Api:
    """Register every blueprint on ``app`` and return the Api that documents them."""
    from service.api.artifacts import blp as artifacts_blp
    from service.api.batch_predictions import blp as batch_predictions_blp
    from service.api.dashboard import blp as dashboard_blp
    from service.api.datasets import blp as datasets_blp
    from service.api.health import blp as health_blp
    from service.api.jobs import blp as jobs_blp
    from service.api.predictions import blp as predictions_blp
    from service.api.prometheus import blp as prometheus_blp
    from service.api.tenant import blp as tenant_blp

    marshmallow_plugin = MarshmallowPlugin()
    api = FitjobsApi(app, spec_kwargs={
        "marshmallow_plugin": marshmallow_plugin,
        "extra_plugins": [ProblemResponsesPlugin(), SchemaRulesPlugin(), PathParametersPlugin()],
        "info": {"description": "Fine-tune transformers models with TensorFlow/Keras as a service. "
                                "Errors are application/problem+json (RFC 9457)."}})
    assert marshmallow_plugin.converter is not None, "the Api initialised its spec"
    marshmallow_plugin.converter.add_attribute_function(exclusive_bounds)  # type: ignore[no-untyped-call]
    marshmallow_plugin.converter.add_attribute_function(plain_string_pattern)  # type: ignore[no-untyped-call]
    for blueprint in (jobs_blp, batch_predictions_blp, datasets_blp, artifacts_blp, predictions_blp, tenant_blp,
                      health_blp, prometheus_blp):
        api.register_blueprint(blueprint)
    # On the app, not the Api: the dashboard's files are no API operations.
    app.register_blueprint(dashboard_blp)
    return api


def create_app(settings: Settings | None = None, *, store: JobStore | None = None,
               migrate: bool = True, test_config: dict[str, Any] | None = None,
               process_metrics_dir: str | None = None) -> Flask:
    """The Flask application: settings, store, blueprints and the problem+json handler.

    ``process_metrics_dir`` is the folder where the API processes of this start keep their
    request metrics (prometheus-client's multiprocess mode, under gunicorn); None keeps them
    in this process.
    """
    settings = settings or Settings.from_env()
    settings.ensure_dirs()
    app = Flask(__name__)
    app.config.update(
        API_TITLE=API_TITLE, API_VERSION=API_VERSION, OPENAPI_VERSION="3.0.3",
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
    )
    if test_config:
        app.config.update(test_config)
    app.extensions["fitjobs.settings"] = settings
    app.extensions["fitjobs.store"] = store or open_store(settings.database_url, migrate=migrate)
    app.extensions["fitjobs.event_streams"] = EventStreams(
        app.extensions["fitjobs.store"], poll_seconds=settings.api_stream_poll_seconds,
        max_streams=settings.api_max_streams)
    app.extensions["fitjobs.process_metrics_dir"] = process_metrics_dir
    app.extensions["fitjobs.api"] = build_api(app)
    # First of the request hooks: requests that auth or the rate limiter refuse are timed too.
    install_request_metrics(app)
    install_auth(app, settings)
    # After install_auth: the limiter counts per tenant, which auth finds out.
    install_rate_limits(app, settings, app.extensions["fitjobs.store"].engine)
    install_edge(app)
    # After flask-smorest, which registers its own JSON error handler for HTTPException.
    install_error_handlers(app)
    configure_logging(settings.log_level)
    return app
