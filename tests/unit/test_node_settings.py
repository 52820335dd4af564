"""One node settings type and one check: every source (cluster.toml, ``fabric-node
start`` flags, ``connect()`` keywords) refuses a bad value at once, with the same words."""

from __future__ import annotations

import pytest

import fabric
from fabric import cli
from fabric.config import CacheConfig, ClusterConfig, ConfigError, NodeSettings, check_settings, parse_config

# key, a bad value, how every source's message ends
CASES = [
    ("workers", 0, "workers: must be >= 1 (worker processes), got 0"),
    ("workers", -1, "workers: must be >= 1 (worker processes), got -1"),
    ("prefetch", 0, "prefetch: from 1 to 64 (batches each worker may hold), got 0"),
    ("prefetch", 65, "prefetch: from 1 to 64 (batches each worker may hold), got 65"),
    ("heartbeat_interval_s", 0, "heartbeat_interval_s: must be > 0 (seconds between heartbeats), got 0"),
    ("liveness_s", 0.5, "liveness_s: must exceed heartbeat_interval_s (1 s) by several beats, got 0.5"),
    ("connect_timeout_s", -1, "connect_timeout_s: must be > 0 (seconds queued work waits for a worker), got -1"),
    ("max_load", 101, "max_load: a CPU percentage from 0 to 100, got 101"),
    ("max_load", -1, "max_load: a CPU percentage from 0 to 100, got -1"),
    ("memory_limit_mb", -1, "memory_limit_mb: must be >= 0 (0: no limit), got -1"),
    ("retries", 0, "retries: must be >= 1 (attempts for a task whose worker dies), got 0"),
    ("max_clients", 0, "max_clients: from 1 to 500 (clients attached at once), got 0"),
    ("max_clients", 501, "max_clients: from 1 to 500 (clients attached at once), got 501"),
]
FLAGS = {
    "workers": "--workers", "prefetch": "--prefetch", "heartbeat_interval_s": "--heartbeat-interval",
    "liveness_s": "--liveness", "max_load": "--max-load", "memory_limit_mb": "--memory-limit-mb",
    "max_clients": "--max-clients",
}
CONNECT_KEYWORDS = {"workers", "prefetch", "heartbeat_interval_s", "liveness_s", "connect_timeout_s",
                    "memory_limit_mb", "retries"}
CLUSTER_KEYS = {"heartbeat_interval_s", "liveness_s", "connect_timeout_s", "retries"}  # [cluster]; others [[node]]


def cases(keys):
    return [pytest.param(key, value, tail, id=f"{key}={value}") for key, value, tail in CASES if key in keys]


@pytest.mark.parametrize(("key", "value", "tail"), cases(CLUSTER_KEYS | set(FLAGS)))
def test_cluster_file(key, value, tail):
    node = {"name": "a", "address": "tcp://127.0.0.1:7100"}
    data = {"cluster": {key: value}, "node": [node]} if key in CLUSTER_KEYS else {"node": [{**node, key: value}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "cluster.toml")
    where = "cluster." if key in CLUSTER_KEYS else "node[0]."
    assert str(caught.value) == f"cluster.toml: {where}{tail}"


@pytest.mark.parametrize(("key", "value", "tail"), cases(FLAGS))
def test_fabric_node_start_flag(key, value, tail, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["start", FLAGS[key], str(value)])
    assert caught.value.code == 2
    assert capsys.readouterr().err == f"fabric-node: error: command line: {tail}\n"


@pytest.mark.parametrize(("key", "value", "tail"), cases(CONNECT_KEYWORDS))
def test_connect_keyword(key, value, tail, no_leaked_processes):
    with pytest.raises(ConfigError) as caught:
        fabric.connect(**{key: value})
    assert str(caught.value) == f"connect(): {tail}"


@pytest.mark.parametrize(("key", "value", "tail"), cases({key for key, _, _ in CASES}))
def test_the_one_check(key, value, tail):
    settings = NodeSettings(**{key: value}) if key not in {"connect_timeout_s", "retries"} else ClusterConfig(
        **{key: value})
    with pytest.raises(ConfigError) as caught:
        check_settings(settings, "here")
    assert str(caught.value) == f"here: {tail}"


def test_defaults_pass():
    check_settings(NodeSettings(), "defaults")
    check_settings(ClusterConfig(), "defaults")


def test_settings_travel_as_json_unchanged():
    settings = NodeSettings(
        name="embedded", address="ipc:///tmp/x/node", workers=1, prefetch=3, max_load=80.0, memory_limit_mb=64,
        heartbeat_interval_s=0.2, liveness_s=1.0, seeds=("tcp://127.0.0.1:7200",), key_file="/k.key",
        cache=CacheConfig(dir="/c", max_entries=10, max_bytes=2048, replicas=2), owner_pid=42, owner_dir="/tmp/x",
    )
    assert NodeSettings.from_json(settings.to_json(), "stdin") == settings


@pytest.mark.parametrize(("text", "why"), [
    ("not json", "not node settings"),
    ('{"workers": 2}', "not node settings"),  # no seeds, no cache
    (NodeSettings(workers=2).to_json().replace('"workers": 2', '"workers": 0'), "workers: must be >= 1"),
    (NodeSettings().to_json().replace('"name"', '"colour"'), "not node settings"),
])
def test_settings_from_json_are_checked(text, why):
    with pytest.raises(ConfigError, match=why):
        NodeSettings.from_json(text, "stdin")


def test_a_cluster_file_gives_each_node_its_settings(tmp_path):
    data = {
        "cluster": {"heartbeat_interval_s": 0.5, "liveness_s": 2.0, "key_file": "cluster.key"},
        "cache": {"max_bytes": 4096},
        "node": [{"name": "a", "address": "tcp://127.0.0.1:7100", "workers": 3, "prefetch": 4},
                 {"name": "b", "address": "tcp://127.0.0.1:7200"}],
    }
    config = parse_config(data, "cluster.toml", tmp_path)
    a = config.node("a")
    assert (a.address, a.workers, a.prefetch, a.seeds) == ("tcp://127.0.0.1:7100", 3, 4, ("tcp://127.0.0.1:7200",))
    assert (a.heartbeat_interval_s, a.liveness_s, a.cache.max_bytes) == (0.5, 2.0, 4096)
    assert a.key_file == config.key_file == str(tmp_path / "cluster.key")
    assert config.node("b").seeds == ("tcp://127.0.0.1:7100",)


def test_the_command_line_wins_over_the_cluster_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\nheartbeat_interval_s = 0.5\nliveness_s = 2.0\n'
                    '[[node]]\nname = "a"\naddress = "tcp://127.0.0.1:7100"\nworkers = 3\n'
                    '[[node]]\nname = "b"\naddress = "tcp://127.0.0.1:7200"\n')
    args = cli.build_parser().parse_args(["start", "--config", str(path), "--name", "a", "--workers", "1",
                                          "--liveness", "4", "--join", "tcp://127.0.0.1:7300"])
    settings = cli.node_settings(args)
    assert (settings.name, settings.workers, settings.heartbeat_interval_s, settings.liveness_s) == ("a", 1, 0.5, 4.0)
    assert settings.seeds == ("tcp://127.0.0.1:7200", "tcp://127.0.0.1:7300")
    bad = cli.build_parser().parse_args(["start", "--config", str(path), "--name", "a", "--heartbeat-interval", "3"])
    with pytest.raises(ConfigError, match="liveness_s: must exceed heartbeat_interval_s"):  # 2.0 from the file
        cli.node_settings(bad)


def test_resources_and_task_modules_from_every_source(tmp_path):
    node = {"name": "a", "address": "tcp://127.0.0.1:7100", "resources": {"licence": 1, "gpu": 2},
            "tasks": ["mypkg.jobs"]}
    from_file = parse_config({"node": [node]}, "cluster.toml").node("a")
    assert (from_file.resources, from_file.tasks) == ((("gpu", 2), ("licence", 1)), ("mypkg.jobs",))
    args = cli.build_parser().parse_args(["start", "--resources", "gpu=2, licence=1", "--tasks", "mypkg.jobs",
                                          "--tasks", "other.tasks,third"])
    flags = cli.node_settings(args)
    assert flags.resources == from_file.resources and flags.tasks == ("mypkg.jobs", "other.tasks", "third")
    assert NodeSettings.from_json(flags.to_json(), "stdin") == flags


@pytest.mark.parametrize(("node", "why"), [
    ({"resources": {"gpu": -1}}, "resources.gpu: a whole number"),
    ({"resources": {"gpu": "two"}}, "resources.gpu: a whole number"),
    ({"resources": {"x" * 201: 1}}, "resources: a name of 1 to 200"),
    ({"tasks": ["not a module"]}, "is not a module name"),
    ({"tasks": "mypkg.jobs"}, "expected a list"),
])
def test_bad_resources_or_task_modules_are_refused(node, why):
    with pytest.raises(ConfigError, match=why):
        parse_config({"node": [{"name": "a", "address": "tcp://127.0.0.1:7100", **node}]}, "cluster.toml")


@pytest.mark.parametrize("flag", ["gpu", "gpu=x", "gpu=-1"])
def test_a_bad_resources_flag_is_one_line(flag, capsys):
    with pytest.raises(SystemExit):
        cli.main(["start", "--resources", flag])
    assert capsys.readouterr().err.startswith("fabric-node: error: --resources: ")
