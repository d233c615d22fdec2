"""Settings come from FITJOBS_* variables with documented defaults; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import SETTINGS, ConfigError, Settings


def test_defaults_put_everything_under_home(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'fitjobs.db'}"
    assert settings.data_root == tmp_path / "data"
    assert (settings.host, settings.port, settings.max_concurrent_jobs) == ("127.0.0.1", 8080, 0)
    assert settings.gpus == "auto"
    assert settings.attempt_dir("job_x", 2) == tmp_path / "jobs" / "job_x" / "attempt-2"


def test_every_setting_is_read_from_its_variable(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "FITJOBS_HOME": str(tmp_path), "FITJOBS_DATABASE_URL": "postgresql+psycopg://db/fitjobs",
        "FITJOBS_DATA_ROOT": str(tmp_path / "d"), "FITJOBS_PORT": "9000",
        "FITJOBS_MAX_CONCURRENT_JOBS": "4", "FITJOBS_SHUTDOWN_GRACE": "1.5", "FITJOBS_LOG_LEVEL": "debug"})
    assert settings.database_url == "postgresql+psycopg://db/fitjobs"
    assert settings.data_root == tmp_path / "d"
    assert (settings.port, settings.max_concurrent_jobs, settings.shutdown_grace) == (9000, 4, 1.5)
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize("name,value", [("FITJOBS_PORT", "99999"), ("FITJOBS_PORT", "http"),
                                        ("FITJOBS_MAX_CONCURRENT_JOBS", "-1"), ("FITJOBS_SHUTDOWN_GRACE", "-1"),
                                        ("FITJOBS_API_STREAM_POLL_SECONDS", "nan"),
                                        ("FITJOBS_API_STREAM_HEARTBEAT_SECONDS", "inf")])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_settings_table_matches_the_dataclass() -> None:
    # `tenants` is derived from FITJOBS_TENANTS_FILE and FITJOBS_API_TOKENS, not a variable of its own.
    fields = set(Settings.__dataclass_fields__) - {"environ", "tenants"}
    assert {spec.attr for spec in SETTINGS} == fields
    assert all(spec.env.startswith("FITJOBS_") and spec.help for spec in SETTINGS)


def test_readme_settings_table_lists_exactly_the_settings() -> None:
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table_rows = [line for line in readme.splitlines() if line.startswith("| `FITJOBS_")]
    documented = {name for line in table_rows for name in re.findall(r"`(FITJOBS_\w+)`", line.split("|")[1])}
    assert documented == {spec.env for spec in SETTINGS}


@pytest.mark.parametrize("value,parsed", [("auto", "auto"), ("none", ()), ("0,2", ("0", "2")), (" 1 ", ("1",))])
def test_gpu_setting(value: str, parsed: object) -> None:
    assert Settings.from_env({"FITJOBS_GPUS": value}).gpus == parsed


@pytest.mark.parametrize("value", ["0,0", "gpu0", "1,-1"])
def test_bad_gpu_setting_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="FITJOBS_GPUS"):
        Settings.from_env({"FITJOBS_GPUS": value})


def test_worker_health_settings_default_under_home_per_host(tmp_path: Path) -> None:
    import socket

    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path)})
    assert settings.worker_heartbeat_file == tmp_path / "workers" / f"{socket.gethostname()}.heartbeat"
    assert (settings.worker_health_seconds, settings.gpu_discovery_timeout) == (60, 120)
    custom = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_WORKER_HEARTBEAT_FILE": "/tmp/w/beat",
                                "FITJOBS_WORKER_HEALTH_SECONDS": "5", "FITJOBS_POLL_INTERVAL": "2"})
    assert (custom.worker_heartbeat_file, custom.worker_health_seconds) == (Path("/tmp/w/beat"), 5)


@pytest.mark.parametrize("environ", [{"FITJOBS_WORKER_HEALTH_SECONDS": "0"},
                                     {"FITJOBS_WORKER_HEALTH_SECONDS": "3", "FITJOBS_POLL_INTERVAL": "2"},
                                     {"FITJOBS_GPU_DISCOVERY_TIMEOUT": "0"}])
def test_health_windows_that_could_never_pass_are_refused(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(environ))):
        Settings.from_env(environ)
