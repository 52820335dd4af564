"""Running this checkout's programs on the test hosts (see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import netns
from fabric.wire.security import KEY_FILE_ENV

NODE_PORT = 7100


def run_on(hosts: netns.Hosts, index: int, *cmd: str, key_file: str | None = None,
           **popen: object) -> subprocess.Popen[str]:
    """Run ``cmd`` on host ``index`` with this process's import path; with ``key_file``,
    as a member of a keyed cluster."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if key_file:
        env[KEY_FILE_ENV] = key_file
    return subprocess.Popen([*hosts.prefix(index), *cmd], env=env, text=True, **popen)  # type: ignore[call-overload]
