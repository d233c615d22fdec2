"""GET /metrics: Prometheus exposition of the queue and of finished jobs, read from the database at
scrape time, and of this API's requests and open event streams.

Reading the job figures from the database (not from process-local counters) gives every API
replica and gunicorn worker the same answer, and keeps them across restarts: a finished job's
durations and failure are counted once, wherever it ran. Request latency and open streams
belong to the API processes themselves (service.api.request_metrics). docs/operations.md
lists every metric.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from flask import Response, current_app
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.api.context import current_settings, current_store
from service.api.request_metrics import OPEN_STREAMS, REQUEST_SECONDS
from service.jobs import JobState
from service.store import JobStore
from service.store.job_statistics import DurationBuckets
from service.store.job_store import utcnow

# Bucket bounds (seconds) of the finished jobs' histograms.
QUEUE_WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
STARTUP_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RUN_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0)
JOB_HISTOGRAMS = {
    "queue_wait": ("fitjobs_job_queue_wait_seconds", QUEUE_WAIT_BUCKETS,
                   "Seconds finished jobs waited from creation to the claim of their last attempt, by outcome."),
    "startup": ("fitjobs_job_startup_seconds", STARTUP_BUCKETS,
                "Seconds the trainer of finished jobs' last attempt took to be ready (process start or warm "
                "assignment to training libraries imported), by outcome."),
    "run": ("fitjobs_job_run_seconds", RUN_BUCKETS,
            "Seconds from the claim of finished jobs' last attempt to their end, by outcome."),
}

blp = Blueprint("prometheus", __name__, description="Prometheus metrics.")


class QueueCollector:
    """Jobs per state and priority, the oldest queued job, queue depth, live workers and their GPUs."""

    def __init__(self, store: JobStore, lease_seconds: float, gpu_sizes: tuple[int, ...] = ()) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.gpu_sizes = gpu_sizes

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges, computed now."""
        counts = self.store.count_jobs_by_priority()
        jobs = GaugeMetricFamily("fitjobs_jobs", "Jobs by state and priority.", labels=["state", "priority"])
        for state in JobState:
            found = sorted((priority, count) for (name, priority), count in counts.items() if name == state.value)
            # Every state has a series, so that a query for one that has no job yet returns 0, not nothing.
            for priority, count in found or [(0, 0)]:
                jobs.add_metric([state.value, str(priority)], count)
        yield jobs
        since = self.store.oldest_queued_since()
        yield GaugeMetricFamily("fitjobs_oldest_queued_job_age_seconds",
                                "Seconds the longest-waiting queued job has been queued (0: none waits).",
                                value=max(0.0, (utcnow() - since).total_seconds()) if since else 0.0)
        # The statement KEDA's triggers scale on, for each size offered or queued.
        depth = GaugeMetricFamily("fitjobs_queue_depth", "Queued jobs needing exactly this many GPUs (no request "
                                  "counts as one) of this GPU type (empty: none named), as KEDA's triggers count "
                                  "them.", labels=["gpus", "gpu_type"])
        offered: set[tuple[int, str | None]] = {(size, None) for size in self.gpu_sizes}
        for size, kind in sorted(offered | set(self.store.queued_gpu_sizes()), key=lambda p: (p[0], p[1] or "")):
            depth.add_metric([str(size), kind or ""], self.store.queue_depth(size, kind))
        yield depth
        live = self.store.live_workers(since=utcnow() - timedelta(seconds=3 * self.lease_seconds))
        yield GaugeMetricFamily("fitjobs_workers", "Supervisors heartbeating recently.", value=len(live))
        yield GaugeMetricFamily("fitjobs_worker_gpus", "GPUs offered by those supervisors.",
                                value=sum(worker.gpus for worker in live))
        yield GaugeMetricFamily("fitjobs_worker_slots", "Job slots offered by those supervisors.",
                                value=sum(worker.slots for worker in live))


class FinishedJobsCollector:
    """Histograms of finished jobs' queue wait, start-up and run time by outcome; failures by code."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        """Yield the histograms and the failure counter, computed now."""
        durations = self.store.finished_job_durations({key: bounds for key, (_, bounds, _) in JOB_HISTOGRAMS.items()})
        for key, (name, bounds, documentation) in JOB_HISTOGRAMS.items():
            histogram = HistogramMetricFamily(name, documentation, labels=["outcome"])
            for outcome in durations[key]:
                histogram.add_metric([outcome.outcome], histogram_buckets(outcome, bounds), outcome.total)
            yield histogram
        failures = CounterMetricFamily("fitjobs_job_failures", "Failed jobs by error.code.", labels=["code"])
        for code, count in sorted(self.store.count_failures_by_code().items()):
            failures.add_metric([code], count)
        yield failures


def histogram_buckets(outcome: DurationBuckets, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus' (le, cumulative count) pairs, +Inf last, of one outcome's buckets."""
    return [(str(bound), float(count)) for bound, count in zip(bounds, outcome.cumulative, strict=True)] + [
        ("+Inf", float(outcome.count))]


def process_metrics_dir() -> str | None:
    """The folder where this start's API processes keep their metrics (None: in-process metrics)."""
    folder: str | None = current_app.extensions.get("fitjobs.process_metrics_dir")
    return folder


@blp.route("/metrics")
class PrometheusMetrics(MethodView):
    @blp.doc(responses={"200": {"description": "Prometheus text exposition format.",
                                "content": {"text/plain": {}}}})
    def get(self) -> Response:
        """Jobs by state, queue depth, worker capacity, finished jobs' durations and failures, API
        latency and open event streams, for Prometheus."""
        registry = CollectorRegistry(auto_describe=False)
        settings = current_settings()
        registry.register(QueueCollector(current_store(), settings.lease_seconds, settings.gpu_sizes))
        registry.register(FinishedJobsCollector(current_store()))
        folder = process_metrics_dir()
        if folder:
            MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]  # every worker's, summed
        else:
            registry.register(REQUEST_SECONDS)
            registry.register(OPEN_STREAMS)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
