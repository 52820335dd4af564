"""Tasks defined on the nodes (``@fabric.task``) and called by name from a client
that has no copy of their module; ``fabric-node reload`` during a map; the
initializer and ``fx.run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import all_gone, fabric_pids, free_address, wait_for, worker_pids

import fabric

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}
MODULE = "fabric_test_node_jobs"


def write_jobs(folder: Path, version: int) -> None:
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(f"""
        import time
        import fabric

        VERSION = {version}

        @fabric.task
        def wordcount(text):
            return len(text.split())

        @fabric.task(name="tagged")
        def tag(x, pause_s=0.0):
            time.sleep(pause_s)  # this sleep is the task's work
            return x, VERSION
    """))


@pytest.fixture
def jobs_folder(tmp_path: Path) -> Path:
    """A task module in a folder only the nodes have on their path."""
    folder = tmp_path / "node_only"
    folder.mkdir()
    write_jobs(folder, 1)
    yield folder
    sys.modules.pop(MODULE, None)


def start_with_tasks(start_node, jobs_folder: Path, *, workers: int = 2, name: str = "alpha",
                     join: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    address = free_address()
    proc = start_node(address, workers=workers, join=join, path=(str(jobs_folder),),
                      flags=("--name", name, "--tasks", MODULE))
    return address, proc


def test_tasks_called_by_name_run_only_where_defined_and_unknown_names_are_listed(start_node, jobs_folder):
    assert MODULE not in sys.modules and str(jobs_folder) not in sys.path  # the client cannot import it
    alpha, _ = start_with_tasks(start_node, jobs_folder)
    start_node(free_address(), join=alpha, flags=("--name", "plain"))
    with fabric.connect(alpha, **FAST) as fx:
        wait_for(lambda: fx.workers() == 3, 30, "both nodes' workers")
        assert fx.tasks() == {"tagged": ["alpha"], "wordcount": ["alpha"]}
        assert fx.submit("wordcount", "to be or not to be").result(timeout=30) == 6
        assert list(fx.map("tagged", range(50), chunksize=3)) == [(x, 1) for x in range(50)]
        assert fx.map_reduce("wordcount", lambda acc, n: acc + n, ["a b", "c"], initial=0) == 3
        ran = fx.run("wordcount", "x y")
        assert len(ran) == 2 and set(ran.values()) == {2}  # alpha's two workers, not plain's
        alpha_stats = next(n for n in fx.nodes() if n.name == "alpha")
        assert [m for m, _ in alpha_stats.task_modules] == [MODULE] and len(alpha_stats.task_modules[0][1]) == 32
        with pytest.raises(fabric.UnknownTaskError, match="wordcount") as caught:
            fx.submit("wordcuont", "typo")
        assert isinstance(caught.value, LookupError)
        status = subprocess.run([sys.executable, "-m", "fabric.cli", "status", alpha], capture_output=True,
                                text=True, check=True).stdout
        assert "tagged,wordcount" in status


def test_reload_during_a_map_restarts_workers_between_batches_and_loses_nothing(start_node, jobs_folder):
    alpha, node = start_with_tasks(start_node, jobs_folder)
    with fabric.connect(alpha, **FAST) as fx:
        wait_for(lambda: fx.workers() == 2, 30, "two workers")
        before = {w.pid for w in psutil.Process(node.pid).children()}
        results = fx.map("tagged", range(400), [0.005] * 400, chunksize=4)
        got = [next(results) for _ in range(20)]
        write_jobs(jobs_folder, 2)
        reload = subprocess.run([sys.executable, "-m", "fabric.cli", "reload", alpha], capture_output=True,
                                text=True, timeout=30)
        assert reload.returncode == 0 and "reloaded" in reload.stdout
        got += list(results)
        assert [x for x, _ in got] == list(range(400))  # every result, once, in order
        assert {v for _, v in got} == {1, 2}  # the old code before the restart, the new after
        assert got[-1][1] == 2
        assert fx.submit("tagged", -1).result(timeout=30) == (-1, 2)
        after = {w.pid for w in psutil.Process(node.pid).children()}
        assert len(after) == 2 and not before & after
        write_jobs(jobs_folder, 3)
        node.send_signal(signal.SIGHUP)
        wait_for(lambda: fx.submit("tagged", 0).result(timeout=30) == (0, 3), 30, "SIGHUP to reload the module")


def test_a_reload_whose_module_fails_to_import_keeps_the_old_tasks(start_node, jobs_folder):
    alpha, _ = start_with_tasks(start_node, jobs_folder, workers=1)
    with fabric.connect(alpha, **FAST) as fx:
        assert fx.submit("wordcount", "up and running").result(timeout=30) == 3
        (jobs_folder / f"{MODULE}.py").write_text("raise ImportError('half-written')\n")
        reload = subprocess.run([sys.executable, "-m", "fabric.cli", "reload", alpha], capture_output=True, text=True,
                                timeout=30)
        assert reload.returncode == 1 and "half-written" in reload.stderr
        assert fx.submit("wordcount", "still here").result(timeout=30) == 2


def load_marker(path: str) -> None:
    """An initializer: leaves one line per call in ``path``, and process state the tasks read
    (this module's functions go by value, each with its own copy of the module's globals)."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    os.environ["FABRIC_TEST_LOADED"] = path


def read_marker(_: object = None) -> str:
    return os.environ["FABRIC_TEST_LOADED"]


MODEL = None  # what load_model sets in each worker, as with ProcessPoolExecutor


def load_model(name: str) -> None:
    global MODEL
    MODEL = {"name": name, "pid": os.getpid()}


def predict(x: int) -> tuple[str, int, int]:
    assert MODEL is not None, "the initializer's global is not seen"
    return MODEL["name"], MODEL["pid"], x


def test_a_global_the_initializer_sets_is_seen_by_tasks_shipped_by_value():
    with fabric.connect(workers=2, initializer=load_model, initargs=("m.bin",)) as fx:
        results = list(fx.map(predict, range(100), chunksize=1))
        assert [x for _, _, x in results] == list(range(100))
        assert {name for name, _, _ in results} == {"m.bin"}
        assert all(pid != os.getpid() for _, pid, _ in results)  # each worker's own, not the client's
        assert fx.submit(predict, 7).result(timeout=30)[::2] == ("m.bin", 7)
    assert MODEL is None


def broken_initializer() -> None:
    raise RuntimeError("the model file is missing")


def test_the_initializer_runs_once_per_worker_before_its_first_task(tmp_path):
    marker = tmp_path / "inits"
    with fabric.connect(workers=2, initializer=load_marker, initargs=(str(marker),)) as fx:
        assert set(fx.map(read_marker, range(200), chunksize=1)) == {str(marker)}
        wait_for(lambda: fx.workers() == 2, 20, "two workers")
        assert set(fx.run(read_marker).values()) == {str(marker)}
        lines = marker.read_text().split()
        assert sorted(lines) == sorted(map(str, worker_pids(fx)))  # once per worker, not per task


def test_an_initializer_that_raises_fails_the_clients_calls_without_restarting_workers():
    with fabric.connect(workers=2, initializer=broken_initializer) as fx:
        pids = wait_for(lambda: len(worker_pids(fx)) == 2 and worker_pids(fx), 20, "two workers")
        with pytest.raises(RuntimeError, match="model file is missing") as caught:
            fx.submit(abs, -1).result(timeout=30)
        assert isinstance(caught.value.__cause__, fabric.RemoteTraceback)
        assert "broken_initializer" in str(caught.value.__cause__)
        with pytest.raises(RuntimeError, match="model file is missing"):
            list(fx.map(abs, range(10)))
        assert worker_pids(fx) == pids  # no restart loop


def noisy_initializer(name: str) -> None:
    print(f"loading {name}")


def test_what_the_initializer_prints_is_shown_though_no_caller_reads_its_result(capsys):
    with fabric.connect(workers=1, initializer=noisy_initializer, initargs=("m.bin",)) as fx:
        assert fx.submit(abs, -1).result(timeout=30) == 1  # after the initializer's batch, on the one worker
        out = capsys.readouterr().out
    assert ":w1) loading m.bin\n" in out


def test_a_fabric_with_an_initializer_let_go_of_shuts_down(no_leaked_processes):
    """Its initializer's failure path reaches the I/O loop, not the fabric, so
    nothing the I/O thread holds keeps the fabric alive."""
    fx = fabric.connect(workers=1, initializer=load_model, initargs=("m.bin",))
    pids = fabric_pids(fx)
    assert fx.submit(predict, 3).result(timeout=30)[::2] == ("m.bin", 3)
    assert fx.tasks() == {}
    del fx
    wait_for(lambda: all_gone(pids), 10, "the fabric let go of to stop its node and worker")


def fails_on_odd_pid(_: object = None) -> int:
    if os.getpid() % 2:
        raise ValueError("odd")
    return os.getpid()


def test_run_reaches_every_live_worker_once_and_keeps_each_outcome():
    with fabric.connect(workers=2) as fx:
        pids = wait_workers_of(fx, 2)
        outcomes = fx.run(fails_on_odd_pid)
        assert len(outcomes) == 2
        for worker, outcome in outcomes.items():
            assert worker.startswith("w-")
            if isinstance(outcome, ValueError):
                assert str(outcome) == "odd"
            else:
                assert outcome in pids and outcome % 2 == 0
        assert sorted(fx.run(os.getpid).values()) == sorted(pids)


def wait_workers_of(fx: fabric.Fabric, count: int) -> set[int]:
    return wait_for(lambda: fx.workers() == count and len(worker_pids(fx)) == count and worker_pids(fx), 20,
                    f"{count} workers")
