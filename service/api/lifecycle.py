"""An API node's shutdown: readiness turns false first, then in-flight requests finish.

On SIGTERM the gunicorn master marks itself draining (a flag file its workers can see),
keeps serving for FITJOBS_API_DRAIN_SECONDS so load balancers stop sending new requests
once /readyz fails, and only then stops its workers gracefully: each finishes the requests
it holds, and open event streams end so clients reconnect elsewhere.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


def drain_flag(master_pid: int) -> Path:
    """The flag file of one gunicorn master on this host (local temp dir: never shared)."""
    return Path(tempfile.gettempdir()) / f"fitjobs-api-{socket.gethostname()}-{master_pid}.draining"


def mark_draining(master_pid: int) -> Path:
    """Called by the master on SIGTERM."""
    flag = drain_flag(master_pid)
    flag.touch()
    return flag


def is_draining() -> bool:
    """Whether this worker's master is shutting down (False outside gunicorn)."""
    return drain_flag(os.getppid()).exists()
