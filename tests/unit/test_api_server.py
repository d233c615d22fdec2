"""How `fitjobs api` configures gunicorn, and what its master process imports before forking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import anonymous_notice, gunicorn_options, listen_host
from service.config import ConfigError, Settings
from tests.support.service import REPO_ROOT


def test_gunicorn_runs_gevent_workers_from_the_settings(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_WORKERS": "3",
                                  "FITJOBS_API_WORKER_CONNECTIONS": "500", "FITJOBS_API_MAX_STREAMS": "400",
                                  "FITJOBS_API_TIMEOUT": "20", "FITJOBS_API_GRACEFUL_TIMEOUT": "12",
                                  "FITJOBS_API_KEEPALIVE": "3"})
    options = gunicorn_options(settings)
    assert options["worker_class"].endswith(".ProblemGeventWorker") and options["workers"] == 3
    assert options["worker_connections"] == 500 and "threads" not in options
    assert (options["timeout"], options["graceful_timeout"], options["keepalive"]) == (20, 12, 3)
    assert options["limit_request_line"] <= 8190 and options["limit_request_fields"] <= 100
    assert options["limit_request_field_size"] <= 8190


def test_gthread_workers_take_the_thread_count(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_WORKER_CLASS": "gthread",
                                  "FITJOBS_API_THREADS": "8"})
    options = gunicorn_options(settings)
    assert options["worker_class"].endswith(".ProblemThreadWorker") and options["threads"] == 8
    assert "worker_connections" not in options


def test_an_exited_workers_open_streams_stop_counting_but_its_requests_stay(tmp_path: Path) -> None:
    """gunicorn's child_exit hook drops a dead worker's live gauge files, not its histogram files."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    worker = subprocess.run(
        [sys.executable, "-c",
         "import os\n"
         "from service.api.request_metrics import OPEN_STREAMS, REQUEST_SECONDS\n"
         "OPEN_STREAMS.inc(); REQUEST_SECONDS.labels('GET', '/healthz', '200').observe(0.01)\n"
         "print(os.getpid())\n"],
        env={"PYTHONPATH": str(REPO_ROOT), "PROMETHEUS_MULTIPROC_DIR": str(folder)},
        capture_output=True, text=True, check=True, timeout=60)
    pid = int(worker.stdout.strip())

    def exposition() -> str:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))
        return generate_latest(registry).decode()

    assert "fitjobs_api_open_event_streams 1.0" in exposition()
    assert "child_exit" not in gunicorn_options(Settings.from_env({"FITJOBS_HOME": str(tmp_path)}))
    hook = gunicorn_options(Settings.from_env({"FITJOBS_HOME": str(tmp_path)}), str(folder))["child_exit"]
    hook(None, type("Worker", (), {"pid": pid})())
    text = exposition()
    assert "fitjobs_api_open_event_streams 1.0" not in text
    assert 'fitjobs_api_request_duration_seconds_count{method="GET",route="/healthz",status="200"} 1.0' in text


@pytest.mark.parametrize("name,value,named", [
    ("FITJOBS_API_WORKER_CLASS", "sync", "FITJOBS_API_WORKER_CLASS"),
    ("FITJOBS_API_STREAM_HEARTBEAT_SECONDS", "0", "FITJOBS_API_STREAM_HEARTBEAT_SECONDS"),
    # As many streams as connections would leave none for any other request.
    ("FITJOBS_API_MAX_STREAMS", "2000", "must be below FITJOBS_API_WORKER_CONNECTIONS")])
def test_unusable_server_settings_are_refused(name: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({name: value})


def test_the_master_imports_neither_the_app_nor_the_database_driver(tmp_path: Path) -> None:
    # gevent workers monkey-patch after the fork; whatever the master imported before is not
    # patched in them (psycopg picks a blocking wait function when it is imported unpatched).
    script = (
        "import sys\n"
        "from service.cli import api_arbiter\n"
        "from service.config import Settings\n"
        f"api_arbiter(Settings.from_env({{'FITJOBS_HOME': {str(tmp_path)!r}}}))\n"
        "print(sorted(m for m in ('flask', 'sqlalchemy', 'psycopg', 'requests', 'urllib3', 'service.api.app')"
        " if m in sys.modules))\n"
        "import gevent.monkey\n"
        "print(gevent.monkey.is_module_patched('socket'))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                         timeout=120, check=True)
    assert run.stdout.split("\n")[:2] == ["[]", "False"], run.stdout + run.stderr


@pytest.mark.parametrize(("env", "host"), [
    ({"FITJOBS_HOST": "0.0.0.0"}, "127.0.0.1"),
    ({"FITJOBS_HOST": "::"}, "::1"),
    ({"FITJOBS_HOST": "10.1.2.3"}, "127.0.0.1"),
    ({"FITJOBS_HOST": "127.0.0.1"}, "127.0.0.1"),
    ({"FITJOBS_HOST": "0.0.0.0", "FITJOBS_ALLOW_ANONYMOUS": "1"}, "0.0.0.0"),
    ({"FITJOBS_HOST": "0.0.0.0", "FITJOBS_API_TOKENS": "a-token-of-20-characters"}, "0.0.0.0"),
])
def test_without_tokens_the_api_listens_on_loopback_unless_anonymous_callers_are_allowed(
        tmp_path: Path, env: dict[str, str], host: str) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_PORT": "8123", **env})
    assert listen_host(settings) == host
    assert gunicorn_options(settings)["bind"] == f"{host}:8123"
    notice = anonymous_notice(settings)
    if settings.tenants:
        assert notice is None
    elif host != settings.host:
        assert notice is not None and f"listening on {host} only" in notice and "FITJOBS_ALLOW_ANONYMOUS=1" in notice
    else:
        assert notice is not None and "anonymous tenant 'default'" in notice
