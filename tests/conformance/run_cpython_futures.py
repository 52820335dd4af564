"""CPython's own concurrent.futures tests, run against fabric.

fabric promises to be a drop-in ``concurrent.futures.Executor``; the surest check
is the test suite CPython holds its own executors to.  This script takes the
classes ``ExecutorTest``, ``WaitTests``, ``AsCompletedTests`` and
``ExecutorShutdownTest`` from the running interpreter's stdlib
(``test.test_concurrent_futures``, shipped with CPython 3.13) and combines each
with :class:`FabricMixin` through CPython's own ``create_executor_tests``, just as
CPython builds its ProcessPoolExecutor variants.  None of CPython's test code is
copied here: what is below is only what differs for fabric.

Run it with a Python 3.13 that can import fabric's dependencies; this checkout's
fabric is imported, not an installed copy::

    .venv-conformance/bin/python tests/conformance/run_cpython_futures.py [--jobs N] [--json FILE] [TEST ...]

It exits 0 when every test passed or was an expected failure.  A known bug is an
expected failure naming the bug (:func:`known_bug`); once the bug is fixed the
run reports an unexpected success and fails, so the mark gets removed.
``tests/conformance/test_concurrent_futures_conformance.py`` runs it under pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # this checkout's fabric, as `python -m pytest` from the root imports it

# The classes under test come from the stdlib of the interpreter running this script.
from test.test_concurrent_futures import util  # noqa: E402
from test.test_concurrent_futures.executor import ExecutorTest  # noqa: E402
from test.test_concurrent_futures.test_as_completed import AsCompletedTests  # noqa: E402
from test.test_concurrent_futures.test_shutdown import ExecutorShutdownTest  # noqa: E402
from test.test_concurrent_futures.test_wait import WaitTests  # noqa: E402

import fabric  # noqa: E402

SCRIPT_TIMEOUT_S = 60.0  # a script that hangs at exit fails its test instead of stalling the run
KNOWN_BUGS: dict[str, str] = {}  # test method name -> the bug that makes it fail


def known_bug(reason: str):
    """Mark a test as an expected failure because of the fabric bug ``reason``."""

    def mark(test):
        KNOWN_BUGS[test.__name__] = reason
        return unittest.expectedFailure(test)

    return mark


def connect(max_workers: int) -> fabric.Fabric:
    """The executor constructor the CPython tests call: their ``max_workers`` is ``connect()``'s ``workers``."""
    return fabric.connect(workers=max_workers)


class FabricMixin(util.ExecutorMixin):
    """Each test gets a fresh embedded fabric, shut down (wait=True) by ExecutorMixin.tearDown."""

    executor_type = staticmethod(connect)
    worker_count = 2  # few workers: test_cancel_futures needs at most 5, and CI has 2 cores


class ExecutorTests(ExecutorTest):
    def test_max_workers_negative(self):
        """Adapted: fabric's keyword is ``workers``, so its ValueError names that, not ``max_workers``."""
        for number in (0, -1):
            with self.assertRaisesRegex(ValueError, r"\bworkers: must be >= 1"):
                self.executor_type(max_workers=number)


class ShutdownTests(ExecutorShutdownTest):
    """The three tests whose scripts import the executor by name from concurrent.futures
    are rewritten to import fabric; the assertions are CPython's."""

    def run_script(self, body: str) -> tuple[str, str]:
        """Run ``body`` in a new interpreter importing this checkout's fabric; its stdout and stderr."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.run(
            [sys.executable, "-X", "faulthandler", "-c", textwrap.dedent(body)],
            capture_output=True, text=True, env=env, timeout=SCRIPT_TIMEOUT_S,
        )
        self.assertEqual(proc.returncode, 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc.stdout, proc.stderr

    def assert_submitted_work_finishes(self, then: str = "") -> None:
        """A script submits a 1 s task, runs ``then`` and ends: the task finishes first and nothing
        is on stderr.  CPython's task prints "apple"; ours reports through its future's callback,
        in the script's own process, as fabric's workers do not write to the caller's stdout."""
        out, err = self.run_script(f"""
            import time
            import fabric

            def report(future):
                error = future.exception()
                print("apple" if error is None else f"failed: {{error!r}}", flush=True)

            if __name__ == "__main__":
                t = fabric.connect(workers=2)
                t.submit(time.sleep, 1.0).add_done_callback(report)
                {then}
        """)
        self.assertFalse(err)
        self.assertEqual(out.strip(), "apple")

    def test_interpreter_shutdown(self):
        """Work submitted but never waited for still completes before the interpreter exits."""
        self.assert_submitted_work_finishes()

    def test_submit_after_interpreter_shutdown(self):
        """An atexit hook that runs after fabric's own gets a RuntimeError from submit()."""
        out, err = self.run_script("""
            import atexit

            @atexit.register
            def run_last():
                try:
                    t.submit(id, None)
                except RuntimeError:
                    print("runtime-error")
                    raise

            import fabric

            if __name__ == "__main__":
                t = fabric.connect(workers=2)
                t.submit(id, 42).result()
        """)
        self.assertIn("ClosedError: cannot schedule new work", err)
        self.assertEqual(out.strip(), "runtime-error")

    def test_hang_gh83386(self):
        """shutdown(wait=False) with a running future neither hangs the exit nor loses the work."""
        self.assert_submitted_work_finishes(then="t.shutdown(wait=False)")


for _tests in (ExecutorTests, WaitTests, AsCompletedTests, ShutdownTests):
    util.create_executor_tests(globals(), _tests, executor_mixins=(FabricMixin,))


def setUpModule():
    util.setup_module()


# -- running ---------------------------------------------------------------------------


class RecordingResult(unittest.TextTestResult):
    """A text result that also keeps each test's outcome, duration and details for --json."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}

    def _record(self, test: unittest.TestCase, outcome: str, detail: str = "") -> None:
        case = getattr(test, "test_case", test)  # a failing subTest counts against its test
        name = case.id().removeprefix(f"{__name__}.")
        record = self.records.setdefault(name, {"outcome": "passed", "detail": ""})
        if record["outcome"] == "passed":  # the first failure of a test is the one to show
            record.update(outcome=outcome, detail=detail)
        if name in self._started:
            record["seconds"] = round(time.monotonic() - self._started[name], 2)

    def startTest(self, test: unittest.TestCase) -> None:
        self._started[test.id().removeprefix(f"{__name__}.")] = time.monotonic()
        super().startTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failed", self.failures[-1][1])

    def addError(self, test, err):
        super().addError(test, err)
        if isinstance(test, unittest.TestCase):  # not a module or class fixture
            self._record(test, "error", self.errors[-1][1])
        else:
            self.records[str(test)] = {"outcome": "error", "detail": self.errors[-1][1]}

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(subtest, "failed" if failed else "error", (self.failures if failed else self.errors)[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "expected failure", KNOWN_BUGS.get(test._testMethodName, ""))

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        bug = KNOWN_BUGS.get(test._testMethodName, "")
        self._record(test, "unexpected success", f"passes although marked as a known bug (fixed? drop the mark): {bug}")


def all_test_names() -> list[str]:
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    return [test.id().removeprefix(f"{__name__}.") for test in _flatten(suite)]


def _flatten(suite: unittest.TestSuite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def run_here(names: list[str]) -> dict[str, dict[str, Any]]:
    """Run the named tests in this process; their records."""
    module = sys.modules[__name__]
    suite = unittest.defaultTestLoader.loadTestsFromNames(names, module)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=RecordingResult)
    result = runner.run(suite)
    assert isinstance(result, RecordingResult)
    return result.records


def run_sharded(names: list[str], jobs: int) -> dict[str, dict[str, Any]]:
    """Run the tests in ``jobs`` child processes at once (most of a test is waiting on its
    fabric's processes, so shards overlap well); print each shard's output, merge the records."""
    shards = [names[i::jobs] for i in range(jobs)]
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="fabric-conformance-") as tmp, contextlib.ExitStack() as logs:
        children = []
        for i, shard in enumerate(shards):
            out = Path(tmp) / f"shard{i}.json"
            log = logs.enter_context(open(Path(tmp) / f"shard{i}.log", "w+"))
            cmd = [sys.executable, __file__, "--jobs", "1", "--json", str(out), *shard]
            children.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), out, log))
        for i, (child, out, log) in enumerate(children):
            child.wait()
            log.seek(0)
            sys.stderr.write(f"--- shard {i + 1} of {jobs} (exit code {child.returncode}) ---\n{log.read()}")
            if out.exists():
                records.update(json.loads(out.read_text())["tests"])
            else:
                records[f"shard {i + 1}"] = {"outcome": "error", "detail": f"exit code {child.returncode}, no results"}
    return records


def summarize(records: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records.values():
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    return counts


def headline(detail: str) -> str:
    """The exception line of a traceback (a reason is its own headline)."""
    lines = detail.strip().splitlines()
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    after = lines[tracebacks[-1] + 1:] if tracebacks else lines
    return next((line for line in after if line and not line[0].isspace()), detail.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", help="test names such as FabricWaitTest.test_timeout (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="run the tests in this many processes at once")
    parser.add_argument("--json", type=Path, help="write each test's outcome to this file")
    parser.add_argument("--list", action="store_true", help="print the test names and exit")
    args = parser.parse_args(argv)
    names = args.tests or all_test_names()
    if args.list:
        print("\n".join(names))
        return 0
    started = time.monotonic()
    records = run_sharded(names, args.jobs) if args.jobs > 1 and len(names) > 1 else run_here(names)
    counts = summarize(records)
    ok = set(counts) <= {"passed", "expected failure"} and bool(records)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version, "counts": counts, "tests": records}, indent=1))
    print(f"\n{len(records)} tests in {time.monotonic() - started:.1f} s: "
          + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())), file=sys.stderr)
    for name, record in sorted(records.items()):
        if record["outcome"] != "passed":
            print(f"  {record['outcome']}: {name}: {headline(record['detail'])}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
