"""Authentication and encryption of every socket with one cluster key (CurveZMQ).

Every process of a cluster runs code that the others send it, so trust is
all or nothing: a cluster has one keypair, kept in a file readable only by
its owner and copied to each machine like an SSH key (``fabric-node keygen``).
With a key, every socket that binds is a CURVE server and every socket that
connects a CURVE client, both with the cluster's keypair; a ZAP handler on
each binding process admits only clients that prove they hold the cluster's
secret, and libzmq encrypts all traffic.  Without a key nothing changes, and
only loopback addresses may be bound.

The key comes from ``connect(key_file=...)`` or ``--key-file``, else from
``key_file`` in cluster.toml's ``[cluster]`` table, else from
``$FABRIC_KEY_FILE``; a node hands its key file to its workers.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from ..errors import ConfigError

log = logging.getLogger(__name__)

KEY_FILE_ENV = "FABRIC_KEY_FILE"
ZAP_DOMAIN = "fabric"


@dataclass(frozen=True)
class ClusterKey:
    """The cluster's CURVE keypair (z85 text, as libzmq takes it) and the file it came from."""

    public: bytes
    secret: bytes
    path: str

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterKey:
        """Read a key file; a missing, unreadable or malformed one is a ConfigError naming it."""
        source = os.fspath(path)
        _check_curve(source)
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"key file {source}: {exc.strerror or exc}") from None
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        fields = dict(_key_line(line, source) for line in lines)
        public, secret = fields.get("public", b""), fields.get("secret", b"")
        if len(public) != 40 or len(secret) != 40:
            raise ConfigError(f"key file {source}: needs a 40-character 'public = ...' and 'secret = ...' line")
        try:
            matches = zmq.curve_public(secret) == public
        except (ValueError, zmq.ZMQError):
            matches = False
        if not matches:
            raise ConfigError(f"key file {source}: its public key does not belong to its secret key")
        return cls(public, secret, source)

    @classmethod
    def find(cls, path: str | os.PathLike[str] | None) -> ClusterKey | None:
        """The key at ``path``, else at ``$FABRIC_KEY_FILE``, else none."""
        chosen = path or os.environ.get(KEY_FILE_ENV)
        return cls.load(chosen) if chosen else None


def _check_curve(source: str) -> None:
    if not zmq.has("curve"):
        raise ConfigError(f"key file {source}: this libzmq was built without CURVE security (libsodium)")


def _key_line(line: str, source: str) -> tuple[str, bytes]:
    name, sep, value = line.partition("=")
    if not sep:
        raise ConfigError(f"key file {source}: expected 'name = value', got {line.strip()[:40]!r}")
    return name.strip(), value.strip().strip('"').encode("ascii", "replace")


def write_key_file(path: str | os.PathLike[str]) -> ClusterKey:
    """Make a new cluster keypair in a file only its owner may read; never overwrites."""
    _check_curve(os.fspath(path))
    public, secret = zmq.curve_keypair()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        raise ConfigError(f"key file {os.fspath(path)} exists; remove it first to make a new key") from None
    with os.fdopen(fd, "w") as out:
        out.write("# fabric cluster key: copy to every machine of the cluster, keep it private\n")
        out.write(f"public = {public.decode()}\nsecret = {secret.decode()}\n")
    return ClusterKey(public, secret, os.fspath(path))


HANDSHAKE_S = 10  # a connection to a bound socket that has not finished its handshake by then is closed


def serve(sock: zmq.Socket, key: ClusterKey | None) -> None:
    """Make a socket that binds a CURVE server (before it binds).  With a key or
    without, a connection silent past ``HANDSHAKE_S`` (libzmq's default: 30 s)
    is closed: silent connections hold a descriptor each, and a flood of them
    is bounded by the rate it arrives at times this."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_S * 1000)
    if key is None:
        return
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt_string(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no ZAP handler: refuse, never admit


def join(sock: zmq.Socket, key: ClusterKey | None) -> None:
    """Make a socket that connects a CURVE client of the cluster (before it connects)."""
    if key is None:
        return
    sock.setsockopt(zmq.CURVE_SERVERKEY, key.public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, key.secret)


class _ClusterMembers:
    """ZAP credentials check: only the cluster's own public key is admitted, and the
    CURVE handshake has already proved that the client holds the matching secret."""

    def __init__(self, key: ClusterKey) -> None:
        self.public = key.public
        self.refused = 0

    def callback(self, domain: str, client_key: bytes) -> bool:
        if client_key == self.public:
            return True
        self.refused += 1
        log.warning("refused a connection whose key is not the cluster's (%d refused so far)", self.refused)
        return False


class Gatekeeper:
    """The ZAP handler of one process's context (a thread of pyzmq's), for its binding sockets."""

    def __init__(self, context: zmq.Context, key: ClusterKey) -> None:
        from zmq.auth.thread import ThreadAuthenticator  # asyncio: only imported by keyed processes

        self._thread: Any = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        self._thread.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_ClusterMembers(key))
        self._thread.start()  # before any socket of this context binds

    def stop(self) -> None:
        self._thread.stop()


def gatekeeper(context: zmq.Context, key: ClusterKey | None) -> Gatekeeper | None:
    return Gatekeeper(context, key) if key is not None else None


HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def refusal_reason(event: int, keyed: bool) -> str | None:
    """Why a handshake failed, from the monitor event and whether this side has a key
    (measured with pyzmq 27 / libzmq 4.3: a key on one side only fails with
    HANDSHAKE_FAILED_PROTOCOL on the connecting side, whichever side has it; two
    different keys with HANDSHAKE_FAILED_NO_DETAIL).  None: not a refusal."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if keyed:
            return "it has no cluster key (or speaks another protocol); give it the same key_file"
        return "it has a cluster key and this side has none; pass key_file= (or set $FABRIC_KEY_FILE)"
    if event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
        return "its cluster key differs from this side's; use the same key file on both"
    return None


class HandshakeWatch:
    """Why connections to some endpoints fail their handshake, from libzmq's socket
    monitor: without it a wrong key only shows as silence.  ``keyed`` is whether
    this side has a cluster key, which makes the reason definitive."""

    def __init__(self, keyed: bool = False) -> None:
        self.keyed = keyed
        self.refusals: dict[str, str] = {}  # endpoint -> why its last handshake failed
        self._monitors: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}  # monitor -> (watched, endpoint)

    def watch(self, sock: zmq.Socket, endpoint: str) -> zmq.Socket:
        """Start watching ``sock`` (before it connects to ``endpoint``); the monitor socket to poll."""
        monitor = sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self._monitors[monitor] = (sock, endpoint)
        return monitor

    def unwatch(self, sock: zmq.Socket, poller: zmq.Poller) -> None:
        """Stop watching ``sock`` (about to be closed): its monitor leaves ``poller`` and closes."""
        for monitor, (watched, _) in list(self._monitors.items()):
            if watched is sock:
                poller.unregister(monitor)
                sock.disable_monitor()
                monitor.close(linger=0)
                del self._monitors[monitor]

    def on_poll(self, events: Mapping[Any, int]) -> None:
        """Read the monitors a poll found readable (``events``: ``dict(poller.poll())``)."""
        for monitor in self._monitors.keys() & events.keys():
            self.on_events(monitor)

    def on_events(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        endpoint = self._monitors[monitor][1]
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            why = refusal_reason(event, self.keyed)
            if why is None:
                self.refusals.pop(endpoint, None)
            elif self.refusals.get(endpoint) != why:
                self.refusals[endpoint] = why
                log.warning("the handshake with %s failed: %s", endpoint, why)

    def describe(self) -> str:
        """The refusals, for an error message ("" when none)."""
        return "; ".join(f"the handshake with {endpoint} failed: {why}" for endpoint, why in self.refusals.items())

    def close(self) -> None:
        for monitor, (sock, _) in self._monitors.items():
            sock.disable_monitor()
            monitor.close(linger=0)
        self._monitors.clear()
