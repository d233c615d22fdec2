"""Accessors for what create_app attached to the running application."""

from __future__ import annotations

from typing import cast

from flask import current_app

from service.api.event_streams import EventStreams
from service.config import Settings
from service.store import JobStore


def current_store() -> JobStore:
    """The JobStore of the application serving this request."""
    return cast(JobStore, current_app.extensions["fitjobs.store"])


def current_settings() -> Settings:
    """The Settings of the application serving this request."""
    return cast(Settings, current_app.extensions["fitjobs.settings"])


def current_event_streams() -> EventStreams:
    """The event streams (and their poller) of the application serving this request."""
    return cast(EventStreams, current_app.extensions["fitjobs.event_streams"])
