"""Process plumbing shared by node and worker processes: exit sentinels, the
descriptor limit, logging, the node's log file, and counting what a loop dropped.

A pidfd becomes readable when its process exits, so a ``zmq.Poller`` notices a
death at once, in the same wait as the sockets (Linux >= 5.3).  Elsewhere the
callers fall back to polling at ``FALLBACK_POLL_S``.
"""

from __future__ import annotations

import logging
import os
import resource
import tempfile
from collections import Counter
from pathlib import Path

FALLBACK_POLL_S = 0.1
LOG_MAX_BYTES = 16 << 20  # a node's log larger than this at start is kept as NAME.log.1 and begun afresh
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


def pidfd(pid: int) -> int | None:
    """A descriptor readable when ``pid`` exits, or None where unsupported (or
    when no descriptor is left: the caller then polls that process)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every client link costs a
    worker two sockets and every connection a descriptor, and a default soft
    limit of 1,024 is reached long before the machine's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)


def configure_logging(default_level: str = "WARNING") -> None:
    """Log to stderr at ``FABRIC_LOG_LEVEL``; only process entry points call this."""
    logging.basicConfig(level=os.environ.get("FABRIC_LOG_LEVEL", default_level), format=LOG_FORMAT)


def open_log(path: Path) -> tuple[str, int]:
    """Open the node's log for appending (its workers' descriptors 1 and 2 point
    there, so nothing they write waits in a pipe nobody reads): ``path``, or a
    file in the temporary directory when that cannot be written, or /dev/null.
    Returns the path opened and its descriptor."""
    name = path.name
    for candidate in (path, Path(tempfile.gettempdir()) / f"fabric-{os.getuid()}-{name}"):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            if candidate.exists() and candidate.stat().st_size > LOG_MAX_BYTES:
                candidate.replace(candidate.with_name(candidate.name + ".1"))
            return str(candidate), os.open(candidate, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot write the node's log %s: %s", candidate, exc)
    return os.devnull, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


class Faults:
    """What a loop dropped or failed to handle, counted by kind.

    The first of each kind is logged (with its traceback when ``exc`` is given:
    that is a bug or a resource running out, not a peer's mistake); later ones
    are only counted, so a flood of bad messages costs no log lines and no disk.
    """

    def __init__(self, owner: str, logger: logging.Logger) -> None:
        self.owner = owner  # "node NAME" or "worker ID", for the log line
        self.log = logger  # the owner module's
        self.counts: Counter[str] = Counter()

    def record(self, kind: str, detail: object, exc: BaseException | None = None) -> None:
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            self.log.warning("%s: %s: %s (logged once; later ones are only counted)", self.owner, kind, detail,
                             exc_info=exc)

    def summary(self) -> str:
        """``kind: count`` of everything recorded, for the log line at exit."""
        return ", ".join(f"{kind}: {count}" for kind, count in self.counts.most_common())
