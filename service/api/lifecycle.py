"""An API node's shutdown: readiness turns false first, then in-flight requests finish.

On SIGTERM the gunicorn master marks itself draining, keeps serving for
FITJOBS_API_DRAIN_SECONDS so load balancers stop sending new requests once /readyz fails,
and only then stops its workers gracefully: each finishes the requests it holds, and open
event streams end so clients reconnect elsewhere.

The draining mark is one byte of anonymous shared memory that the master maps before it
forks its workers: they inherit the mapping and see the master's writes. It has no name in
any file system, so no other process can set or clear it.
"""

from __future__ import annotations

import mmap


class DrainFlag:
    """One byte shared by the process that creates it and every process it forks afterwards."""

    def __init__(self) -> None:
        # fileno -1: an anonymous MAP_SHARED mapping, inherited across fork and nowhere else.
        self._page = mmap.mmap(-1, 1)

    def set(self) -> None:
        """Mark the node draining."""
        self._page[0] = 1

    def is_set(self) -> bool:
        """Whether the node is draining."""
        return self._page[0] == 1


# Created by the gunicorn master (create_drain_flag) before it forks; None elsewhere.
_flag: DrainFlag | None = None


def create_drain_flag() -> DrainFlag:
    """Called by the master before it forks its workers."""
    global _flag
    _flag = DrainFlag()
    return _flag


def mark_draining() -> None:
    """Called by the master on SIGTERM."""
    if _flag is not None:
        _flag.set()


def is_draining() -> bool:
    """Whether this worker's master is shutting down (False outside gunicorn)."""
    return _flag is not None and _flag.is_set()
