"""Shared fixtures: settings on a temporary data folder, a real SQLite store, the Flask app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.config import Settings
from service.store import JobStore, open_store
from tests.support.postgres import temporary_database


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose home, database and data root live in a fresh temporary folder.

    No GPU discovery: a supervisor made from these never probes this machine's GPUs.
    """
    return Settings.from_env({"FITJOBS_HOME": str(tmp_path / "home"), "FITJOBS_GPUS": "none"})


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, settings: Settings) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        settings.ensure_dirs()
        yield settings.database_url
    else:
        with temporary_database() as url:
            yield url


@pytest.fixture
def store(database_url: str) -> Iterator[JobStore]:
    """A JobStore on a real, migrated database of each supported kind."""
    job_store = open_store(database_url)
    yield job_store
    job_store.engine.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The Flask app on a SQLite file in the temporary home."""
    application = create_app(settings, test_config={"TESTING": True})
    yield application
    application.extensions["fitjobs.store"].engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the app."""
    return app.test_client()


@pytest.fixture(scope="session", autouse=True)
def model_roots_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """FITJOBS_MODEL_ROOTS for the services tests start: pytest's temporary folders (where tests build
    models) and site-packages (where the MiniLM package lives); started services copy os.environ."""
    import os
    import sysconfig

    roots = os.pathsep.join([str(tmp_path_factory.getbasetemp()), sysconfig.get_paths()["purelib"]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FITJOBS_MODEL_ROOTS", roots)
        yield
