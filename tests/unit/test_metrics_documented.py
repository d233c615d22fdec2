"""docs/operations.md documents every metric the service exports, with its type."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.exported_metrics import exported_families

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_exported_metric_is_documented_with_its_type(tmp_path: Path) -> None:
    families = exported_families(tmp_path)
    assert {"fitjobs_job_queue_wait_seconds", "fitjobs_job_failures_total", "fitjobs_api_open_event_streams",
            "fitjobs_running_job_examples_per_second"} <= set(families), "the exposition was read"
    rows = {match.group(1): match.group(2) for match in
            re.finditer(r"^\| `(fitjobs_[a-z0-9_]+)` \| (\w+) \|", OPERATIONS.read_text(), re.MULTILINE)}
    missing = sorted(set(families) - set(rows))
    assert not missing, f"docs/operations.md has no row for {missing}"
    assert {name: rows[name] for name in families} == families, "each row names the metric's type"
    assert not sorted(set(rows) - set(families)), "every documented metric is exported"
