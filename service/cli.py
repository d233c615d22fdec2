"""The `fitjobs` command: run the service's processes, and talk to a running service."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from service.artifacts import TENSORBOARD_FOLDER
from service.config import ConfigError, Settings
from service.logconfig import configure_logging

log = logging.getLogger("service.cli")


# -- processes ------------------------------------------------------------------------------

# gunicorn's limits on a request's head, made explicit: this API's URLs and headers are short, and
# a client sending more is refused with 400 before any of its headers reach the application.
LIMIT_REQUEST_LINE = 4094
LIMIT_REQUEST_FIELDS = 64
LIMIT_REQUEST_FIELD_SIZE = 8190


# prometheus-client's own variable: where each gunicorn worker writes its metric files.
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def listen_host(settings: Settings) -> str:
    """Where the API listens: FITJOBS_HOST, or loopback while it has no tokens and anonymous callers
    are not allowed (FITJOBS_ALLOW_ANONYMOUS) elsewhere."""
    if settings.tenants or settings.allow_anonymous or settings.host in LOOPBACK_HOSTS:
        return settings.host
    return "::1" if ":" in settings.host else "127.0.0.1"


def anonymous_notice(settings: Settings) -> str | None:
    """What start-up says about an API without tokens; None when it has some."""
    if settings.tenants:
        return None
    host = listen_host(settings)
    if host != settings.host:
        return (f"no API tokens are set (FITJOBS_API_TOKENS, FITJOBS_TENANTS_FILE): listening on {host} only, "
                f"not on FITJOBS_HOST={settings.host}; set tokens, or FITJOBS_ALLOW_ANONYMOUS=1 to let anonymous "
                "callers in from the network")
    return (f"no API tokens are set (FITJOBS_API_TOKENS, FITJOBS_TENANTS_FILE): every caller on {host} is the "
            "anonymous tenant 'default'")


def gunicorn_options(settings: Settings, metrics_dir: str | None = None) -> dict[str, Any]:
    """gunicorn's configuration of `fitjobs api`, from the FITJOBS_API_* settings.

    ``metrics_dir`` is the folder of the workers' metric files (PROMETHEUS_MULTIPROC_DIR).
    """
    from service.api.gunicorn_workers import worker_class

    host = listen_host(settings)
    options: dict[str, Any] = {
        "bind": f"{host}:{settings.port}",
        "workers": settings.api_workers,
        # gunicorn's worker of that class, answering the requests gunicorn itself refuses as problem+json.
        "worker_class": worker_class(settings.api_worker_class),
        "timeout": settings.api_timeout,
        "graceful_timeout": settings.api_graceful_timeout,
        # With gevent this also bounds the time a client may take to send a request's head.
        "keepalive": settings.api_keepalive,
        "limit_request_line": LIMIT_REQUEST_LINE,
        "limit_request_fields": LIMIT_REQUEST_FIELDS,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        "accesslog": "-",
        # gunicorn's default line, then the request id every answer carries (the error log names it too).
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %({x-request-id}o)s',
        "loglevel": settings.log_level.lower(),
        "proc_name": "fitjobs-api",
        # gunicorn's control socket sits in $HOME by default, shared by every gunicorn there.
        "control_socket_disable": True,
        "post_worker_init": check_cooperative_database,
    }
    if metrics_dir:
        def forget_worker_metrics(server: Any, worker: Any) -> None:
            """Drop the live gauges (open streams) of a worker that exited; its counters stay."""
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, metrics_dir)

        options["child_exit"] = forget_worker_metrics
    if settings.api_worker_class == "gevent":
        options["worker_connections"] = settings.api_worker_connections
    else:
        options["threads"] = settings.api_threads
    return options


def check_cooperative_database(worker: Any) -> None:
    """In a gevent worker, refuse to serve if psycopg would block every greenlet while it waits.

    psycopg picks its wait function when first imported: its C one (which blocks the whole
    process) unless gevent has patched `select` by then. The gevent worker patches at start,
    before it loads the app, and the master never imports psycopg, so this holds; checked
    here so that a change that breaks it fails loudly instead of serialising all requests.
    """
    if "gevent" not in type(worker).__module__ or "psycopg" not in sys.modules:
        return
    from psycopg import waiting

    if waiting.wait is getattr(waiting, "wait_c", None):
        raise RuntimeError("psycopg was imported before gevent patched the standard library; "
                           "its database waits would block the whole API worker")
    log.debug("psycopg waits with %s under gevent", getattr(waiting.wait, "__name__", waiting.wait))


def api_arbiter(settings: Settings, metrics_dir: str | None = None) -> Any:
    """The gunicorn master of `fitjobs api`: workers load the app, and SIGTERM drains first.

    This imports gunicorn but not the app: Flask, SQLAlchemy and psycopg are first imported by
    each worker, after gevent has monkey-patched it (see check_cooperative_database).
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.arbiter import Arbiter

    from service.api.lifecycle import create_drain_flag, mark_draining

    class FitjobsGunicorn(BaseApplication):
        def load_config(self) -> None:
            for key, value in gunicorn_options(settings, metrics_dir).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from service.api import create_app

            return create_app(settings, migrate=False, process_metrics_dir=metrics_dir)

    from service.predict_client import PredictServerKeeper

    # The node's predict process, started with the workers and again whenever it dies (FITJOBS_PREDICT_MODELS=0: none).
    predict = PredictServerKeeper(settings.child_environ()) if settings.predict_models > 0 else None

    class DrainingArbiter(Arbiter):
        """SIGTERM: fail readiness and keep serving for the drain period, then stop gracefully.

        It also keeps the node's predict process running (service.predict_client).
        """

        def start(self) -> None:
            super().start()
            if predict is not None:
                predict.ensure()

        def manage_workers(self) -> None:
            super().manage_workers()
            if predict is not None:
                predict.ensure()

        def stop(self, graceful: bool = True) -> None:
            if predict is not None:
                predict.stop()
            super().stop(graceful)

        def handle_term(self) -> None:
            mark_draining()
            log.info("SIGTERM: readiness is false; serving %.0f s more, then finishing in-flight "
                     "requests", settings.api_drain_seconds)
            time.sleep(settings.api_drain_seconds)  # the workers go on serving meanwhile
            super().handle_term()

    create_drain_flag()  # before the arbiter forks any worker, so that each inherits it
    return DrainingArbiter(FitjobsGunicorn())


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the HTTP API with gunicorn."""
    # In a child process, so that this one (the gunicorn master) never imports SQLAlchemy or psycopg.
    migrated = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], env=settings.child_environ(),
                              stdout=subprocess.DEVNULL, check=False)
    if migrated.returncode != 0:
        print(f"fitjobs: the database schema could not be upgraded (exit status {migrated.returncode})",
              file=sys.stderr)
        return 1
    notice = anonymous_notice(settings)
    if notice:
        print(f"fitjobs api: {notice}", file=sys.stderr, flush=True)
    # A fresh folder per start for the workers' metric files: files of an earlier start would
    # add its counts (and its dead workers' open streams) to this one's. prometheus-client reads
    # the variable when a worker first imports it, after the fork; this process never imports it
    # before this line.
    folder = tempfile.mkdtemp(prefix="fitjobs-api-metrics-")
    os.environ[PROMETHEUS_MULTIPROC_DIR] = folder
    try:
        api_arbiter(settings, folder).run()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run this node's supervisor until SIGTERM/SIGINT (or, with --check, report its health)."""
    if args.check:
        return check_worker(settings)
    from service.store import open_store
    from service.supervisor.gpus import GpusNotVisible
    from service.supervisor.worker import Supervisor

    settings.ensure_dirs()
    store = open_store(settings.database_url, migrate=True)
    try:
        supervisor = Supervisor(settings, store, once_wait=args.wait if args.once else None)
    except GpusNotVisible as exc:
        print(f"fitjobs worker: not starting: {exc}", file=sys.stderr)
        return 3
    if args.gpus is not None and len(supervisor.gpus.ids) != args.gpus:
        # A pod sized for N GPUs that sees another number must not take jobs of that other size.
        print(f"fitjobs worker: not starting: --gpus {args.gpus}, but this worker has "
              f"{len(supervisor.gpus.ids)} GPU(s) ({','.join(supervisor.gpus.ids) or 'none'}; FITJOBS_GPUS="
              f"{settings.environ.get('FITJOBS_GPUS', 'auto')})", file=sys.stderr)
        return 3
    supervisor.run()
    return 0


def check_worker(settings: Settings) -> int:
    """Exit status of `fitjobs worker --check`: 0 when the supervisor loop beat recently."""
    from service.supervisor.health import check_heartbeat

    report = check_heartbeat(settings.worker_heartbeat_file, settings.worker_health_seconds)
    if report.healthy:
        print(f"fitjobs worker: healthy: {report.message}")
        return 0
    print(f"fitjobs worker: unhealthy: {report.message}", file=sys.stderr)
    return 1


def check_serve(settings: Settings) -> int:
    """Exit status of `fitjobs serve --check`: the supervisor's loop beat recently and the API answers."""
    if check_worker(settings) != 0:
        return 1
    # A wildcard listen address is reached on the loopback address of its family.
    listening = listen_host(settings)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(listening, listening)
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"fitjobs serve: unhealthy: the API at {url} does not answer: {exc}", file=sys.stderr)
        return 1
    print(f"fitjobs serve: healthy: the API at {url} answered {status}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """API and supervisor together on this machine; Ctrl-C or SIGTERM stops both."""
    if args.check:
        return check_serve(settings)
    from service.store import open_store
    from service.supervisor.child import die_with_parent

    settings.ensure_dirs()
    open_store(settings.database_url, migrate=True).engine.dispose()
    env = settings.child_environ()
    env.update(FITJOBS_HOST=settings.host, FITJOBS_PORT=str(settings.port))
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    children = [subprocess.Popen([sys.executable, "-m", "service.cli", role], env=env,
                                 preexec_fn=die_with_parent) for role in ("api", "worker")]
    print(f"fitjobs serving on http://{listen_host(settings)}:{settings.port} "
          f"(data in {settings.home}); Ctrl-C stops it", flush=True)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace + 30
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0 if stopping else 1


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Upgrade the database schema to the newest revision."""
    from service.store import open_store

    open_store(settings.database_url, migrate=True)
    print("database schema is current")
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Run one retention pass now (FITJOBS_RETENTION_DAYS, or --days), e.g. from a CronJob; print what it did."""
    from service.store import open_store
    from service.store.job_store import utcnow
    from service.supervisor.retention import prune

    days = settings.retention_days if args.days is None else args.days
    if days <= 0:
        print("fitjobs prune: nothing to do: FITJOBS_RETENTION_DAYS is 0 (keep everything) and --days is not given",
              file=sys.stderr)
        return 2
    store = open_store(settings.database_url, migrate=True)
    report = prune(settings, store, now=utcnow(), days=days)
    if report.skipped:
        print("fitjobs prune: another retention pass is running; nothing done")
        return 0
    print(f"deleted {len(report.jobs)} job(s) and {len(report.uploads)} upload(s) older than {days:g} day(s); "
          f"removed the files of {len(report.leftovers)} deleted job(s); kept {len(report.kept_jobs)} job(s) and "
          f"{len(report.kept_uploads)} upload(s) still needed")
    return 0


def generate_openapi() -> str:
    """The OpenAPI document, generated from the schemas (no running service needed)."""
    from service.api import create_app

    with tempfile.TemporaryDirectory() as home:
        app = create_app(Settings.from_env({"FITJOBS_HOME": home}))
        with app.app_context():
            text: str = app.extensions["fitjobs.api"].spec.to_yaml()
        app.extensions["fitjobs.store"].engine.dispose()
    return text


def cmd_openapi(args: argparse.Namespace, settings: Settings) -> int:
    """Print (or write) the OpenAPI document."""
    text = generate_openapi()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# -- client commands -----------------------------------------------------------------------------
# Exit statuses of the commands that wait for a job: 0 succeeded, 1 failed, 2 cancelled, 3 timed
# out (service.job_views). Any other command exits 1 when the service refuses it or cannot be reached.

def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from service.client import FitjobsClient

    # httpx logs every request at INFO; a command's output is its own.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))

    # FITJOBS_TOKEN (a tenant's token), else the first of FITJOBS_API_TOKENS.
    return FitjobsClient.from_settings(settings, url=args.url)


def _console() -> Any:
    from rich.console import Console

    # Progress and tables go to stderr, so stdout holds only what a script reads (ids, paths, JSON).
    return Console(stderr=True, highlight=False)


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _read_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(Path(args.spec).read_text())
    if args.model:
        spec["model"] = args.model
    return spec


def _watch(args: argparse.Namespace, settings: Settings, job_id: str, follow_events: bool) -> int:
    from service.job_views import EXIT_BY_STATE, EXIT_TIMED_OUT, describe, watch_job

    client = _client(args, settings)
    if not args.json:
        status, job = watch_job(client, job_id, console=_console(), timeout=args.timeout,
                                follow_events=follow_events)
        print(describe(job))
        return status
    # Machine output: the events as JSON lines while following, then the final job.
    from service.client import WaitTimeout

    follower, timed_out = None, threading.Event()
    if follow_events:
        def print_events() -> None:
            for event in client.follow(job_id):
                if timed_out.is_set():
                    return
                print(json.dumps(event, sort_keys=True), flush=True)

        follower = threading.Thread(target=print_events, name="fitjobs-follow", daemon=True)
        follower.start()
    try:
        job = client.wait(job_id, timeout=args.timeout)
    except WaitTimeout as exc:
        timed_out.set()
        _print_json(exc.job)
        return EXIT_TIMED_OUT
    if follower is not None:
        follower.join(timeout=30)  # the stream ends with the job's final event
    _print_json(job)
    return EXIT_BY_STATE[job["state"]]


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a spec file; prints the new job's id (or follows it to the end with --wait)."""
    job = _client(args, settings).submit(_read_spec(args), idempotency_key=args.idempotency_key)
    if args.json and not args.wait:
        _print_json(job)
        return 0
    if not args.json:
        print(job["id"], flush=True)
    if args.wait:
        return _watch(args, settings, job["id"], follow_events=False)
    return 0


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Dry-run a spec file: exit 0 when it would train, 1 with its problems otherwise."""
    from service.client import ValidationFailed

    try:
        report = _client(args, settings).validate(_read_spec(args))
    except ValidationFailed as exc:
        if exc.report is None:
            raise
        report = exc.report
    if args.json:
        _print_json(report)
    else:
        splits = ", ".join(f"{name}: {split.get('rows')} rows" for name, split in (report.get("splits") or {}).items())
        print(f"{'valid' if report.get('valid') else 'invalid'}: {report.get('num_labels')} labels, {splits}, "
              f"{report.get('steps_per_epoch')} steps per epoch")
        for kind in ("problems", "warnings"):
            for finding in report.get(kind) or []:
                print(f"  {kind[:-1]}: [{finding.get('code')}] {finding.get('message')}")
    return 0 if report.get("valid") else 1


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    """Draw a job's progress until it ends; exit 0 succeeded, 1 failed, 2 cancelled, 3 timed out."""
    return _watch(args, settings, args.job_id, follow_events=False)


def cmd_follow(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job's events as they happen (with its progress) until it ends; exit as `wait`."""
    return _watch(args, settings, args.job_id, follow_events=True)


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    """Show a job."""
    job = _client(args, settings).get_job(args.job_id)
    if args.json:
        _print_json(job)
    else:
        from service.job_views import job_table

        _console().print(job_table(job))
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """One line per job, newest first (every page up to --limit; 0: all)."""
    from service.job_views import describe

    jobs = _client(args, settings).list_jobs(state=args.state, page_size=min(args.limit, 200) if args.limit else 200)
    chosen = list(itertools.islice(jobs, args.limit or None))
    if args.json:
        _print_json(chosen)
    else:
        for job in chosen:
            print(describe(job))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel a job."""
    from service.job_views import describe

    job = _client(args, settings).cancel(args.job_id)
    _print_json(job) if args.json else print(describe(job))
    return 0


def cmd_delete(args: argparse.Namespace, settings: Settings) -> int:
    """Delete a finished job and its files."""
    _client(args, settings).delete_job(args.job_id)
    _print_json({"id": args.job_id, "deleted": True}) if args.json else print(f"{args.job_id} deleted")
    return 0


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    """Show a job's per-epoch metrics (or all series with --json); --plot writes a PNG of the curves."""
    metrics = _client(args, settings).metrics(args.job_id)
    if args.plot:
        from service.job_views import plot_metrics

        plot_metrics(metrics, Path(args.plot), args.job_id)
    if args.json:
        _print_json(metrics)
    else:
        from service.job_views import metrics_table

        _console().print(metrics_table(metrics))
        if args.plot:
            print(args.plot)
    return 0


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """Print the trainer log."""
    text = _client(args, settings).logs(args.job_id)
    _print_json({"id": args.job_id, "log": text}) if args.json else sys.stdout.write(text)
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    """Download a job's model.tar.gz (or one artifact), verified against the size and SHA-256 the API gives."""
    default = f"{args.job_id}.model.tar.gz" if args.artifact is None else Path(args.artifact).name
    done = _client(args, settings).download(args.job_id, Path(args.output or default), name=args.artifact)
    if args.json:
        _print_json({"path": str(done.path), "size": done.size, "sha256": done.sha256,
                     "digest_checked": done.digest_checked})
    else:
        print(done.path)
    return 0


TENSORBOARD_PREFIX = f"{TENSORBOARD_FOLDER}/"  # the published artifacts of the trainer's TensorBoard files


def download_tensorboard_logs(client: Any, job_ids: list[str], folder: Path) -> dict[str, Path]:
    """Download each job's `tensorboard/` artifacts into ``folder``/<job id>; the folder of each job that has some."""
    found: dict[str, Path] = {}
    for job_id in job_ids:
        names = [a["name"] for a in client.artifacts(job_id) if a["name"].startswith(TENSORBOARD_PREFIX)]
        for name in names:
            client.download(job_id, folder / job_id / name[len(TENSORBOARD_PREFIX):], name=name)
        if names:
            found[job_id] = folder / job_id
    return found


def tensorboard_command(logdirs: dict[str, Path], extra: list[str]) -> list[str]:
    """TensorBoard of this Python (a dependency of fitjobs) with ``--logdir_spec id1:dir1,id2:dir2``: each run
    named by its job id."""
    spec = ",".join(f"{job_id}:{folder}" for job_id, folder in logdirs.items())
    return [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec, *extra]


def cmd_tensorboard(args: argparse.Namespace, settings: Settings) -> int:
    """Download the jobs' TensorBoard logs into one folder and open TensorBoard on it."""
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fitjobs-tensorboard-"))
    logdirs = download_tensorboard_logs(_client(args, settings), args.job_ids, folder)
    missing = [job_id for job_id in args.job_ids if job_id not in logdirs]
    for job_id in missing:
        print(f"fitjobs: job {job_id} has no {TENSORBOARD_PREFIX} artifacts", file=sys.stderr)
    if not logdirs:
        return 1
    command = tensorboard_command(logdirs, ["--port", str(args.port)] if args.port else [])
    if args.print_command:
        _print_json({"command": command, "logdirs": {k: str(v) for k, v in logdirs.items()}}) if args.json \
            else print(shlex.join(command))
        return 0
    if importlib.util.find_spec("tensorboard") is None:
        print("fitjobs: tensorboard is not installed (pip install tensorboard); the logs are in "
              f"{folder}", file=sys.stderr)
        return 1
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


def reporting_api_errors(func: Any) -> Any:
    """A client command that prints the service's problem details instead of a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        # Imported here: httpx (and with it ssl) must stay out of the gunicorn master,
        # which gevent workers monkey-patch after it forks them.
        from service.client import ApiError, FitjobsError

        try:
            return int(func(args, settings) or 0)
        except ApiError as exc:
            if getattr(args, "json", False):
                _print_json({"status": exc.status, **exc.problem})
            print(f"fitjobs: {exc}", file=sys.stderr)
            for path, texts in exc.errors.items():
                print(f"  {path}: {' '.join(texts)}", file=sys.stderr)
            return 1
        except FitjobsError as exc:
            print(f"fitjobs: {exc}", file=sys.stderr)
            return 1

    return run


def non_negative_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fitjobs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    for name, func, text in (("serve", cmd_serve, "Run API + supervisor on this machine."),
                             ("api", cmd_api, "Run the HTTP API (gunicorn).")):
        command = add(name, func, text)
        command.add_argument("--host", help="listen address (FITJOBS_HOST)")
        command.add_argument("--port", type=int, help="listen port (FITJOBS_PORT)")
        if name == "serve":
            command.add_argument("--check", action="store_true",
                                 help="instead of serving, exit 0 when the local supervisor loop completed a "
                                      "pass within FITJOBS_WORKER_HEALTH_SECONDS and the API answers /healthz, "
                                      "1 otherwise (a probe)")
    worker = add("worker", cmd_worker, "Run this node's supervisor (claims and trains jobs).")
    worker.add_argument(
        "--check", action="store_true",
        help="instead of running, exit 0 when this node's supervisor loop completed a pass within "
             "FITJOBS_WORKER_HEALTH_SECONDS (FITJOBS_WORKER_HEARTBEAT_FILE), 1 otherwise (a probe)")
    worker.add_argument(
        "--once", action="store_true",
        help="claim at most one job that needs exactly this worker's GPUs, train it and exit 0; exit 0 "
             "too when none is queued within --wait seconds (a pod scaled from the queue, e.g. by KEDA)")
    worker.add_argument("--wait", type=non_negative_seconds, default=60.0, metavar="SECONDS",
                        help="with --once: how long to wait for a job (default 60)")
    worker.add_argument("--gpus", type=int, metavar="N",
                        help="the number of GPUs this worker must have (found as FITJOBS_GPUS says); it "
                             "exits 3 when it has another number")
    add("migrate", cmd_migrate, "Upgrade the database schema.")
    add("prune", cmd_prune, "Delete finished jobs and unused uploads older than the retention period, now."
        ).add_argument("--days", type=float, metavar="DAYS",
                       help="keep this many days instead of FITJOBS_RETENTION_DAYS")
    add("openapi", cmd_openapi, "Print the OpenAPI document.").add_argument("--output", "-o")

    def client_command(name: str, func: Any, text: str, job: bool = True,
                       aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=text, description=text, aliases=list(aliases))
        command.set_defaults(func=reporting_api_errors(func))
        command.add_argument("--url", help="service URL (FITJOBS_URL, default http://127.0.0.1:8080)")
        command.add_argument("--json", action="store_true", help="machine output: JSON on stdout")
        if job:
            command.add_argument("job_id")
        return command

    def spec_command(name: str, func: Any, text: str) -> argparse.ArgumentParser:
        command = client_command(name, func, text, job=False)
        command.add_argument("spec", help="path to a JSON training spec")
        command.add_argument("--model", help="override the spec's `model`")
        return command

    timeout_help = "give up after this many seconds and exit 3 (default: wait for the end)"
    submit = spec_command("submit", cmd_submit, "Submit a training spec (JSON file).")
    submit.add_argument("--wait", action="store_true",
                        help="draw its progress until it ends; exit 0 succeeded, 1 failed, 2 cancelled, 3 timed out")
    submit.add_argument("--timeout", type=non_negative_seconds, default=None, help=timeout_help)
    submit.add_argument("--idempotency-key", help="send this Idempotency-Key (default: a new one per submit)")
    spec_command("validate", cmd_validate, "Dry-run a training spec: data, labels, tokenizer; trains nothing.")
    for name, func, text in (("wait", cmd_wait, "Draw a job's progress until it ends."),
                             ("follow", cmd_follow, "Print a job's events live, with its progress, until it ends.")):
        client_command(name, func, text).add_argument("--timeout", type=non_negative_seconds, default=None,
                                                      help=timeout_help)
    client_command("show", cmd_show, "Show a job.", aliases=("status",))
    listing = client_command("list", cmd_list, "List jobs, newest first.", job=False)
    listing.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    listing.add_argument("--limit", type=int, default=20, help="at most this many (0: all; default 20)")
    client_command("cancel", cmd_cancel, "Cancel a job.")
    client_command("delete", cmd_delete, "Delete a finished job and its files.")
    client_command("metrics", cmd_metrics, "Show a job's metrics.").add_argument(
        "--plot", metavar="PNG", help="also write the loss and accuracy curves to this PNG file")
    client_command("logs", cmd_logs, "Show a job's trainer log.")
    download = client_command("download", cmd_download, "Download a job's model.tar.gz (or one artifact), verified.")
    download.add_argument("--output", "-o", help="file to write (default JOB_ID.model.tar.gz, or the artifact's name)")
    download.add_argument("--artifact", metavar="NAME", help="an artifact of GET /v1/jobs/{id}/artifacts instead")
    board = client_command("tensorboard", cmd_tensorboard, "Open TensorBoard on the jobs' training logs.", job=False)
    board.add_argument("job_ids", nargs="+", metavar="JOB")
    board.add_argument("--dir", help="download the logs here and keep them (default: a temporary folder)")
    board.add_argument("--port", type=int, help="TensorBoard's port")
    board.add_argument("--print-command", action="store_true",
                       help="download, print the tensorboard command line and exit without running it")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fitjobs` console script."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key in ("host", "port")
                 if (value := getattr(args, key, None)) is not None}
    try:
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        print(f"fitjobs: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return int(args.func(args, settings) or 0)
    except (OSError, ValueError, TimeoutError) as exc:
        print(f"fitjobs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
