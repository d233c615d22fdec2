"""Statements that sum up finished jobs for Prometheus: durations in buckets, failures by code.

Each statement aggregates inside the database and returns one row per outcome, so a scrape
moves a few numbers however many jobs there are; its cost is one pass over the finished jobs
(and, for start-up, one indexed look-up of events per job). The durations are those of the
attempt that ended the job, as `result.phases` reports them:

- queue wait: the job's creation to the claim of that attempt (the `queued` phase);
- start-up: that claim to the trainer being ready (the `startup_seconds` of its
  `trainer_started` event: process start or warm assignment to imports done);
- run: that claim to the job's end.

A job that was never claimed (cancelled while queued, or reused from an identical job) has no
such durations and is left out of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, and_, case, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from service.jobs import TERMINAL_STATES, JobState
from service.store.tables import job_events, jobs

FINISHED = sorted(state.value for state in TERMINAL_STATES)


class seconds_between(FunctionElement[float]):
    """Seconds from one timestamp column to another, in each dialect's own arithmetic."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between)
def _seconds_between_postgresql(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = list(element.clauses)
    return f"EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - {compiler.process(start, **kw)}))"


@compiles(seconds_between, "sqlite")
def _seconds_between_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = list(element.clauses)
    # SQLite keeps timestamps as ISO text; julianday reads them, fractions of seconds included.
    return f"((julianday({compiler.process(end, **kw)}) - julianday({compiler.process(start, **kw)})) * 86400.0)"


@dataclass(frozen=True)
class DurationBuckets:
    """Finished jobs of one outcome counted into cumulative buckets, as a Prometheus histogram holds them."""

    outcome: str
    cumulative: tuple[int, ...]  # jobs at or below each bound, in the bounds' order
    count: int
    total: float


def queue_wait_seconds() -> ColumnElement[float]:
    """Creation to the claim of the attempt that ended the job."""
    return seconds_between(jobs.c.created_at, jobs.c.started_at)


def run_seconds() -> ColumnElement[float]:
    """The claim of the attempt that ended the job to its end."""
    return seconds_between(jobs.c.started_at, jobs.c.finished_at)


def startup_seconds() -> ColumnElement[Any]:
    """The `startup_seconds` of the trainer that ran the job's last attempt (NULL when none started)."""
    return (select(job_events.c.data["startup_seconds"].as_float())
            .where(job_events.c.job_id == jobs.c.id, job_events.c.kind == "trainer_started",
                   job_events.c.created_at >= jobs.c.started_at)
            .order_by(job_events.c.id.desc()).limit(1)
            .correlate(jobs).scalar_subquery())


def duration_buckets_query(duration: ColumnElement[Any], bounds: Sequence[float]) -> Select[Any]:
    """One row per outcome: count, sum and a cumulative count per bound of ``duration`` of finished jobs."""
    measured = (select(jobs.c.state.label("outcome"), duration.label("seconds"))
                .where(jobs.c.state.in_(FINISHED), jobs.c.started_at.is_not(None),
                       jobs.c.finished_at.is_not(None))
                # Computed once per job: inlined, each bucket's CASE would compute the duration
                # (and run the start-up look-up) again; this measured 7x faster on SQLite.
                .cte("measured").prefix_with("MATERIALIZED"))
    seconds = measured.c.seconds
    # Clock steps can make a duration slightly negative; it counts as zero.
    clamped = case((seconds < 0, literal(0.0)), else_=seconds)
    columns = [func.sum(case((clamped <= bound, 1), else_=0)).label(f"le_{index}")
               for index, bound in enumerate(bounds)]
    return (select(measured.c.outcome, func.count(seconds).label("count"),
                   func.coalesce(func.sum(clamped), 0.0).label("total"), *columns)
            .where(seconds.is_not(None)).group_by(measured.c.outcome))


def rows_to_buckets(rows: Sequence[Any], bounds: Sequence[float]) -> list[DurationBuckets]:
    """The rows of duration_buckets_query, one DurationBuckets per outcome (outcomes without jobs: zeros)."""
    found = {row.outcome: row for row in rows}
    buckets = []
    for outcome in FINISHED:
        row = found.get(outcome)
        if row is None:
            buckets.append(DurationBuckets(outcome, tuple(0 for _ in bounds), 0, 0.0))
            continue
        cumulative = tuple(int(getattr(row, f"le_{index}") or 0) for index in range(len(bounds)))
        buckets.append(DurationBuckets(outcome, cumulative, int(row.count), float(row.total or 0.0)))
    return buckets


def failures_by_code_query() -> Select[Any]:
    """Failed jobs per error code."""
    return (select(jobs.c.error_code, func.count()).where(jobs.c.state == JobState.FAILED.value)
            .group_by(jobs.c.error_code))


def jobs_by_state_and_priority_query() -> Select[Any]:
    """Jobs per (state, priority)."""
    return select(jobs.c.state, jobs.c.priority, func.count()).group_by(jobs.c.state, jobs.c.priority)


def oldest_queued_query() -> Select[Any]:
    """When the longest-waiting queued job entered the queue (its last move, to queued)."""
    return select(func.min(jobs.c.updated_at)).where(and_(jobs.c.state == JobState.QUEUED.value))
