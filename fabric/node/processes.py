"""Process plumbing shared by node and worker processes: exit sentinels and logging.

A pidfd becomes readable when its process exits, so a ``zmq.Poller`` notices a
death at once, in the same wait as the sockets (Linux >= 5.3).  Elsewhere the
callers fall back to polling at ``FALLBACK_POLL_S``.
"""

from __future__ import annotations

import logging
import os

FALLBACK_POLL_S = 0.1
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def pidfd(pid: int) -> int | None:
    """A descriptor readable when ``pid`` exits, or None where unsupported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def configure_logging(default_level: str = "WARNING") -> None:
    """Log to stderr at ``FABRIC_LOG_LEVEL``; only process entry points call this."""
    logging.basicConfig(level=os.environ.get("FABRIC_LOG_LEVEL", default_level), format=LOG_FORMAT)
