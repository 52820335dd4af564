"""CPython's own concurrent.futures tests, run against fabric by run_cpython_futures.py.

They ship with CPython 3.13's stdlib, so the run needs such an interpreter able to
import fabric's dependencies: ``$FABRIC_CONFORMANCE_PYTHON``, else
``.venv-conformance/bin/python`` at the repository root (``.ci/run`` makes it when
the machine has a python3.13).  Without one the test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("run_cpython_futures.py")
JOBS = 3  # most of each test waits on its fabric's processes: three at once fit 2 cores
RUN_TIMEOUT_S = 240.0
CLASSES = {"FabricExecutorTest", "FabricWaitTest", "FabricAsCompletedTest", "FabricShutdownTest"}

# Exit 3: no CPython tests; exit 4: a dependency is missing (both skip).  Anything else
# that breaks the import, fabric itself failing to import on this Python say, fails the test.
PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
try:
    import test.test_concurrent_futures.executor, test.test_concurrent_futures.test_shutdown
except ImportError as exc:
    print(f"its stdlib has no test.test_concurrent_futures (CPython 3.13 ships it): {exc}", file=sys.stderr)
    sys.exit(3)
try:
    import fabric.cli, fabric.client.executor, fabric.node.worker
except ModuleNotFoundError as exc:
    if exc.name.partition(".")[0] == "fabric":
        raise
    print(f"it cannot import fabric's dependency {exc.name!r} (pip install the project into it)", file=sys.stderr)
    sys.exit(4)
"""


def conformance_python() -> str:
    """The interpreter to run the CPython tests with; skips when there is none fit for it."""
    named = os.environ.get("FABRIC_CONFORMANCE_PYTHON")
    python = shutil.which(named) if named else str(REPO / ".venv-conformance" / "bin" / "python")
    if python is None or not Path(python).exists():
        where = f"FABRIC_CONFORMANCE_PYTHON={named}" if named else f"{REPO / '.venv-conformance'}"
        pytest.skip(f"no Python 3.13 for CPython's concurrent.futures tests: {where} does not exist "
                    "(.ci/run makes .venv-conformance where python3.13 is installed)")
    runs = subprocess.run([python, "-c", "pass"], capture_output=True, text=True, timeout=60)
    if runs.returncode:  # a pyenv shim for a version not selected, say
        pytest.skip(f"{python} does not run: {runs.stderr.strip()}")
    probe = subprocess.run([python, "-c", PROBE, str(REPO)], capture_output=True, text=True, timeout=120)
    if probe.returncode in (3, 4):
        pytest.skip(f"{python} cannot run CPython's concurrent.futures tests: {probe.stderr.strip()}")
    assert probe.returncode == 0, f"fabric does not import under {python}:\n{probe.stderr}"
    return python


def run(python: str, results: Path) -> str:
    """Run every conformance test; the runner's output.  The runner, its shards and
    their fabrics share a process group, killed whole on a timeout."""
    cmd = [python, str(RUNNER), "--jobs", str(JOBS), "--json", str(results)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            return proc.communicate(timeout=RUN_TIMEOUT_S)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = proc.communicate()[0]
            pytest.fail(f"the conformance run took over {RUN_TIMEOUT_S} s:\n{output[-20000:]}")


@pytest.mark.timeout(RUN_TIMEOUT_S + 150)
def test_cpython_executor_tests_pass_on_fabric(tmp_path: Path, record_property) -> None:
    """Every test passes or is an expected failure naming a known bug (an unexpected
    success, a fixed bug still marked, fails too)."""
    python = conformance_python()
    results = tmp_path / "results.json"
    output = run(python, results)
    assert results.exists(), f"the conformance run wrote no results:\n{output[-20000:]}"
    data = json.loads(results.read_text())
    tests: dict[str, dict] = data["tests"]
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(data["counts"].items()))
    record_property("conformance", summary)
    print(f"CPython {data['python'].split()[0]} concurrent.futures tests on fabric: {summary}")
    for name, record in sorted(tests.items()):
        if record["outcome"] == "expected failure":
            print(f"  expected failure: {name}: {record['detail']}")
    bad = {name: record for name, record in tests.items() if record["outcome"] not in ("passed", "expected failure")}
    assert not bad, f"{summary}\n\n" + "\n\n".join(
        f"{record['outcome'].upper()}: {name}\n{record['detail']}" for name, record in sorted(bad.items())
    )
    assert {name.partition(".")[0] for name in tests} == CLASSES, summary
