"""Shared fixtures: settings on a temporary data folder, a real SQLite store, the Flask app."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.store import JobStore, open_store


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose home, database and data root live in a fresh temporary folder."""
    return Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home")})


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    """A JobStore on a real, migrated SQLite file."""
    settings.ensure_dirs()
    job_store = open_store(settings.database_url)
    yield job_store
    job_store.engine.dispose()


@pytest.fixture
def app(settings: Settings, store: JobStore) -> Flask:
    """The Flask app on the temporary store."""
    return create_app(settings, store=store, test_config={"TESTING": True})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()
