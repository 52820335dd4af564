"""Hosts for the scale benchmark: one Linux network namespace per host, each joined
by a veth pair to a bridge in a namespace of its own, addresses in 198.18.0.0/15
(the range set aside for benchmarking) and nowhere else.

    fs<run>br: br0 ── fs<run>b0 ═ fs<run>e0 in fs<run>h0 (198.18.0.1, the client)
                   ── fs<run>b1 ═ fs<run>e1 in fs<run>h1 (198.18.0.2, node 0)
                   ── ...

Names carry the run's id, so parallel runs do not collide; every namespace is
deleted on the way out, error or not (deleting a namespace deletes its veth ends).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
MAX_HOSTS = 250  # one /24 in 198.18.0.0/15 is enough for what one machine holds


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass(frozen=True)
class Hosts:
    """Host 0 is the client's; host i + 1 runs node i."""

    run_id: str
    count: int

    @property
    def bridge(self) -> str:
        return f"fs{self.run_id}br"

    def name(self, index: int) -> str:
        return f"fs{self.run_id}h{index}"

    def device(self, index: int) -> str:
        return f"fs{self.run_id}e{index}"

    def address(self, index: int) -> str:
        return f"198.18.0.{index + 1}"

    def prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program on host ``index``."""
        return ["ip", "netns", "exec", self.name(index)]

    def sent_bytes(self, indices: range) -> dict[object, int]:
        """Bytes each of these hosts' veth has sent (frames, with their IP and TCP headers)."""
        sent: dict[object, int] = {}
        for index in indices:
            (link,) = json.loads(_ip("-n", self.name(index), "-s", "-j", "link", "show", "dev", self.device(index)))
            sent[self.device(index)] = int(link["stats64"]["tx"]["bytes"])
        return sent

    def enter(self, index: int) -> None:
        """Move the calling thread, and the threads it starts from now on, to host ``index``."""
        with open(f"/var/run/netns/{self.name(index)}") as handle:
            if ctypes.CDLL(None, use_errno=True).setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"cannot enter {self.name(index)}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"fsprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace here: {getattr(exc, 'stderr', exc)!r}"
    _ip("netns", "del", probe)
    return None


@contextmanager
def hosts(count: int) -> Iterator[Hosts]:
    """``count`` hosts on one bridge, gone again when the block ends."""
    if not 0 < count <= MAX_HOSTS:
        raise ValueError(f"1 to {MAX_HOSTS} hosts, not {count}")
    made = Hosts(f"{os.getpid() % 100000}", count)
    created = [made.bridge]
    try:
        _ip("netns", "add", made.bridge)
        _ip("-n", made.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", made.bridge, "link", "set", "br0", "up")
        for index in range(count):
            name, port = made.name(index), f"fs{made.run_id}b{index}"
            _ip("netns", "add", name)
            created.append(name)
            _ip("-n", made.bridge, "link", "add", port, "type", "veth", "peer", "name", made.device(index),
                "netns", name)
            _ip("-n", made.bridge, "link", "set", port, "master", "br0", "up")
            _ip("-n", name, "addr", "add", f"{made.address(index)}/24", "dev", made.device(index))
            _ip("-n", name, "link", "set", made.device(index), "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield made
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
