"""The HTTP API: the Flask app factory (service.api.app) and its blueprints. Never imports TensorFlow.

Importing this package loads nothing else: the gunicorn master imports service.api.lifecycle,
and must not import Flask, SQLAlchemy or psycopg before its gevent workers monkey-patch the
standard library (see service.cli.check_cooperative_database).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """`from service.api import create_app` imports the app module on first use."""
    if name == "create_app":
        from service.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
