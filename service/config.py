"""Every setting of the service, read from FITJOBS_* environment variables in one place.

This module is the only reader of ``os.environ`` for configuration. Each setting is declared
once in ``SETTINGS`` with its environment variable, default and meaning; the configuration
reference in the documentation is checked against that table.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import sysconfig
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.tenants import DEFAULT_ROLES, DEFAULT_TENANT, Quotas, Role, Tenant, read_tenants_file, token_hash

if TYPE_CHECKING:
    from service.storage import Storage
    from service.webhooks.destinations import DestinationPolicy, IPNetwork


PREDICT_SOCKET = "predict.sock"
# A Unix socket's path must fit sockaddr_un (108 bytes with its NUL); room is left for a temporary name beside it.
MAX_SOCKET_PATH_BYTES = 96


@dataclass(frozen=True)
class SettingSpec:
    """One FITJOBS_* variable: its name, default (as text) and what it controls."""

    env: str
    attr: str
    default: str
    parse: Callable[[str], object]
    help: str


def _path(value: str) -> Path:
    return Path(value).expanduser()


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _gpu_list(value: str) -> str | tuple[str, ...]:
    # "auto" is resolved by the supervisor (service.supervisor.gpus); an explicit list is kept.
    text = value.strip().lower()
    if text in ("auto", ""):
        return "auto"
    if text == "none":
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise ValueError("must be `auto`, `none` or distinct GPU ids like `0,1`")
    return ids


def _gpu_sizes(value: str) -> tuple[int, ...]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not all(re.fullmatch(r"[0-9]{1,2}", part) for part in parts):
        raise ValueError("must be GPU counts like `1,2,4,8`, or empty")
    sizes = tuple(sorted({int(part) for part in parts}))
    if any(size > 16 for size in sizes):
        raise ValueError("a job asks for at most 16 GPUs")
    return sizes


def _gpu_type(value: str) -> str | None:
    from service.jobs import GPU_TYPE_PATTERN

    text = value.strip()
    if not text:
        return None
    if not re.fullmatch(GPU_TYPE_PATTERN, text):
        raise ValueError("must be a GPU type name like `h100` (letters, digits, `.`, `_`, `-`), or empty")
    return text


def _gpu_types(value: str) -> tuple[str, ...]:
    return tuple(sorted({kind for part in value.split(",") if (kind := _gpu_type(part)) is not None}))


def _token_list(value: str) -> tuple[str, ...]:
    tokens = tuple(part.strip() for part in value.split(",") if part.strip())
    if any(len(token) < 16 for token in tokens):
        raise ValueError("each token must be at least 16 characters")
    return tokens


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be 1 or 0 (true or false)")


def _optional_path(value: str) -> Path | None:
    return Path(value).expanduser().absolute() if value.strip() else None


def _path_list(value: str) -> tuple[Path, ...]:
    # Separated like PATH; an empty value is resolved to the defaults in Settings.from_env.
    return tuple(Path(part).expanduser().absolute() for part in value.split(os.pathsep) if part.strip())


def _positive_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a finite number above 0, got {number}")
    return number


API_WORKER_CLASSES = ("gevent", "gthread")


def _worker_class(value: str) -> str:
    text = value.strip().lower()
    if text not in API_WORKER_CLASSES:
        raise ValueError(f"must be one of {', '.join(API_WORKER_CLASSES)}")
    return text


def _storage_url(value: str) -> str:
    # Empty is resolved to FITJOBS_HOME in Settings.from_env; a bare path is a local folder.
    text = value.strip()
    if not text:
        return ""
    if "://" not in text:
        return Path(text).expanduser().absolute().as_uri()
    scheme = text.split("://", 1)[0].lower()
    if scheme not in ("file", "s3", "gs", "gcs"):
        raise ValueError("must be a folder, file:///folder, s3://bucket/prefix or gs://bucket/prefix")
    if scheme != "file" and not text.split("://", 1)[1].strip("/"):
        raise ValueError("names no bucket")
    return text.rstrip("/")


def _url_prefixes(value: str) -> tuple[str, ...]:
    prefixes = tuple(part.strip() for part in value.split(",") if part.strip())
    for prefix in prefixes:
        scheme, _, rest = prefix.partition("://")
        if scheme not in ("s3", "gs") or not rest.strip("/"):
            raise ValueError(f"{prefix!r} is not an s3://bucket/prefix or gs://bucket/prefix URL")
        if ".." in rest.split("/"):
            raise ValueError(f"{prefix!r} contains a '..' component")
    return prefixes


def _webhook_secret(value: str) -> str:
    from service.webhooks.signing import parse_secret

    text = value.strip()
    if text:
        parse_secret(text)
    return text


def _host_patterns(value: str) -> tuple[str, ...]:
    patterns = tuple(part.strip().lower().rstrip(".") for part in value.split(",") if part.strip())
    for pattern in patterns:
        if not re.fullmatch(r"[a-z0-9*?.:\[\]_-]+", pattern):
            raise ValueError(f"{pattern!r} is not a host name pattern like `hooks.example.com` or `*.example.com`")
    return patterns


def _networks(value: str) -> tuple[IPNetwork, ...]:
    from service.webhooks.destinations import parse_networks

    return parse_networks([part for part in value.split(",") if part.strip()])


def _port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError(f"must be a TCP port number, got {number}")
    return number


def _port_or_off(value: str) -> int:
    return 0 if int(value) == 0 else _port(value)


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("FITJOBS_HOME", "home", ".fitjobs", _path,
                "Data folder of this node: SQLite database, job folders, artifacts."),
    SettingSpec("FITJOBS_DATABASE_URL", "database_url", "", str,
                "SQLAlchemy database URL; empty means SQLite at $FITJOBS_HOME/fitjobs.db."),
    SettingSpec("FITJOBS_DATA_ROOT", "data_root", "", str,
                "Folder that `data.*.path` in a spec is resolved under; empty means $FITJOBS_HOME/data."),
    SettingSpec("FITJOBS_STORAGE_URL", "storage_url", "", _storage_url,
                "Where uploads, checkpoints and artifacts are kept: a folder (`file:///path`; empty means "
                "$FITJOBS_HOME) or an object store (`s3://bucket/prefix`, `gs://bucket/prefix`), whose credentials "
                "and endpoint come from the cloud's standard variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                "GOOGLE_APPLICATION_CREDENTIALS, workload identity). With an object store, workers keep only "
                "scratch space in $FITJOBS_HOME."),
    SettingSpec("FITJOBS_DATA_URL_PREFIXES", "data_url_prefixes", "", _url_prefixes,
                "Comma-separated `s3://bucket/prefix` or `gs://bucket/prefix` URLs that `data.*.url` in a spec "
                "must lie under; empty allows no data URLs."),
    SettingSpec("FITJOBS_HOST", "host", "127.0.0.1", str, "Address the API listens on."),
    SettingSpec("FITJOBS_PORT", "port", "8080", _port, "TCP port the API listens on."),
    SettingSpec("FITJOBS_API_WORKERS", "api_workers", "2", _positive_int,
                "Number of gunicorn worker processes serving the API."),
    SettingSpec("FITJOBS_API_DRAIN_SECONDS", "api_drain_seconds", "5", _non_negative_float,
                "After SIGTERM the API keeps serving this long with /readyz failing, then "
                "finishes in-flight requests and exits."),
    SettingSpec("FITJOBS_API_WORKER_CLASS", "api_worker_class", "gevent", _worker_class,
                "gunicorn worker class: `gevent` (one greenlet per connection, so open event streams and "
                "slow clients hold no request slot) or `gthread` (FITJOBS_API_THREADS threads per worker)."),
    SettingSpec("FITJOBS_API_WORKER_CONNECTIONS", "api_worker_connections", "2000", _positive_int,
                "gevent: connections one API worker serves at once (open streams, idle keep-alive and "
                "slow clients included)."),
    SettingSpec("FITJOBS_API_THREADS", "api_threads", "4", _positive_int,
                "gthread: request threads per API worker; each open event stream holds one."),
    SettingSpec("FITJOBS_API_TIMEOUT", "api_timeout", "30", _positive_int,
                "An API worker that shows no sign of life this many seconds (blocked, not just busy "
                "with slow clients) is killed and replaced."),
    SettingSpec("FITJOBS_API_GRACEFUL_TIMEOUT", "api_graceful_timeout", "30", _non_negative_int,
                "When the API stops (after FITJOBS_API_DRAIN_SECONDS), seconds its workers get to "
                "finish in-flight requests before they are killed."),
    SettingSpec("FITJOBS_API_KEEPALIVE", "api_keepalive", "5", _positive_int,
                "Seconds an idle keep-alive connection stays open; with gevent also the time a client "
                "has to send a request's line and headers before it is disconnected."),
    SettingSpec("FITJOBS_API_MAX_STREAMS", "api_max_streams", "1000", _positive_int,
                "Event streams (`Accept: text/event-stream`) one API worker keeps open; beyond it a new "
                "stream gets 503 with Retry-After. Must be below FITJOBS_API_WORKER_CONNECTIONS."),
    SettingSpec("FITJOBS_API_STREAM_HEARTBEAT_SECONDS", "api_stream_heartbeat_seconds", "15", _positive_float,
                "An event stream with nothing to send for this long sends a `: keep-alive` comment, so "
                "proxies keep it open and the server notices clients that left."),
    SettingSpec("FITJOBS_API_STREAM_POLL_SECONDS", "api_stream_poll_seconds", "0.5", _positive_float,
                "How often an API worker's one event poller reads new events of every job with an "
                "open stream (one query for all of them)."),
    SettingSpec("FITJOBS_API_TOKENS", "api_tokens", "", _token_list,
                "Comma-separated bearer tokens; when set, every /v1 request needs "
                "`Authorization: Bearer <token>` (health, readiness, metrics stay open)."),
    SettingSpec("FITJOBS_TENANTS_FILE", "tenants_file", "", _optional_path,
                "YAML or JSON file of tenants: `{name: {tokens: [sha256 of each token], roles: [read, submit, "
                "admin], quotas: {...}}}`; checked at start. Each tenant sees only its own jobs and datasets."),
    SettingSpec("FITJOBS_ALLOW_ANONYMOUS", "allow_anonymous", "0", _flag,
                "With no tokens at all (neither FITJOBS_API_TOKENS nor FITJOBS_TENANTS_FILE) the API listens "
                "on loopback only, whatever FITJOBS_HOST says; 1 lets it listen on FITJOBS_HOST anyway."),
    SettingSpec("FITJOBS_TENANT_MAX_ACTIVE_JOBS", "tenant_max_active_jobs", "0", _non_negative_int,
                "Default quota: queued plus running jobs per tenant (0: no limit); beyond it a submit gets 429."),
    SettingSpec("FITJOBS_TENANT_MAX_GPUS", "tenant_max_gpus", "0", _non_negative_int,
                "Default quota: GPUs requested by a tenant's queued plus running jobs, a job without "
                "`resources.gpus` counting as one (0: no limit)."),
    SettingSpec("FITJOBS_TENANT_MAX_UPLOAD_BYTES", "tenant_max_upload_bytes", "0", _non_negative_int,
                "Default quota: bytes of uploaded datasets a tenant keeps stored (0: no limit)."),
    SettingSpec("FITJOBS_TENANT_REQUESTS_PER_MINUTE", "tenant_requests_per_minute", "0", _non_negative_int,
                "Default quota: /v1 requests per tenant per minute, counted over every API replica (0: no "
                "limit). Health, readiness, metrics and the OpenAPI document are not counted."),
    SettingSpec("FITJOBS_RATE_LIMIT_STORAGE", "rate_limit_storage", "", str,
                "Where request counts are kept: empty means this process's memory on SQLite and a table in "
                "the database on PostgreSQL (shared by every replica); `memory://`, `database`, or a "
                "`limits` storage URL such as `redis://host:6379`."),
    SettingSpec("FITJOBS_MAX_CONCURRENT_JOBS", "max_concurrent_jobs", "0", _non_negative_int,
                "Training jobs one supervisor runs at once; 0 means one per GPU, or 1 without GPUs."),
    SettingSpec("FITJOBS_GPUS", "gpus", "auto", _gpu_list,
                "GPUs this supervisor hands out: `auto` (discovered with nvidia-smi, and with TensorFlow "
                "where nvidia-smi is missing or disagrees), `none` (no discovery), or ids like `0,1`. With "
                "`auto`, a worker whose environment says it was given GPUs (NVIDIA_VISIBLE_DEVICES, "
                "CUDA_VISIBLE_DEVICES) but that can see none refuses to start."),
    SettingSpec("FITJOBS_GPU_SIZES", "gpu_sizes", "", _gpu_sizes,
                "GPU counts (`resources.gpus`) the deployment offers, e.g. `1,2,4,8` for workers scaled from "
                "zero per size (KEDA ScaledJobs): a job asking for another count gets 422, and one asking for an "
                "offered count is queued even while no worker runs (`queue.reason: waiting_for_worker`). Empty: "
                "a GPU request larger than every registered worker's GPUs gets 422, and one made while no worker "
                "is registered waits for one."),
    SettingSpec("FITJOBS_GPU_TYPE", "gpu_type", "", _gpu_type,
                "The type of this worker's GPUs, e.g. `h100`: it also claims jobs whose `resources.gpu_type` "
                "names it. Empty: it claims only jobs that name no GPU type."),
    SettingSpec("FITJOBS_GPU_TYPES", "gpu_types", "", _gpu_types,
                "GPU types (`resources.gpu_type`) the deployment offers, comma-separated: a job naming another "
                "gets 422. Empty: any type is accepted, and waits for a worker of that type."),
    SettingSpec("FITJOBS_GPU_DISCOVERY_TIMEOUT", "gpu_discovery_timeout", "120", _positive_float,
                "Seconds the TensorFlow GPU probe (a short-lived subprocess at worker start) may take."),
    SettingSpec("FITJOBS_POLL_INTERVAL", "poll_interval", "0.5", _non_negative_float,
                "Seconds between two passes of the supervisor loop (claim, heartbeat, cancel)."),
    SettingSpec("FITJOBS_SHUTDOWN_GRACE", "shutdown_grace", "30", _non_negative_float,
                "Seconds a trainer gets after SIGTERM (drain, cancel, deadline) to checkpoint "
                "and exit before it is sent SIGKILL."),
    SettingSpec("FITJOBS_TRAINER_THREADS", "trainer_threads", "0", int,
                "TensorFlow intra-op threads per trainer; 0 lets TensorFlow decide."),
    SettingSpec("FITJOBS_WARM_TRAINERS", "warm_trainers", "1", _non_negative_int,
                "Trainer processes a supervisor keeps started, with TensorFlow and transformers "
                "imported, for its next jobs (only while a slot is free); 0 starts each trainer cold."),
    SettingSpec("FITJOBS_CHECKPOINT_STEPS", "checkpoint_steps", "0", _non_negative_int,
                "Also checkpoint every this many steps (0: only at the end of each epoch)."),
    SettingSpec("FITJOBS_METRICS_FLUSH_SECONDS", "metrics_flush_seconds", "2", _non_negative_float,
                "How often a running trainer writes buffered step metrics and progress."),
    SettingSpec("FITJOBS_LEASE_SECONDS", "lease_seconds", "60", _non_negative_float,
                "A running job whose heartbeat is older than this is requeued by any supervisor."),
    SettingSpec("FITJOBS_WORKER_HEARTBEAT_FILE", "worker_heartbeat_file", "", str,
                "File the supervisor loop touches on every pass, read by `fitjobs worker --check`; "
                "empty means $FITJOBS_HOME/workers/HOSTNAME.heartbeat."),
    SettingSpec("FITJOBS_WORKER_HEALTH_SECONDS", "worker_health_seconds", "60", _positive_float,
                "`fitjobs worker --check` fails when the supervisor loop has not completed a pass for "
                "this long; the supervisor then also stops renewing its jobs' leases, so a hung loop "
                "loses its jobs to other supervisors."),
    SettingSpec("FITJOBS_RETENTION_DAYS", "retention_days", "0", _non_negative_float,
                "Finished jobs (their rows, events, metrics, artifacts, checkpoints and logs) are deleted this "
                "many days after they finished, and uploads this many days after their upload once no job "
                "reads them; 0 keeps everything. A long-running supervisor (`fitjobs serve`, `fitjobs worker` "
                "without --once) or `fitjobs prune` does it."),
    SettingSpec("FITJOBS_RETENTION_INTERVAL_SECONDS", "retention_interval_seconds", "3600", _positive_float,
                "Seconds between two retention passes of a supervisor (with FITJOBS_RETENTION_DAYS set); the "
                "first runs when it starts. Supervisors of several nodes take turns (a PostgreSQL advisory lock)."),
    SettingSpec("FITJOBS_SUPERVISOR_METRICS_PORT", "supervisor_metrics_port", "0", _port_or_off,
                "TCP port on which the supervisor serves Prometheus metrics of the jobs it runs "
                "(examples/s, step time) at `/metrics`, on FITJOBS_HOST; 0 turns it off."),
    SettingSpec("FITJOBS_MAX_REQUEST_BYTES", "max_request_bytes", str(32 * 1024 * 1024), _positive_int,
                "Largest request body the API accepts (inline records included)."),
    SettingSpec("FITJOBS_MAX_UPLOAD_BYTES", "max_upload_bytes", str(1024 * 1024 * 1024), _positive_int,
                "Largest dataset file `POST /v1/datasets` accepts; larger uploads get 413."),
    SettingSpec("FITJOBS_MODEL_ROOTS", "model_roots", "", _path_list,
                "Folders (separated by `:`) local model paths in a spec must lie under; empty means "
                "$FITJOBS_HOME/models and this Python environment's site-packages (models installed as "
                "packages)."),
    SettingSpec("FITJOBS_CHECK_TIMEOUT", "check_timeout", "300", _non_negative_float,
                "Seconds a dry run (`POST /v1/jobs:validate`) or the check of an uploaded file may take "
                "before it is stopped."),
    SettingSpec("FITJOBS_CHECK_CONCURRENCY", "check_concurrency", "2", _positive_int,
                "Dry runs and upload checks one API worker runs at once, each in its own check process; "
                "more wait for a free one."),
    SettingSpec("FITJOBS_CHECK_QUEUE_SECONDS", "check_queue_seconds", "10", _non_negative_float,
                "Seconds a dry run or upload check waits for a free check process before it is answered "
                "503 with Retry-After."),
    SettingSpec("FITJOBS_CHECK_MEMORY_BYTES", "check_memory_bytes", str(2 * 1024 ** 3), _positive_int,
                "Memory one dry run or upload check may allocate (RLIMIT_DATA of its check process, above what "
                "the process held before it); a check that needs more is answered 422."),
    SettingSpec("FITJOBS_CHECK_CPU_SECONDS", "check_cpu_seconds", "120", _positive_int,
                "CPU seconds one dry run or upload check may use (RLIMIT_CPU of its check process); a check "
                "that needs more is answered 422."),
    SettingSpec("FITJOBS_PREDICT_MODELS", "predict_models", "2", _non_negative_int,
                "Trained models the node's predict process keeps loaded for `POST /v1/jobs/{id}/predictions`, "
                "the most recently used; 0 turns online predictions off (no predict process, 503)."),
    SettingSpec("FITJOBS_PREDICT_MEMORY_BYTES", "predict_memory_bytes", str(2 * 1024 ** 3), _positive_int,
                "Bytes of weights the predict process keeps loaded at most; the least recently used models "
                "are dropped beyond it (a single larger model is still served, alone)."),
    SettingSpec("FITJOBS_PREDICT_TIMEOUT", "predict_timeout", "120", _positive_float,
                "Seconds a prediction request may take, a cold model's load and a restart of the predict "
                "process included, before it is answered 503."),
    SettingSpec("FITJOBS_UPLOAD_MAX_ROWS", "upload_max_rows", "5000000", _positive_int,
                "Rows an uploaded table may have; Parquet files are refused from their metadata, before "
                "their data is read."),
    SettingSpec("FITJOBS_UPLOAD_MAX_COLUMNS", "upload_max_columns", "1000", _positive_int,
                "Columns an uploaded table may have; a CSV file is refused from its header line."),
    SettingSpec("FITJOBS_UPLOAD_MAX_CELL_BYTES", "upload_max_cell_bytes", str(1024 * 1024), _positive_int,
                "Bytes one value (cell) of an uploaded table may hold once decoded."),
    SettingSpec("FITJOBS_UPLOAD_MAX_DECODED_BYTES", "upload_max_decoded_bytes", str(2 * 1024 ** 3), _positive_int,
                "Bytes an uploaded table may decode to (a Parquet file's columns uncompressed and its "
                "dictionaries expanded); compressed files and archives are refused outright."),
    SettingSpec("FITJOBS_WEBHOOK_SECRET", "webhook_secret", "", _webhook_secret,
                "Key that signs webhook deliveries (Standard Webhooks), as `whsec_` and the base64 of 24 to 64 "
                "random bytes. Empty: this deployment sends no webhooks, and a spec naming `webhook` gets 422."),
    SettingSpec("FITJOBS_WEBHOOK_ALLOWED_HOSTS", "webhook_allowed_hosts", "", _host_patterns,
                "Comma-separated host name patterns (`hooks.example.com`, `*.example.com`) a webhook URL must "
                "match; empty allows any host whose addresses are all public."),
    SettingSpec("FITJOBS_WEBHOOK_ALLOWED_NETWORKS", "webhook_allowed_networks", "", _networks,
                "Comma-separated networks (`10.20.0.0/16`, `127.0.0.1/32`) whose non-public addresses webhooks "
                "may go to all the same; empty: only public (`is_global`) addresses, never loopback, private, "
                "link-local (the cloud metadata service) or the like."),
    SettingSpec("FITJOBS_WEBHOOK_TIMEOUT_SECONDS", "webhook_timeout_seconds", "10", _positive_float,
                "Seconds a webhook receiver has to connect and answer one delivery attempt."),
    SettingSpec("FITJOBS_WEBHOOK_RETRY_SECONDS", "webhook_retry_seconds", "5", _positive_float,
                "Wait before a failed webhook delivery's first retry; each further retry waits twice as long, "
                "up to FITJOBS_WEBHOOK_MAX_RETRY_SECONDS."),
    SettingSpec("FITJOBS_WEBHOOK_MAX_RETRY_SECONDS", "webhook_max_retry_seconds", "3600", _positive_float,
                "Longest wait between two attempts of a webhook delivery."),
    SettingSpec("FITJOBS_WEBHOOK_GIVE_UP_SECONDS", "webhook_give_up_seconds", "86400", _positive_float,
                "A webhook delivery not accepted this long after its event is marked failed and no longer tried."),
    SettingSpec("FITJOBS_URL", "url", "http://127.0.0.1:8080", str,
                "Base URL the CLI's client commands (submit, status, wait, ...) talk to."),
    SettingSpec("FITJOBS_TOKEN", "token", "", str,
                "Bearer token the CLI's client commands send; empty means the first of FITJOBS_API_TOKENS."),
    SettingSpec("FITJOBS_LOG_LEVEL", "log_level", "INFO", str.upper,
                "Log level of the API and supervisor (DEBUG, INFO, WARNING, ERROR)."),
)


class ConfigError(ValueError):
    """A FITJOBS_* variable holds a value that cannot be used."""


def default_quotas(values: Mapping[str, Any]) -> Quotas:
    """Quotas from the FITJOBS_TENANT_* settings among ``values``."""
    return Quotas(active_jobs=values["tenant_max_active_jobs"], gpus=values["tenant_max_gpus"],
                  upload_bytes=values["tenant_max_upload_bytes"],
                  requests_per_minute=values["tenant_requests_per_minute"])


def configured_tenants(values: Mapping[str, Any]) -> tuple[Tenant, ...]:
    """The tenants of FITJOBS_TENANTS_FILE, plus "default" (every role) for FITJOBS_API_TOKENS."""
    defaults = default_quotas(values)
    tenants: tuple[Tenant, ...] = ()
    path = values["tenants_file"]
    if path is not None:
        try:
            tenants = read_tenants_file(path, defaults)
        except ValueError as exc:
            raise ConfigError(f"FITJOBS_TENANTS_FILE={str(path)!r}: {exc}") from exc
    if values["api_tokens"]:
        if any(tenant.name == DEFAULT_TENANT for tenant in tenants):
            raise ConfigError(f"FITJOBS_API_TOKENS makes tenant {DEFAULT_TENANT!r}, which FITJOBS_TENANTS_FILE "
                              "also defines; list those tokens' hashes in the file instead")
        hashes = tuple(token_hash(token) for token in values["api_tokens"])
        known = {digest for tenant in tenants for digest in tenant.token_hashes}
        if known & set(hashes):
            raise ConfigError("a token of FITJOBS_API_TOKENS is also listed in FITJOBS_TENANTS_FILE")
        tenants += (Tenant(name=DEFAULT_TENANT, roles=frozenset(Role), quotas=defaults, token_hashes=hashes),)
    return tenants


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one process."""

    home: Path
    database_url: str
    data_root: Path
    storage_url: str
    data_url_prefixes: tuple[str, ...]
    host: str
    port: int
    api_workers: int
    api_drain_seconds: float
    api_worker_class: str
    api_worker_connections: int
    api_threads: int
    api_timeout: int
    api_graceful_timeout: int
    api_keepalive: int
    api_max_streams: int
    api_stream_heartbeat_seconds: float
    api_stream_poll_seconds: float
    api_tokens: tuple[str, ...]
    tenants_file: Path | None
    allow_anonymous: bool
    tenant_max_active_jobs: int
    tenant_max_gpus: int
    tenant_max_upload_bytes: int
    tenant_requests_per_minute: int
    rate_limit_storage: str
    max_concurrent_jobs: int
    gpus: str | tuple[str, ...]
    gpu_sizes: tuple[int, ...]
    gpu_type: str | None
    gpu_types: tuple[str, ...]
    gpu_discovery_timeout: float
    poll_interval: float
    shutdown_grace: float
    trainer_threads: int
    warm_trainers: int
    checkpoint_steps: int
    metrics_flush_seconds: float
    lease_seconds: float
    worker_heartbeat_file: Path
    worker_health_seconds: float
    retention_days: float
    retention_interval_seconds: float
    supervisor_metrics_port: int
    max_request_bytes: int
    max_upload_bytes: int
    model_roots: tuple[Path, ...]
    check_timeout: float
    check_concurrency: int
    check_queue_seconds: float
    check_memory_bytes: int
    check_cpu_seconds: int
    predict_models: int
    predict_memory_bytes: int
    predict_timeout: float
    upload_max_rows: int
    upload_max_columns: int
    upload_max_cell_bytes: int
    upload_max_decoded_bytes: int
    webhook_secret: str = field(repr=False)
    webhook_allowed_hosts: tuple[str, ...]
    webhook_allowed_networks: tuple[IPNetwork, ...]
    webhook_timeout_seconds: float
    webhook_retry_seconds: float
    webhook_max_retry_seconds: float
    webhook_give_up_seconds: float
    url: str
    token: str
    log_level: str
    # Every tenant that tokens authenticate: those of FITJOBS_TENANTS_FILE, and "default" for
    # FITJOBS_API_TOKENS. Empty: no tokens, every caller is the anonymous default tenant.
    tenants: tuple[Tenant, ...] = ()
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read every setting from ``environ`` (default ``os.environ``); keyword overrides win."""
        env = dict(os.environ if environ is None else environ)
        # One entry per field, of that field's type: each setting's parse function decides it.
        values: dict[str, Any] = {}
        for spec in SETTINGS:
            raw = env.get(spec.env, spec.default)
            try:
                values[spec.attr] = spec.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{spec.env}={raw!r}: {exc}") from exc
        values.update(overrides)
        if (values["api_worker_class"] == "gevent"
                and values["api_max_streams"] >= values["api_worker_connections"]):
            # Streams up to the connection limit would leave no connection for any other request.
            raise ConfigError(f"FITJOBS_API_MAX_STREAMS={values['api_max_streams']} must be below "
                              f"FITJOBS_API_WORKER_CONNECTIONS={values['api_worker_connections']}")
        home = Path(values["home"]).absolute()
        values["home"] = home
        if not values["database_url"]:
            values["database_url"] = f"sqlite:///{home / 'fitjobs.db'}"
        if not values["storage_url"]:
            values["storage_url"] = home.as_uri()
        data_root = values["data_root"]
        values["data_root"] = (Path(data_root).expanduser().absolute()
                               if data_root else home / "data")
        if not values["model_roots"]:
            values["model_roots"] = (home / "models", Path(sysconfig.get_paths()["purelib"]))
        heartbeat_file = values["worker_heartbeat_file"]
        # Named after the host: worker pods of a cluster share FITJOBS_HOME on one volume.
        values["worker_heartbeat_file"] = (Path(heartbeat_file).expanduser().absolute()
                                           if heartbeat_file
                                           else home / "workers" / f"{socket.gethostname()}.heartbeat")
        if values["worker_health_seconds"] <= 2 * values["poll_interval"]:
            raise ConfigError(f"FITJOBS_WORKER_HEALTH_SECONDS={values['worker_health_seconds']} must be more "
                              f"than twice FITJOBS_POLL_INTERVAL={values['poll_interval']}: the loop beats "
                              "once per pass")
        values["tenants"] = configured_tenants(values)
        return cls(environ=env, **values)

    @property
    def default_quotas(self) -> Quotas:
        """The quotas of a tenant whose entry in the tenants file names none, and of "default"."""
        return default_quotas(vars(self))

    @property
    def anonymous_tenant(self) -> Tenant:
        """Who callers are when no tokens are configured: the default tenant, to read and submit."""
        return Tenant(name=DEFAULT_TENANT, roles=DEFAULT_ROLES, quotas=self.default_quotas)

    @property
    def webhook_policy(self) -> DestinationPolicy:
        """Where webhooks may go (FITJOBS_WEBHOOK_ALLOWED_HOSTS and FITJOBS_WEBHOOK_ALLOWED_NETWORKS)."""
        from service.webhooks.destinations import DestinationPolicy

        return DestinationPolicy(allowed_hosts=self.webhook_allowed_hosts,
                                 allowed_networks=self.webhook_allowed_networks)

    @property
    def jobs_dir(self) -> Path:
        """Per-job working folders: trainer logs, scratch space, outcome files."""
        return self.home / "jobs"

    @property
    def storage(self) -> Storage:
        """Where uploads, checkpoints and artifacts are kept (FITJOBS_STORAGE_URL)."""
        from service.storage import open_storage

        return open_storage(self.storage_url)

    @property
    def storage_is_home(self) -> bool:
        """Whether storage is FITJOBS_HOME itself, so checkpoints there need no copy."""
        root = self.storage.local_root
        return root is not None and root.absolute() == self.home

    @property
    def local_storage_dir(self) -> Path:
        """The folder of local storage; with an object store, this node's copies under FITJOBS_HOME."""
        return self.storage.local_root or self.home

    @property
    def artifacts_dir(self) -> Path:
        """Published artifacts, one folder per succeeded job (with an object store: copies fetched here)."""
        return self.local_storage_dir / "artifacts"

    @property
    def uploads_dir(self) -> Path:
        """Uploaded datasets, one folder per dataset id (with an object store: copies fetched here)."""
        return self.local_storage_dir / "uploads"

    @property
    def cache_dir(self) -> Path:
        """Derived files that can be rebuilt, such as model tarballs."""
        return self.home / "cache"

    @property
    def predict_socket(self) -> Path:
        """The Unix socket of this node's predict process: in FITJOBS_HOME, or in /tmp where that path is too long."""
        path = self.home / PREDICT_SOCKET
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH_BYTES:
            return path
        digest = hashlib.sha256(os.fsencode(self.home)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"fitjobs-{digest}-{PREDICT_SOCKET}"

    def attempt_dir(self, job_id: str, attempt: int) -> Path:
        """Working folder of one attempt of a job: trainer log, scratch space, outcome file."""
        return self.jobs_dir / job_id / f"attempt-{attempt}"

    def checkpoint_dir(self, job_id: str) -> Path:
        """Checkpoints of a job, shared by its attempts so a later one resumes."""
        return self.jobs_dir / job_id / "checkpoint"

    def ensure_dirs(self) -> None:
        """Create the folders this node writes to."""
        for folder in (self.home, self.jobs_dir, self.artifacts_dir, self.cache_dir, self.data_root,
                       self.uploads_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def child_environ(self) -> dict[str, str]:
        """Environment handed to trainer child processes: this process's, plus resolved paths."""
        env = dict(self.environ)
        env.update({
            "FITJOBS_HOME": str(self.home),
            "FITJOBS_DATABASE_URL": self.database_url,
            "FITJOBS_DATA_ROOT": str(self.data_root),
            "FITJOBS_STORAGE_URL": self.storage_url,
        })
        return env
