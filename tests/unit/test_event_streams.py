"""The API's event fan-out on a real store: one query feeds every stream, each from its own cursor."""

from __future__ import annotations

import queue
import time
from collections.abc import Collection
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api import create_app
from service.api.event_streams import EventStreams, Subscription, event_frame, open_stream, stream_frames
from service.config import Settings
from service.errors import TooManyStreams
from service.jobs import JobEvent, JobState
from service.store import JobStore

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}


def running_job(store: JobStore) -> str:
    job, _ = store.create_job(SPEC)
    claimed = store.claim_next_job("node")
    assert claimed is not None and claimed.id == job.id
    return job.id


def drain(subscription: Subscription) -> list[int]:
    ids: list[int] = []
    while True:
        try:
            batch = subscription.inbox.get_nowait()
        except queue.Empty:
            return ids
        assert batch is not None
        ids += [frame.event_id for frame in batch]


class CountingStore(JobStore):
    """A real JobStore on another's database that counts the poller's queries."""

    def __init__(self, store: JobStore) -> None:
        super().__init__(store.engine)
        self.queries = 0

    def events_of_jobs(self, job_ids: Collection[str], *, after: int) -> list[JobEvent]:
        self.queries += 1
        return super().events_of_jobs(job_ids, after=after)


def test_one_query_feeds_every_stream_from_its_own_cursor(store: JobStore) -> None:
    first, second = running_job(store), running_job(store)
    counting = CountingStore(store)
    streams = EventStreams(counting, poll_seconds=60, max_streams=10)
    newest = {job_id: store.last_event_id(job_id) for job_id in (first, second)}
    fresh = Subscription(first, newest[first])
    from_start = Subscription(first, 0)
    other = Subscription(second, newest[second])
    for job_id in (first, second, first):
        store.append_event(job_id, "progress", "step")
    streams.poll_once([fresh, from_start, other])
    assert counting.queries == 1
    every_first = [event.id for event in store.list_events(first)]
    assert drain(from_start) == every_first
    assert drain(fresh) == [i for i in every_first if i > newest[first]]
    assert drain(other) == [i for i in (e.id for e in store.list_events(second)) if i > newest[second]]
    # Nothing new: nothing is handed out again.
    streams.poll_once([fresh, from_start, other])
    assert drain(fresh) == drain(from_start) == drain(other) == []


def test_a_late_commit_below_another_jobs_cursor_is_still_delivered(store: JobStore) -> None:
    # PostgreSQL may commit a lower event id after a higher one: the quiet job keeps its own cursor.
    quiet, busy = running_job(store), running_job(store)
    quiet_cursor = store.last_event_id(quiet)
    store.append_event(busy, "progress", "step")
    busy_cursor = store.last_event_id(busy)
    streams = EventStreams(store, poll_seconds=60, max_streams=10)
    quiet_stream, busy_stream = Subscription(quiet, quiet_cursor), Subscription(busy, busy_cursor)
    streams.poll_once([quiet_stream, busy_stream])
    store.append_event(quiet, "progress", "late")
    streams.poll_once([quiet_stream, busy_stream])
    assert drain(quiet_stream) == [store.last_event_id(quiet)] and drain(busy_stream) == []


def test_streams_beyond_the_cap_are_refused_with_retry_after(store: JobStore) -> None:
    job_id = running_job(store)
    streams = EventStreams(store, poll_seconds=60, max_streams=2)
    held = [streams.subscribe(job_id, 0) for _ in range(2)]
    with pytest.raises(TooManyStreams) as refused:
        streams.subscribe(job_id, 0)
    assert refused.value.status == 503 and int(refused.value.response_headers()["Retry-After"]) > 0
    streams.unsubscribe(held[0])
    streams.subscribe(job_id, 0)
    assert streams.open_streams == 2


def test_a_draining_node_ends_every_stream(store: JobStore) -> None:
    job_id = running_job(store)
    draining = False
    streams = EventStreams(store, poll_seconds=60, max_streams=10, draining=lambda: draining)
    subscription = streams.subscribe(job_id, store.last_event_id(job_id))
    draining = True
    streams.poll_once([subscription])
    assert subscription.inbox.get_nowait() is None and streams.open_streams == 0


def test_a_stream_ends_after_the_terminal_event_and_sends_keep_alives_while_quiet(store: JobStore) -> None:
    job_id = running_job(store)
    streams = EventStreams(store, poll_seconds=0.05, max_streams=10)
    backlog, subscription = open_stream(streams, store.get_job(job_id), 0)
    assert [event.state for event in backlog] == [JobState.QUEUED, JobState.RUNNING] and subscription is not None
    frames = stream_frames(streams, backlog, subscription, heartbeat_seconds=0.1)
    assert next(frames) == ""  # sends the response headers before any event
    assert [next(frames) for _ in backlog] == [event_frame(event) for event in backlog]
    assert next(frames) == ": keep-alive\n\n"  # nothing happened for 0.1 s
    store.append_event(job_id, "progress", "step")
    store.transition(job_id, JobState.SUCCEEDED, "done", attempt=1)
    rest = [frame for chunk in frames for frame in chunk.split("\n\n") if frame and not frame.startswith(":")]
    assert [frame.split("\n")[1] for frame in rest] == ["event: progress", "event: state"]
    assert '"state": "succeeded"' in rest[-1]
    deadline = time.monotonic() + 5
    while streams.open_streams and time.monotonic() < deadline:
        time.sleep(0.01)
    assert streams.open_streams == 0


def test_a_last_event_id_beyond_the_newest_event_waits_from_the_newest(store: JobStore) -> None:
    job_id = running_job(store)
    streams = EventStreams(store, poll_seconds=60, max_streams=10)
    backlog, subscription = open_stream(streams, store.get_job(job_id), 10_000_000)
    assert backlog == [] and subscription is not None
    assert subscription.after == store.last_event_id(job_id)
    streams.unsubscribe(subscription)


def test_an_ended_job_replays_its_events_and_closes(store: JobStore) -> None:
    job_id = running_job(store)
    store.transition(job_id, JobState.FAILED, "boom", attempt=1)
    streams = EventStreams(store, poll_seconds=60, max_streams=10)
    backlog, subscription = open_stream(streams, store.get_job(job_id), 0)
    assert subscription is None and backlog[-1].state is JobState.FAILED
    assert open_stream(streams, store.get_job(job_id), backlog[-1].id) == ([], None)


def test_the_stream_cap_is_a_503_problem_over_http(tmp_path: Path) -> None:
    settings = Settings.from_env({"FITJOBS_HOME": str(tmp_path), "FITJOBS_API_MAX_STREAMS": "1",
                                  "FITJOBS_API_STREAM_HEARTBEAT_SECONDS": "0.05"})
    app: Flask = create_app(settings)
    client: FlaskClient = app.test_client()
    try:
        job_id = client.post("/v1/jobs", json=SPEC).get_json()["id"]
        held = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, buffered=False)
        assert held.status_code == 200
        refused = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"})
        assert refused.status_code == 503 and refused.mimetype == "application/problem+json"
        assert int(refused.headers["Retry-After"]) > 0
        assert refused.get_json()["type"].endswith("/too-many-streams")
        held.close()  # the server side closes the stream's iterable: its slot is free again
        again = client.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}, buffered=False)
        assert again.status_code == 200
        again.close()
    finally:
        app.extensions["fitjobs.store"].engine.dispose()
