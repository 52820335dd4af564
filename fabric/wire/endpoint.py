"""Which strings may become a ZeroMQ endpoint: the one check of every address that
comes off the wire (in messages, heartbeats, Refs) before it is handed to ``connect()``.

A bad endpoint given to ``connect()`` raises inside a receive loop, or leaves a
half-made socket that blocks ``Context.term()``; so only the forms fabric binds
pass, checked by scheme and shape.
"""

from __future__ import annotations

import ipaddress
import re

MAX_ENDPOINT_CHARS = 256
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def is_endpoint(value: str) -> bool:
    """A ``tcp://HOST:PORT`` (IP address or host name, port 1-65535) or an
    ``ipc:///absolute/path`` endpoint, as fabric binds them; nothing else is
    ever handed to ``connect()``."""
    if len(value) > MAX_ENDPOINT_CHARS:
        return False
    if value.startswith("ipc:///"):
        return "\0" not in value and len(value) < 108 + len("ipc://")  # sun_path holds 108 bytes
    if not value.startswith("tcp://"):
        return False
    host, sep, port = value[len("tcp://") :].rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return False  # int() reads other scripts' digits, which libzmq's connect() refuses
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOSTNAME.fullmatch(host) is not None
    return True
