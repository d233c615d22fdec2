"""Queued jobs of one GPU size: the statement the store counts with, and KEDA's triggers run.

The cluster overlay scales one KEDA ScaledJob per GPU size offered; each one's PostgreSQL
trigger runs ``queue_depth_sql(size)``, so a pod is made for every queued job of its size.
A job without a GPU request counts as one GPU, as a GPU worker runs it on one.
"""

from __future__ import annotations

QUEUE_DEPTH_SQL = "SELECT count(*) FROM jobs WHERE state = 'queued' AND COALESCE(gpus, 1) = {gpus}"


def queue_depth_sql(gpus: int) -> str:
    """The statement counting queued jobs that need exactly ``gpus`` GPUs."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"a GPU count is a non-negative integer, not {gpus!r}")
    return QUEUE_DEPTH_SQL.format(gpus=gpus)
