"""The cluster key: its file, where it is looked for, and what it allows."""

import os
import stat

import pytest
import zmq

from fabric.config import ConfigError, load_config
from fabric.node.loop import check_bind
from fabric.wire.security import KEY_FILE_ENV, ClusterKey, write_key_file


def test_a_new_key_file_is_private_and_loads_back(tmp_path):
    written = write_key_file(tmp_path / "cluster.key")
    assert stat.S_IMODE(os.stat(tmp_path / "cluster.key").st_mode) == 0o600
    assert ClusterKey.load(tmp_path / "cluster.key") == written
    assert len(written.public) == len(written.secret) == 40 and written.public != written.secret


def test_an_existing_key_file_is_never_overwritten(tmp_path):
    first = write_key_file(tmp_path / "cluster.key")
    with pytest.raises(ConfigError, match="exists"):
        write_key_file(tmp_path / "cluster.key")
    assert ClusterKey.load(tmp_path / "cluster.key") == first


@pytest.mark.parametrize("text, why", [
    ("public = abc\nsecret = def\n", "40-character"),
    ("just some words\n", "name = value"),
    ("", "40-character"),
])
def test_a_malformed_key_file_names_itself_and_the_problem(tmp_path, text, why):
    path = tmp_path / "bad.key"
    path.write_text(text)
    with pytest.raises(ConfigError, match=why) as caught:
        ClusterKey.load(path)
    assert str(path) in str(caught.value)


def test_a_public_key_that_is_not_the_secrets_is_refused(tmp_path):
    one, other = write_key_file(tmp_path / "one.key"), write_key_file(tmp_path / "other.key")
    mixed = tmp_path / "mixed.key"
    mixed.write_text(f"public = {other.public.decode()}\nsecret = {one.secret.decode()}\n")
    with pytest.raises(ConfigError, match="does not belong"):
        ClusterKey.load(mixed)


def test_a_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.key"):
        ClusterKey.load(tmp_path / "nowhere.key")


def test_the_key_is_found_by_argument_then_environment(tmp_path, monkeypatch):
    given, from_env = write_key_file(tmp_path / "given.key"), write_key_file(tmp_path / "env.key")
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    assert ClusterKey.find(None) is None
    monkeypatch.setenv(KEY_FILE_ENV, from_env.path)
    assert ClusterKey.find(None) == from_env
    assert ClusterKey.find(given.path) == given


def test_a_cluster_files_key_path_is_relative_to_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cluster.toml").write_text('[cluster]\nkey_file = "cluster.key"\n')
    assert load_config(tmp_path / "conf" / "cluster.toml").key_file == str(tmp_path / "conf" / "cluster.key")


def test_only_a_keyed_node_may_bind_a_reachable_address_without_the_insecure_flag():
    with pytest.raises(ConfigError, match="keygen"):
        check_bind("tcp://198.18.0.2:7100", insecure=False)
    check_bind("tcp://198.18.0.2:7100", insecure=False, keyed=True)
    check_bind("tcp://127.0.0.1:7100", insecure=False)


def test_a_libzmq_without_curve_is_named_as_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(zmq, "has", lambda capability: capability != "curve")
    with pytest.raises(ConfigError, match="without CURVE"):
        write_key_file(tmp_path / "cluster.key")
