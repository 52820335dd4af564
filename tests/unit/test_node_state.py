"""The node's membership decisions: who is attached to whom, who hears of a death."""

from fabric.node import NodeState, describe_exit
from fabric.protocol import Attach, Detach, Hello, Welcome, WorkerLost

HELLO = Hello(b"c-1", "ipc:///v", "ipc:///s")


def test_workers_attach_to_clients_in_either_order():
    state = NodeState(b"n-1", "node", credits=3)
    state.worker_spawned(b"w-1", 10)
    out = state.client_hello(HELLO)
    assert out == [(b"c-1", Welcome(b"n-1", "node", 1))]  # the worker is not up yet
    assert state.worker_up(b"w-1") == [(b"w-1", Attach(b"c-1", "ipc:///v", "ipc:///s", 3))]
    state.worker_spawned(b"w-2", 11)
    state.worker_up(b"w-2")
    assert state.worker_up(b"w-2") == []  # repeated WORKER_UP changes nothing


def test_death_is_reported_to_attached_clients_only():
    state = NodeState(b"n-1", "node", credits=2)
    state.worker_spawned(b"w-1", 10)
    state.worker_up(b"w-1")
    state.client_hello(HELLO)
    assert state.worker_exited(b"w-1", -9) == [(b"c-1", WorkerLost(b"w-1", -9, "killed by signal SIGKILL"))]
    assert state.worker_exited(b"w-1", -9) == []


def test_goodbye_detaches():
    state = NodeState(b"n-1", "node", credits=2)
    state.worker_spawned(b"w-1", 10)
    state.worker_up(b"w-1")
    state.client_hello(HELLO)
    assert state.client_goodbye(b"c-1") == [(b"w-1", Detach(b"c-1"))]
    assert state.client_goodbye(b"c-1") == []
    assert state.worker_exited(b"w-1", 0) == []


def test_exit_descriptions():
    assert describe_exit(-11) == "killed by signal SIGSEGV"
    assert describe_exit(3) == "exited with code 3"
