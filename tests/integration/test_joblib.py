"""joblib's "fabric" backend: Parallel and scikit-learn's n_jobs on a fabric's workers."""

from __future__ import annotations

import functools
import operator
import os
import subprocess
import sys

import pytest
from helpers import square, worker_pids
from notebook_cells import cell

joblib = pytest.importorskip("joblib", reason="the joblib backend needs joblib (pip install '.[test]')")
import fabric.joblib  # noqa: E402, F401  (registers the backend, after the skip)
from fabric.client.executor import current_fabric  # noqa: E402

Parallel, delayed = joblib.Parallel, joblib.delayed


def test_parallel_runs_every_call_on_the_current_fabric_s_workers(fx):
    assert current_fabric() is fx
    with joblib.parallel_config(backend="fabric"):
        pids = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(40))
        assert Parallel(n_jobs=-1)(delayed(square)(x) for x in range(100)) == [x * x for x in range(100)]
    assert set(pids) <= worker_pids(fx) and os.getpid() not in pids


def test_a_function_of_the_notebook_goes_by_value_with_its_globals(fx):
    notebook = cell("K = 7\n\ndef times_k(x):\n    return x * K\n")
    with joblib.parallel_config(backend="fabric", fabric=fx):
        assert Parallel()(delayed(notebook["times_k"])(x) for x in range(10)) == [x * 7 for x in range(10)]


def test_n_jobs_minus_one_is_every_worker_of_the_fabric(fx):
    with joblib.parallel_config(backend="fabric", fabric=fx):
        assert joblib.effective_n_jobs(-1) == fx.workers() == 2
        assert joblib.effective_n_jobs(-2) == 1
        assert joblib.effective_n_jobs(5) == 5


def test_a_task_error_comes_back_with_its_type_and_the_rest_is_abandoned(fx):
    with joblib.parallel_config(backend="fabric", fabric=fx), pytest.raises(ZeroDivisionError):
        Parallel(n_jobs=-1)(delayed(operator.truediv)(1, x) for x in [1, 2, 0, 3])
    with joblib.parallel_config(backend="fabric", fabric=fx):  # the fabric is still usable
        assert Parallel(n_jobs=-1)(delayed(operator.neg)(x) for x in range(3)) == [0, -1, -2]


def nested_sum(n: int) -> tuple[int, str]:
    """A task that uses joblib itself: it runs sequentially on its worker."""
    backend, _ = joblib.parallel.get_active_backend()
    return sum(Parallel(n_jobs=-1)(delayed(abs)(-x) for x in range(n))), type(backend).__name__


def test_joblib_inside_a_task_runs_sequentially_on_its_worker(fx):
    with joblib.parallel_config(backend="fabric", fabric=fx):
        assert Parallel(n_jobs=2)(delayed(nested_sum)(n) for n in (3, 4)) == [(3, "SequentialBackend"),
                                                                               (6, "SequentialBackend")]


def test_generator_output_streams_results(fx):
    with joblib.parallel_config(backend="fabric", fabric=fx):
        results = Parallel(n_jobs=-1, return_as="generator")(delayed(square)(x) for x in range(20))
        assert list(results) == [x * x for x in range(20)]


def scored_away_from(client_pid: int | None, estimator, X, y) -> float:
    """The estimator's accuracy; raises if scored in the process ``client_pid``."""
    if os.getpid() == client_pid:
        raise RuntimeError("scored in the client, not on a worker")
    return estimator.score(X, y)


def test_grid_search_under_the_backend_matches_the_sequential_search(fx):
    datasets = pytest.importorskip("sklearn.datasets", reason="needs scikit-learn (pip install '.[test]')")
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = datasets.load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1, 1]}
    sequential = GridSearchCV(SVC(), grid, n_jobs=1, scoring=functools.partial(scored_away_from, None)).fit(X, y)
    with joblib.parallel_config(backend="fabric", fabric=fx):
        on_workers = functools.partial(scored_away_from, os.getpid())  # every fit is scored on a worker
        distributed = GridSearchCV(SVC(), grid, n_jobs=-1, scoring=on_workers, error_score="raise").fit(X, y)
    assert distributed.best_params_ == sequential.best_params_
    assert list(distributed.cv_results_["mean_test_score"]) == list(sequential.cv_results_["mean_test_score"])
    assert list(distributed.cv_results_["params"]) == list(sequential.cv_results_["params"])
    assert (distributed.predict(X) == sequential.predict(X)).all()


SCRIPT = """
import joblib, fabric.joblib
from fabric.client.executor import current_fabric
assert current_fabric() is None
with joblib.parallel_config(backend="fabric"):
    print(joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(x, 2) for x in range(5)))
print(current_fabric() is not None)
"""


def test_without_an_open_fabric_it_connects_the_embedded_one_which_stops_at_exit():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0, 1, 4, 9, 16]", "True"]


def test_a_backend_set_once_follows_the_fabric_connected_last(make_fabric):
    # A notebook sets the backend once, then shuts its fabric down and connects again.
    first = make_fabric()
    with joblib.parallel_config(backend="fabric"):
        first_workers = worker_pids(first)
        assert set(Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(8))) <= first_workers
        first.shutdown()
        second = make_fabric()
        assert set(Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(8))) <= worker_pids(second)
