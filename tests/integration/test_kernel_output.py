"""In a real Jupyter kernel: what tasks print appears under the cell that reads the
results, and a remote traceback shows the cell's source lines."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from helpers import Gate, wait_for

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

TESTS_DIR = str(Path(__file__).resolve().parents[1])
CELLS = [
    "import fabric\nfx = fabric.connect(2)",
    "def shout(x):\n    print('cell task', x)\n    return x\n\nfuture = fx.submit(shout, 'future')",
    "print('before'); print(sum(fx.map(shout, range(4)))); print('after')",
    "future.result()",
    "def boom(x):\n    y = x - x\n    return 1 / y\n\n"
    "try:\n    fx.submit(boom, 1).result()\nexcept ZeroDivisionError as exc:\n    print(exc.__cause__.tb)",
    "fx.shutdown()",
]


def stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def test_task_output_and_tracebacks_in_a_kernel(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120, startup_timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    cells = notebook.cells
    assert stream_text(cells[1]) == ""  # the future's output waits for its result()
    mapped = stream_text(cells[2]).splitlines()
    assert mapped[0] == "before" and mapped[-2:] == ["6", "after"]
    assert [line.split(") ", 1)[1] for line in mapped[1:-2]] == [f"cell task {i}" for i in range(4)]
    assert all(line.startswith("(embedded:w") for line in mapped[1:-2])
    assert stream_text(cells[3]).endswith(") cell task future\n")
    traceback = stream_text(cells[4])
    assert ", line 3, in boom\n    return 1 / y\n" in traceback


def test_interrupting_a_cell_leaves_the_fabric_ready_for_the_next(tmp_path):
    gate = Gate(tmp_path / "gate")  # never opened: the interrupted tasks run until stopped
    started = tmp_path / "started"
    started.mkdir()
    cells = [
        f"import os, sys\nsys.path.insert(0, {TESTS_DIR!r})\nimport fabric\nfrom helpers import gated\n"
        f"fx = fabric.connect(2)\nGATE, STARTED = {gate.path!r}, {str(started)!r}\n"
        f"open({str(tmp_path / 'kernel.pid')!r}, 'w').write(str(os.getpid()))",
        "for _ in fx.map(gated, [GATE] * 20, range(20), [STARTED] * 20):\n    pass",
        "print(sum(fx.map(abs, range(-10, 0))), fx.workers())",
        "fx.shutdown()",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=120, startup_timeout=120,
                                     allow_errors=True, resources={"metadata": {"path": str(tmp_path)}})

    def interrupt_when_running() -> None:
        wait_for(lambda: len(list(started.iterdir())) == 2, 60, "two tasks running in the kernel's fabric")
        os.kill(int((tmp_path / "kernel.pid").read_text()), signal.SIGINT)  # what the notebook's stop button sends

    interrupter = threading.Thread(target=interrupt_when_running, daemon=True)
    interrupter.start()
    try:
        client.execute()
    finally:
        gate.open()
    interrupter.join(10)
    outputs = notebook.cells[1].outputs
    assert [out.get("ename") for out in outputs if out.output_type == "error"] == ["KeyboardInterrupt"]
    assert stream_text(notebook.cells[2]) == "55 2\n"
