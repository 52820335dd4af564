"""Every notebook in examples/ runs top to bottom in a real Jupyter kernel
(nbclient), as a user runs it, and its cells show what they should: printed
lines, progress bars that reached their end, a plot, the fabric's HTML.

Also here: ``await`` and ``async for`` with top-level await in a kernel cell."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing notebooks needs nbformat (pip install '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="executing notebooks needs nbclient (pip install '.[test]')")
pytest.importorskip("ipykernel", reason="executing notebooks needs ipykernel (pip install '.[test]')")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT_S = 120


def execute(nb, cwd: Path, timeout_s: float = CELL_TIMEOUT_S):
    """Run ``nb`` in a fresh python3 kernel in ``cwd``; a cell that raises or runs over
    ``timeout_s`` fails the test (nbclient's CellExecutionError, CellTimeoutError)."""
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout_s,
                                     resources={"metadata": {"path": str(cwd)}})
    env = {name: value for name, value in os.environ.items() if name != "MPLBACKEND"}  # the kernel's inline plots
    client.execute(env={**env, "PYTHONPATH": os.pathsep.join(sys.path)})
    return nb


def cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def stream(c, name: str = "stdout") -> str:
    return "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == name)


def bar_finished(nb, c) -> bool:
    """The cell's tqdm bar reached its total: a widget whose saved state is full, or text at 100 %."""
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    views = [o.data["application/vnd.jupyter.widget-view+json"]["model_id"] for o in c.outputs
             if o.output_type == "display_data" and "application/vnd.jupyter.widget-view+json" in o.data]
    if not views:  # no ipywidgets in the kernel: tqdm.auto draws text on stderr
        return "100%" in stream(c, "stderr")
    for child in widgets[views[0]]["state"]["children"]:
        model = widgets[child.removeprefix("IPY_MODEL_")]
        if model["model_name"] == "FloatProgressModel":
            return model["state"]["value"] == model["state"]["max"] and model["state"]["bar_style"] == "success"
    return False


def check_experiment(nb) -> None:
    """examples/experiment.ipynb shows what each of its steps promises."""
    assert stream(cell(nb, "rebind")).splitlines() == ["999999 2000000 True"]  # the rebound global
    assert stream(cell(nb, "redefine")).splitlines() == ["True"]  # the new code
    assert "hits 200, misses 200" in stream(cell(nb, "cache"))
    for bar in ("progress", "sweep", "futures-progress"):
        assert bar_finished(nb, cell(nb, bar)), bar
    printed = stream(cell(nb, "task-output"))
    assert all(f"task {x} says hello" in printed for x in range(3)), printed
    total = sum(x * x for x in range(20))
    assert stream(cell(nb, "await")).splitlines() == ["awaited: 144", f"async for total: {total}"]
    assert any("image/png" in o.get("data", {}) for o in cell(nb, "sweep").outputs)  # the plot
    assert stream(cell(nb, "joblib")).strip() == str([s * s for s in range(8)])
    counted, kept = stream(cell(nb, "by-key")).splitlines()
    assert counted == "True 60000" and kept.endswith("partitions on the nodes; True")
    page = next(o.data["text/html"] for o in cell(nb, "display").outputs if o.output_type == "execute_result")
    assert "<table" in page and "Workers" in page and "Tasks done" in page


CHECKS = {"experiment.ipynb": check_experiment}  # a notebook without checks must at least run without error


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_example_notebook_runs_in_a_kernel_and_shows_its_outputs(path):
    nb = execute(nbformat.read(path, as_version=4), EXAMPLES)
    assert all(o.output_type != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    CHECKS.get(path.name, lambda nb: None)(nb)


SETUP_CELL = """
import asyncio, fcntl, os
import fabric

fx = fabric.connect()
ticks = 0


async def ticker():
    global ticks
    while True:
        await asyncio.sleep(0)  # sleep(0): a yield to the event loop, not a wait
        ticks += 1


def gated_double(x, gate):
    fd = os.open(gate, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # blocks until the kernel releases its lock on the gate
    os.close(fd)
    return 2 * x


def closed_gate(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def open_gate(fd, after):
    # Only a turning event loop opens the gate: 50 turns once after() holds.
    start = None
    while start is None or ticks - start < 50:
        await asyncio.sleep(0)  # sleep(0): a yield to the event loop, not a wait
        if start is None and after():
            start = ticks
    os.close(fd)
"""

AWAIT_CELL = """
tasks = [asyncio.ensure_future(ticker()),
         asyncio.ensure_future(open_gate(closed_gate("gate-a"), lambda: True)),
         asyncio.ensure_future(open_gate(closed_gate("gate-b"), lambda: "value" in globals()))]
value = await fx.submit(gated_double, 21, "gate-a")
results = [x async for x in fx.map(gated_double, range(4), ["gate-b"] * 4)]
tasks[0].cancel()
print(value, results)
"""


def test_await_and_async_for_work_with_top_level_await_in_a_kernel(tmp_path):
    # The tasks wait on gates that only coroutines of the kernel's event loop open, once the
    # loop has turned while the cell awaited: had awaiting blocked the loop, the cell would hang.
    cells = [SETUP_CELL, AWAIT_CELL, "fx.shutdown()"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    execute(nb, tmp_path, timeout_s=30)
    assert stream(nb.cells[1]).splitlines() == ["42 [0, 2, 4, 6]"]
