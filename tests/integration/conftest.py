"""Fixtures for tests that run the real service: a tiny local model and a started `fitjobs serve`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import temporary_database
from tests.support.quick_supervisor import QuickCluster, quick_cluster
from tests.support.service import REPO_ROOT, RunningService, start_service, trainer_pids


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT with a locally written tokenizer, built in a subprocess (no Hub access)."""
    dest = tmp_path_factory.mktemp("models") / "tiny-bert"
    subprocess.run([sys.executable, "-m", "tests.support.tiny_bert", str(dest)], check=True,
                   cwd=REPO_ROOT, capture_output=True, timeout=300)
    assert (dest / "config.json").is_file()
    return dest


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """`fitjobs serve` on a free port with its own data folder, stopped after the module."""
    running = start_service(tmp_path_factory.mktemp("service"))
    yield running
    status = running.stop()
    assert status == 0, running.output()[-3000:]
    assert trainer_pids(home=running.home) == [], "stopping the service must leave no trainer behind"


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QuickCluster]:
    """Quick supervisors (service.supervisor with a stand-in trainer) on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        with quick_cluster(tmp_path / "home", f"sqlite:///{tmp_path / 'home' / 'fitjobs.db'}") as running:
            yield running
    else:
        with temporary_database() as url, quick_cluster(tmp_path / "home", url) as running:
            yield running
