"""The metrics the service exports, read from a real exposition: the API's /metrics and the supervisor's."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.api import create_app
from service.config import Settings
from service.supervisor.metrics import RunningJobsCollector

# The series names PromQL sees besides a family's own name, by its type (a counter's name has its _total).
SERIES_SUFFIXES = {"histogram": ("_bucket", "_count", "_sum")}


def exported_families(home: Path) -> dict[str, str]:
    """Every metric family the service exports, by name (a counter's with `_total`), and its type."""
    app = create_app(Settings.from_env({"FITJOBS_HOME": str(home)}), test_config={"TESTING": True})
    try:
        client = app.test_client()
        client.get("/healthz")  # a request observed: the latency histogram then has its series too
        text = client.get("/metrics").get_data(as_text=True)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RunningJobsCollector(app.extensions["fitjobs.store"], "node", 1))
        text += generate_latest(registry).decode()
    finally:
        app.extensions["fitjobs.store"].engine.dispose()
    return {family.name + ("_total" if family.type == "counter" else ""): family.type
            for family in text_string_to_metric_families(text)}


def series_names(families: dict[str, str]) -> set[str]:
    """The names a PromQL expression may use for those families."""
    names = set()
    for name, kind in families.items():
        names.add(name)
        names.update(name + suffix for suffix in SERIES_SUFFIXES.get(kind, ()))
    return names
