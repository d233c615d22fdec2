"""Accessors for what create_app attached to the running application."""

from __future__ import annotations

from flask import current_app

from service.config import Settings
from service.store import JobStore


def current_store() -> JobStore:
    """The JobStore of the application serving this request."""
    return current_app.extensions["fitjobs.store"]


def current_settings() -> Settings:
    """The Settings of the application serving this request."""
    return current_app.extensions["fitjobs.settings"]
