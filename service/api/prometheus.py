"""GET /metrics: Prometheus exposition of the queue, read from the database at scrape time.

Reading the numbers from the database (not from process-local counters) gives every API
replica and gunicorn worker the same answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from service.api.context import current_settings, current_store
from service.jobs import JobState
from service.store import JobStore
from service.store.job_store import utcnow

blp = Blueprint("prometheus", __name__, description="Prometheus metrics.")


class QueueCollector:
    """Jobs per state, live workers and their GPUs."""

    def __init__(self, store: JobStore, lease_seconds: float, gpu_sizes: tuple[int, ...] = ()) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.gpu_sizes = gpu_sizes

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges, computed now."""
        counts = self.store.count_jobs()
        jobs = GaugeMetricFamily("fitjobs_jobs", "Jobs by state.", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
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


@blp.route("/metrics")
class PrometheusMetrics(MethodView):
    @blp.doc(responses={"200": {"description": "Prometheus text exposition format.",
                                "content": {"text/plain": {}}}})
    def get(self) -> Response:
        """Queue depth by state and worker capacity, for Prometheus."""
        registry = CollectorRegistry(auto_describe=False)
        settings = current_settings()
        registry.register(QueueCollector(current_store(), settings.lease_seconds, settings.gpu_sizes))
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
