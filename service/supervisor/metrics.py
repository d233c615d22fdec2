"""The supervisor's own `/metrics` (FITJOBS_SUPERVISOR_METRICS_PORT): the pace of the jobs it runs.

Each supervisor exports only the attempts it owns, read at scrape time from the progress its
trainers write to the database. So every running job appears once, on the node that trains it,
however many API replicas or supervisors there are, and the series of a job goes away with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from service.store import JobStore

log = logging.getLogger(__name__)


class RunningJobsCollector:
    """examples/s and step time of each job this supervisor runs, and its slots."""

    def __init__(self, store: JobStore, owner: str, slots: int) -> None:
        self.store = store
        self.owner = owner
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges, read now."""
        running = self.store.jobs_owned_by(self.owner)
        rate = GaugeMetricFamily("fitjobs_running_job_examples_per_second",
                                 "Training examples per second of a running job's attempt so far.",
                                 labels=["job_id", "tenant"])
        step = GaugeMetricFamily("fitjobs_running_job_step_seconds",
                                 "Mean seconds per training step of a running job's attempt so far.",
                                 labels=["job_id", "tenant"])
        for job in running:
            # A job still loading its data or model has no pace yet: no sample rather than a made-up 0.
            if job.progress.examples_per_second is not None:
                rate.add_metric([job.id, job.tenant], job.progress.examples_per_second)
            if job.progress.step_seconds is not None:
                step.add_metric([job.id, job.tenant], job.progress.step_seconds)
        yield rate
        yield step
        yield GaugeMetricFamily("fitjobs_supervisor_running_jobs", "Jobs this supervisor is running.",
                                value=len(running))
        yield GaugeMetricFamily("fitjobs_supervisor_slots", "Jobs this supervisor runs at once at most.",
                                value=self.slots)


def serve_metrics(store: JobStore, owner: str, slots: int, host: str, port: int) -> Any:
    """Serve the supervisor's metrics on ``host``:``port`` from a daemon thread; returns the server."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunningJobsCollector(store, owner, slots))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    log.info("supervisor metrics on http://%s:%d/metrics", host, port)
    return server
