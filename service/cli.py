"""The `fitjobs` command: run the service's processes, and talk to a running service."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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

    class DrainingArbiter(Arbiter):
        """SIGTERM: fail readiness and keep serving for the drain period, then stop gracefully."""

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

def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from service.client import FitjobsClient

    # FITJOBS_TOKEN (a tenant's token), else the first of FITJOBS_API_TOKENS.
    return FitjobsClient(args.url or settings.url, token=settings.token or next(iter(settings.api_tokens), None))


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def _describe(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    line = f"{job['id']} {job['state']}"
    if job["state"] == "running" and progress.get("epochs"):
        line += (f" epoch {progress['epoch']}/{progress['epochs']}"
                 f" step {progress['step']}/{progress.get('steps_per_epoch') or '?'}")
    if job.get("error"):
        line += f" [{job['error']['code']}] {job['error']['message']}"
    # A list shows summaries (no result); a single job's result also holds reports and flags.
    numbers = {k: v for k, v in (job.get("result") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        line += " " + " ".join(f"{k}={v:.4f}" for k, v in sorted(numbers.items()))
    return line


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Submit a spec file; prints the new job's id (or waits for it with --wait)."""
    spec = json.loads(Path(args.spec).read_text())
    if args.model:
        spec["model"] = args.model
    job = _client(args, settings).submit(spec)
    print(job["id"])
    if args.wait:
        return _wait(args, settings, job["id"])
    return 0


def _wait(args: argparse.Namespace, settings: Settings, job_id: str) -> int:
    last = ""

    def show(job: dict[str, Any]) -> None:
        nonlocal last
        line = _describe(job)
        if line != last:
            print(line, file=sys.stderr, flush=True)
            last = line

    job = _client(args, settings).wait(job_id, timeout=args.timeout, on_update=show)
    return 0 if job["state"] == "succeeded" else 1


def cmd_wait(args: argparse.Namespace, settings: Settings) -> int:
    """Follow a job until it ends; exit 0 only if it succeeded."""
    return _wait(args, settings, args.job_id)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job as JSON."""
    _print_json(_client(args, settings).get(args.job_id))
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    """One line per job, newest first."""
    for job in _client(args, settings).list(state=args.state, limit=args.limit):
        print(_describe(job))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel a job."""
    print(_describe(_client(args, settings).cancel(args.job_id)))
    return 0


def cmd_metrics(args: argparse.Namespace, settings: Settings) -> int:
    """Print a job's metrics as JSON."""
    _print_json(_client(args, settings).metrics(args.job_id))
    return 0


def cmd_logs(args: argparse.Namespace, settings: Settings) -> int:
    """Print the trainer log."""
    sys.stdout.write(_client(args, settings).logs(args.job_id))
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    """Download a job's model.tar.gz."""
    target = Path(args.output or f"{args.job_id}.model.tar.gz")
    _client(args, settings).download_model(args.job_id, target)
    print(target)
    return 0


def reporting_api_errors(func: Any) -> Any:
    """A client command that prints the service's problem details instead of a traceback."""

    @functools.wraps(func)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        # Imported here: `requests` (and with it ssl) must stay out of the gunicorn master,
        # which gevent workers monkey-patch after it forks them.
        from service.client import ApiError

        try:
            return int(func(args, settings) or 0)
        except ApiError as exc:
            print(f"fitjobs: {exc}", file=sys.stderr)
            for path, texts in (exc.problem.get("errors") or {}).items():
                print(f"  {path}: {' '.join(texts)}", file=sys.stderr)
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
    add("openapi", cmd_openapi, "Print the OpenAPI document.").add_argument("--output", "-o")

    def client_command(name: str, func: Any, text: str, job: bool = True) -> argparse.ArgumentParser:
        command = add(name, reporting_api_errors(func), text)
        command.add_argument("--url", help="service URL (FITJOBS_URL, default http://127.0.0.1:8080)")
        if job:
            command.add_argument("job_id")
        return command

    submit = client_command("submit", cmd_submit, "Submit a training spec (JSON file).", job=False)
    submit.add_argument("spec", help="path to a JSON training spec")
    submit.add_argument("--model", help="override the spec's `model`")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--timeout", type=float, default=None)
    client_command("wait", cmd_wait, "Follow a job until it ends.").add_argument(
        "--timeout", type=float, default=None)
    client_command("status", cmd_status, "Show a job.")
    listing = client_command("list", cmd_list, "List jobs.", job=False)
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int, default=20)
    client_command("cancel", cmd_cancel, "Cancel a job.")
    client_command("metrics", cmd_metrics, "Show a job's metrics.")
    client_command("logs", cmd_logs, "Show a job's trainer log.")
    client_command("download", cmd_download, "Download a job's model.tar.gz.").add_argument(
        "--output", "-o", help="file to write (default JOB_ID.model.tar.gz)")
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
