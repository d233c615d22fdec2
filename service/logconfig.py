"""Process-wide logging set-up shared by the API, the supervisor and the trainer."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that narrate routine work at INFO; their warnings still show.
QUIET_LOGGERS = ("alembic", "werkzeug")


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` with one format, keeping chatty libraries at WARNING."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
