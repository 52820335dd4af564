"""A heartbeat's contents are checked before anything in them is used: endpoints
become connect() calls, counts become loops."""

import pytest

from fabric.cluster.stats import MAX_CLIENT_ID_BYTES, MAX_PEERS, MAX_TASKS, NodeStats, WorkerStats
from fabric.errors import ProtocolError

GOOD = NodeStats(
    node_id=b"n-1", name="alpha", control="tcp://198.18.0.2:7100", pub="tcp://198.18.0.2:40001", workers=1,
    peers=(("tcp://198.18.0.3:7100", "ipc:///tmp/f/node-heartbeat"),),
    per_worker=(WorkerStats("w-1", 42, 10, 1, 0.5, True, b"client-1", 7), WorkerStats("w-2", 43)),
    version=1_764_660_000_123, news=(("tcp://198.18.0.4:7100", "tcp://198.18.0.4:40002", 17, False),),
    resources={"gpu": 2}, tasks=("wordcount",), task_modules=(("mypkg.jobs", "ab" * 16),), indices={"w-1": 0},
)


def test_a_heartbeat_round_trips():
    assert NodeStats.from_info(GOOD.to_info()) == GOOD


@pytest.mark.parametrize("change", [
    {"peers": [["not-an-endpoint", "tcp://1.2.3.4:5"]]},
    {"peers": [["tcp://1.2.3.4:5"]]},
    {"peers": "tcp://1.2.3.4:5"},
    {"peers": [["tcp://1.2.3.4:5", "tcp://1.2.3.4:6"]] * (MAX_PEERS + 1)},
    {"control": "localhost:7100"},
    {"pub": "inproc://x"},
    {"per_worker": ["abcdef"]},
    {"per_worker": [["w", 1, 2, 3, "4", True, b"", 0]]},
    {"per_worker": [["w", 1, 2, 3, 4.0, True]]},
    {"per_worker": [["w", 1, 2, 3, 4.0, True, b"c" * (MAX_CLIENT_ID_BYTES + 1), 1]]},
    {"workers": True},
    {"version": -1.5},
    {"news": [["tcp://1.2.3.4:5", "tcp://1.2.3.4:6", 1, 1]]},
    {"news": [["tcp://1.2.3.4:5", "nowhere", 1, True]]},
    {"news": [["tcp://1.2.3.4:5", "tcp://1.2.3.4:6", -1, True]]},
    {"news": [["tcp://1.2.3.4:5", "tcp://1.2.3.4:6", 1]]},
    {"news": [["tcp://1.2.3.4:5", "tcp://1.2.3.4:6", 1, True]] * (MAX_PEERS + 1)},
    {"resources": {"gpu": -1}},
    {"resources": {"gpu": True}},
    {"resources": ["gpu"]},
    {"tasks": ["x" * 201]},
    {"tasks": [7]},
    {"tasks": ["t"] * (MAX_TASKS + 1)},
    {"task_modules": [["m"]]},
    {"task_modules": [["m", "d" * 129]]},
    {"indices": {"w-1": -1}},
], ids=["bad peer", "short peer", "peers not a list", "too many peers", "control without scheme",
        "pub of another scheme", "worker not a record", "worker field of a wrong type", "worker without its batch",
        "client id too long", "bool for a count", "version not an int", "news alive not a bool",
        "news of no endpoint", "news of a negative version", "short news", "too much news", "negative units",
        "bool units", "resources not a map", "task name too long", "task name not text", "too many tasks",
        "short module record", "digest too long", "negative index"])
def test_a_forged_heartbeat_is_refused(change):
    with pytest.raises(ProtocolError):
        NodeStats.from_info({**GOOD.to_info(), **change})
