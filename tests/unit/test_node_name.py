"""An unnamed node is named after the address it binds, so it keeps its cache shard across restarts."""

import socket

from fabric.config import CacheConfig
from fabric.node.loop import default_name


def test_a_tcp_node_is_named_host_port():
    assert default_name("tcp://198.18.0.2:5555") == "198.18.0.2:5555"


def test_a_wildcard_bind_takes_the_machines_name():
    assert default_name("tcp://0.0.0.0:5555") == f"{socket.gethostname()}:5555"


def test_an_ipc_node_is_named_after_its_path():
    assert default_name("ipc:///tmp/fabric/node") == "/tmp/fabric/node"


def test_the_shard_file_is_named_after_the_address():
    assert CacheConfig(dir="/tmp/x").shard_path(default_name("tcp://127.0.0.1:5555")).name == "127.0.0.1_5555.sqlite"
