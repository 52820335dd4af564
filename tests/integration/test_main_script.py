"""Functions from a script's ``__main__`` run on the workers, and new code is used.

The script runs as its own process (``python script.py``), as a user would
run it, so its functions really live in ``__main__`` and must travel by value.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    '''
    import fabric

    K = 3


    def scale(x):
        return x * K


    def helper():
        return "old helper"


    def uses_helper(x):
        return f"{helper()} {x}"


    def version(x):
        return "old"


    def make_adder(n):
        def add(x):
            return x + n
        return add


    def rebound_cell(fx):
        m = 2
        times = lambda x: x * m
        first = fx.submit(times, 1).result()
        m = 7
        return first, fx.submit(times, 1).result(), list(fx.map(times, range(3)))


    if __name__ == "__main__":
        with fabric.connect(workers=2) as fx:
            print("closure", list(fx.map(make_adder(10), range(4))), fx.submit(make_adder(20), 1).result())
            print("lambda", list(fx.map(lambda x: x * x, range(4))), fx.submit(lambda: "lambda ran").result())
            print("K=3", list(fx.map(scale, range(4))), fx.submit(scale, 1).result())
            K = 5
            print("K=5", list(fx.map(scale, range(4))), fx.submit(scale, 1).result())
            print("version", fx.submit(version, 0).result(), list(fx.map(version, range(2))))

            def version(x):
                return "new"

            print("version", fx.submit(version, 0).result(), list(fx.map(version, range(2))))
            print("helper", fx.submit(uses_helper, 1).result())

            def helper():
                return "new helper"

            print("helper", fx.submit(uses_helper, 2).result(), list(fx.map(uses_helper, [3])))
            print("cell", rebound_cell(fx))
    '''
)

EXPECTED = [
    "closure [10, 11, 12, 13] 21",
    "lambda [0, 1, 4, 9] lambda ran",
    "K=3 [0, 3, 6, 9] 3",
    "K=5 [0, 5, 10, 15] 5",
    "version old ['old', 'old']",
    "version new ['new', 'new']",
    "helper old helper 1",
    "helper new helper 2 ['new helper 3']",
    "cell (2, 7, [0, 7, 14])",
]


def test_main_module_functions_closures_lambdas_and_rebinding(tmp_path, no_leaked_processes):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == EXPECTED, run.stderr
