"""Queued jobs of one GPU size: the statement the store counts with, and KEDA's triggers run.

The cluster overlay scales one KEDA ScaledJob per GPU size offered (and per GPU type, where
jobs name one); each one's PostgreSQL trigger runs ``queue_depth_sql(size[, type])``, so a pod
is made for every queued job of its size and type. A job without a GPU request counts as one
GPU, as a GPU worker runs it on one.

A running job whose lease has lapsed counts too: its worker is gone (a pod killed with its
node), and only a live worker's reaper queues it again. Counting it makes KEDA start a pod
of its size, which reaps it and then claims it.
"""

from __future__ import annotations

import re

from service.jobs import GPU_TYPE_PATTERN

QUEUE_DEPTH_SQL = ("SELECT count(*) FROM jobs WHERE (state = 'queued' OR (state = 'running' AND "
                   "lease_expires_at < CURRENT_TIMESTAMP)) AND COALESCE(gpus, 1) = {gpus} AND {gpu_type}")


def queue_depth_sql(gpus: int, gpu_type: str | None = None) -> str:
    """The statement counting the jobs waiting for a worker (queued, or running on a lapsed lease) that need
    exactly ``gpus`` GPUs of ``gpu_type`` (None: no type)."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ValueError(f"a GPU count is a non-negative integer, not {gpus!r}")
    if gpu_type is not None and not (isinstance(gpu_type, str) and re.fullmatch(GPU_TYPE_PATTERN, gpu_type)):
        raise ValueError(f"a GPU type is a label value like `h100`, not {gpu_type!r}")
    typed = "gpu_type IS NULL" if gpu_type is None else f"gpu_type = '{gpu_type}'"
    return QUEUE_DEPTH_SQL.format(gpus=gpus, gpu_type=typed)
