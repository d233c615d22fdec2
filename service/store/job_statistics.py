"""Statements that sum up finished jobs for Prometheus: durations in buckets, failures by code.

Each statement aggregates inside the database and returns a row per outcome (or code, or
state), so a scrape moves a few numbers however many jobs there are; the durations cost one
pass over the finished jobs and, for start-up, one indexed look-up of events per job. The durations are those of the
attempt that ended the job, as `result.phases` reports them:

- queue wait: the job's creation to the claim of that attempt (the `queued` phase);
- start-up: that attempt's trainer getting ready, from its process start (or a warm trainer's
  assignment) to the training libraries imported (`startup_seconds` of its `trainer_started`
  event; the `startup` phase);
- run: that claim to the job's end.

A job that was never claimed (cancelled while queued, or reused from an identical job) has no
such durations and is left out of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Select, case, func, literal, select
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


@compiles(seconds_between)  # PostgreSQL's arithmetic, the only other dialect the store runs on
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


DURATIONS: dict[str, Callable[[], ColumnElement[Any]]] = {
    "queue_wait": queue_wait_seconds, "startup": startup_seconds, "run": run_seconds}


def duration_buckets_query(bounds: Mapping[str, Sequence[float]]) -> Select[Any]:
    """One row per outcome: for each duration named in ``bounds`` (DURATIONS), the count and sum of
    finished jobs that have it and a cumulative count per bound, all in one pass over the jobs."""
    measured = (select(jobs.c.state.label("outcome"), *(DURATIONS[name]().label(name) for name in bounds))
                .where(jobs.c.state.in_(FINISHED), jobs.c.started_at.is_not(None),
                       jobs.c.finished_at.is_not(None))
                # Computed once per job: inlined, each bucket's CASE would compute the duration
                # (and run the start-up look-up) again; this measured 7x faster on SQLite.
                .cte("measured").prefix_with("MATERIALIZED"))
    columns: list[ColumnElement[Any]] = []
    for name, limits in bounds.items():
        seconds = measured.c[name]
        # Clock steps can make a duration slightly negative; it counts as zero. A NULL (no
        # start-up recorded) is in no count, sum or bucket.
        clamped = case((seconds < 0, literal(0.0)), else_=seconds)
        columns += [func.count(seconds).label(f"{name}_count"),
                    func.coalesce(func.sum(clamped), 0.0).label(f"{name}_total")]
        columns += [func.sum(case((clamped <= bound, 1), else_=0)).label(f"{name}_le_{index}")
                    for index, bound in enumerate(limits)]
    return select(measured.c.outcome, *columns).group_by(measured.c.outcome)


def rows_to_buckets(rows: Sequence[Any], bounds: Mapping[str, Sequence[float]]) -> dict[str, list[DurationBuckets]]:
    """The rows of duration_buckets_query: per duration, one DurationBuckets per outcome (zeros for none)."""
    found = {row.outcome: row._mapping for row in rows}
    durations: dict[str, list[DurationBuckets]] = {}
    for name, limits in bounds.items():
        durations[name] = []
        for outcome in FINISHED:
            row = found.get(outcome)
            if row is None:
                durations[name].append(DurationBuckets(outcome, tuple(0 for _ in limits), 0, 0.0))
                continue
            cumulative = tuple(int(row[f"{name}_le_{index}"] or 0) for index in range(len(limits)))
            durations[name].append(DurationBuckets(outcome, cumulative, int(row[f"{name}_count"]),
                                                   float(row[f"{name}_total"] or 0.0)))
    return durations


def failures_by_code_query() -> Select[Any]:
    """Failed jobs per error code."""
    return (select(jobs.c.error_code, func.count()).where(jobs.c.state == JobState.FAILED.value)
            .group_by(jobs.c.error_code))


def jobs_by_state_and_priority_query() -> Select[Any]:
    """Jobs per (state, priority)."""
    return select(jobs.c.state, jobs.c.priority, func.count()).group_by(jobs.c.state, jobs.c.priority)


def oldest_queued_query() -> Select[Any]:
    """When the longest-waiting queued job entered the queue (its last move, to queued)."""
    return select(func.min(jobs.c.updated_at)).where(jobs.c.state == JobState.QUEUED.value)
