"""Live event streams of jobs: one poller per API process feeds every open stream.

Each `GET /v1/jobs/{id}/events` with `Accept: text/event-stream` subscribes here and then
only waits for its queue. One poller (a thread; a greenlet under gunicorn's gevent workers,
which patch `threading`) reads the new events of every job that has an open stream in one
query per FITJOBS_API_STREAM_POLL_SECONDS and hands each stream the events it has not seen.
So the database sees one query per interval however many clients follow jobs.

Cursors are kept per stream and are event ids. The poller reads from the lowest cursor of all
streams rather than from the newest id it has seen: on PostgreSQL a transaction that took a
lower id can commit after one that took a higher id, and a single global cursor would skip
its event. Events are few per job (state changes and milestones), so re-reading the ones
above the lowest cursor costs little.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from service.api.lifecycle import is_draining
from service.api.request_metrics import OPEN_STREAMS
from service.errors import TooManyStreams
from service.jobs import Job, JobEvent
from service.schemas import EventSchema
from service.store import JobStore

log = logging.getLogger(__name__)

KEEP_ALIVE_FRAME = ": keep-alive\n\n"
BACKLOG_PAGE = 1000


@dataclass(frozen=True)
class EventFrame:
    """An event rendered once as its SSE frame, for every stream that sends it."""

    event_id: int
    text: str
    last: bool  # the job's move to a terminal state: the stream ends after it

    @classmethod
    def of(cls, event: JobEvent) -> EventFrame:
        """The frame of ``event``."""
        return cls(event.id, event_frame(event), ends_stream(event))


@dataclass(eq=False)
class Subscription:
    """One open stream: the job it follows, the last event id it was given, and its inbox."""

    job_id: str
    after: int
    # Batches of frames, oldest first; None means "stop now" (the node is draining).
    inbox: queue.Queue[list[EventFrame] | None] = field(default_factory=queue.Queue)


class EventStreams:
    """The streams one API process holds open, and the single poller that feeds them."""

    def __init__(self, store: JobStore, *, poll_seconds: float, max_streams: int,
                 draining: Callable[[], bool] = is_draining) -> None:
        self.store = store
        self.poll_seconds = poll_seconds
        self.max_streams = max_streams
        self.draining = draining
        self._subscriptions: set[Subscription] = set()
        self._lock = threading.Lock()
        self._poller: threading.Thread | None = None

    @property
    def open_streams(self) -> int:
        """Streams this process follows right now."""
        return len(self._subscriptions)

    def subscribe(self, job_id: str, after: int) -> Subscription:
        """Follow ``job_id`` from event id ``after`` on; TooManyStreams beyond FITJOBS_API_MAX_STREAMS."""
        subscription = Subscription(job_id, after)
        with self._lock:
            if len(self._subscriptions) >= self.max_streams:
                raise TooManyStreams(f"This API process already follows {self.max_streams} event streams "
                                     "(FITJOBS_API_MAX_STREAMS); retry later or poll GET /v1/jobs/{id}/events.")
            self._subscriptions.add(subscription)
            # Started on demand, so it runs in the serving process (after gunicorn forked and
            # gevent patched threading) and stops once no stream is left.
            if self._poller is None:
                self._poller = threading.Thread(target=self._run, name="fitjobs-event-poller", daemon=True)
                self._poller.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop feeding a stream (idempotent)."""
        with self._lock:
            self._subscriptions.discard(subscription)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._subscriptions:
                    self._poller = None
                    return
                subscriptions = list(self._subscriptions)
            try:
                self.poll_once(subscriptions)
            except SQLAlchemyError as exc:
                # The database is away; the streams stay open and catch up once it is back.
                log.warning("event poller: %s", str(exc).splitlines()[0])
            except Exception:
                log.exception("event poller failed; it goes on at the next interval")
            time.sleep(self.poll_seconds)

    def poll_once(self, subscriptions: list[Subscription]) -> None:
        """One pass: read the new events of every followed job and hand them to their streams."""
        if self.draining():
            for subscription in subscriptions:
                self.unsubscribe(subscription)
                subscription.inbox.put(None)
            return
        events = self.store.events_of_jobs({s.job_id for s in subscriptions},
                                           after=min(s.after for s in subscriptions))
        by_job: dict[str, list[EventFrame]] = defaultdict(list)
        for event in events:
            by_job[event.job_id].append(EventFrame.of(event))  # encoded once, however many streams send it
        for subscription in subscriptions:
            new = [frame for frame in by_job.get(subscription.job_id, ()) if frame.event_id > subscription.after]
            if new:
                subscription.after = new[-1].event_id
                subscription.inbox.put(new)


def event_frame(event: JobEvent) -> str:
    """One Server-Sent Events frame; its id is the event's id, so Last-Event-ID resumes after it."""
    return f"id: {event.id}\nevent: {event.kind}\ndata: {EventSchema().dumps(asdict(event))}\n\n"


def ends_stream(event: JobEvent) -> bool:
    """Whether this is the job's last event: the move to a terminal state."""
    return event.state is not None and event.state.is_terminal


def open_stream(streams: EventStreams, job: Job, after: int) -> tuple[list[JobEvent], Subscription | None]:
    """The events after ``after`` so far, and a subscription for the rest (None when none will come).

    Subscribing happens here, before the response starts, so that a stream over the limit is
    answered with a 503 instead of a broken 200.
    """
    store = streams.store
    backlog: list[JobEvent] = []
    while True:
        page = store.list_events(job.id, after=backlog[-1].id if backlog else after, limit=BACKLOG_PAGE)
        backlog += page
        if len(page) < BACKLOG_PAGE:
            break
    # The job was read before its events: if it had ended then, its last event is in the backlog.
    if job.state.is_terminal or any(ends_stream(event) for event in backlog) or streams.draining():
        return backlog, None
    # An id beyond the job's newest event cannot have been seen; waiting above it would miss
    # the job's next events, so the stream goes on from its newest event instead.
    cursor = backlog[-1].id if backlog else min(after, store.last_event_id(job.id))
    return backlog, streams.subscribe(job.id, cursor)


def stream_frames(streams: EventStreams, backlog: list[JobEvent], subscription: Subscription | None,
                  heartbeat_seconds: float) -> Iterator[str]:
    """The SSE body: the backlog, then live events, keep-alive comments while quiet; ends with the job."""
    OPEN_STREAMS.inc()
    try:
        # An empty first chunk sends the response headers now, before any event exists.
        yield ""
        for event in backlog:
            yield event_frame(event)
            if ends_stream(event):
                return
        if subscription is None:
            return
        while True:
            try:
                batch = subscription.inbox.get(timeout=heartbeat_seconds)
            except queue.Empty:
                yield KEEP_ALIVE_FRAME
                continue
            if batch is None:
                return  # the node is shutting down; the client reconnects with Last-Event-ID
            ending = next((index for index, frame in enumerate(batch) if frame.last), None)
            sent = batch if ending is None else batch[:ending + 1]
            yield "".join(frame.text for frame in sent)  # one write for the whole batch
            if ending is not None:
                return
    finally:
        OPEN_STREAMS.dec()
        if subscription is not None:
            streams.unsubscribe(subscription)
