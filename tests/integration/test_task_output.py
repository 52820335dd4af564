"""What a task prints reaches the caller with its results, prefixed with where it ran,
and never blocks a worker; what it writes below Python goes to its node's log."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import free_address, wait_for

import fabric
from fabric.config import CacheConfig

PREFIX = re.compile(r"^\(embedded:w\d+\) ", re.MULTILINE)

SCRIPT = textwrap.dedent("""
    import fabric

    def chatty(i):
        print("x" * 999)
        return i

    if __name__ == "__main__":
        with fabric.connect(workers=2) as fx:
            total = sum(fx.map(chatty, range(10_000), timeout=120))
        print("total", total)
""")


def test_ten_megabytes_of_task_output_neither_hang_the_map_nor_the_exit(tmp_path):
    """Once ~64 KiB were unread in the node's stdout pipe, every worker blocked in
    write(); now each batch keeps at most its limit, and says what it dropped."""
    script = tmp_path / "chatty.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "total 49995000" in run.stdout
    lines = run.stdout.count("x" * 999 + "\n")  # a line cut by the limit is shown in part
    dropped = sum(int(n.replace(",", "")) for n in re.findall(r"\[fabric: ([\d,]+) more characters", run.stderr))
    assert run.stdout.count("x") + lines + dropped == 10_000 * 1000  # every character is shown or said dropped
    assert lines > 0
    assert [line[:40] for line in run.stdout.splitlines() if "x" in line and not PREFIX.match(line)] == []


def count_off(i):
    for line in range(3):
        print(f"task {i} line {line}")
    print(f"task {i} warns", file=sys.stderr)
    return i


def test_each_task_s_lines_come_in_order_with_the_map_s_results(fx, capsys):
    assert list(fx.map(count_off, range(40), chunksize=7)) == list(range(40))
    out, err = capsys.readouterr()
    lines = [PREFIX.sub("", line) for line in out.splitlines()]
    assert lines == [f"task {i} line {n}" for i in range(40) for n in range(3)]
    assert [PREFIX.sub("", line) for line in err.splitlines()] == [f"task {i} warns" for i in range(40)]
    assert all(PREFIX.match(line) for line in out.splitlines())


def shout(word):
    import logging
    import warnings
    print(word.upper())
    warnings.warn(f"{word} is loud", stacklevel=1)
    logging.getLogger("task").addHandler(logging.StreamHandler())
    logging.getLogger("task").warning("logged %s", word)
    return word


def test_a_futures_output_is_written_by_result_and_only_once(fx, capsys):
    future = fx.submit(shout, "hey")
    wait_for(future.done, 10, "the task")
    assert capsys.readouterr() == ("", "")  # nothing before the caller asks for the result
    assert future.result() == "hey"
    out, err = capsys.readouterr()
    assert PREFIX.fullmatch(out[: out.index(" ") + 1]) and out.endswith(" HEY\n")
    assert "hey is loud" in err and "logged hey" in err
    assert future.result() == "hey"
    assert capsys.readouterr() == ("", "")


def test_merged_submits_each_show_their_own_output(fx, capsys):
    futures = [fx.submit(count_off, i) for i in range(30)]
    for i, future in enumerate(futures):
        assert future.result() == i
        out, _ = capsys.readouterr()
        assert [PREFIX.sub("", line) for line in out.splitlines()] == [f"task {i} line {n}" for n in range(3)]


def write_below_python(text):
    import os
    os.write(1, f"fd1 {text}\n".encode())
    os.write(2, f"fd2 {text}\n".encode())
    print(f"printed {text}")
    return text


def test_without_forwarding_output_goes_to_the_node_log(make_fabric, capsys):
    fx = make_fabric(workers=1, forward_output=False)
    assert fx.submit(write_below_python, "quiet-7f3a").result() == "quiet-7f3a"
    assert capsys.readouterr() == ("", "")
    log = Path(fx.nodes()[0].log_file)
    wait_for(lambda: "printed quiet-7f3a" in log.read_text(errors="replace"), 10, "the print in the node's log")
    text = log.read_text(errors="replace")
    assert "fd1 quiet-7f3a" in text and "fd2 quiet-7f3a" in text


def test_descriptor_level_output_goes_to_the_node_log_named_in_status(fx, capsys):
    assert fx.submit(write_below_python, "loud-91c2").result() == "loud-91c2"
    out, _ = capsys.readouterr()
    assert "printed loud-91c2" in out and "fd1" not in out
    status = subprocess.run([sys.executable, "-m", "fabric.cli", "status", fx.address], capture_output=True,
                            text=True, timeout=30)
    log = Path(re.search(r"log of embedded: (\S+)", status.stdout)[1])
    assert log == Path(fx.nodes()[0].log_file)
    wait_for(lambda: "fd1 loud-91c2" in log.read_text(errors="replace"), 10, "the descriptor's write in the log")


def test_a_daemons_workers_write_to_its_log_beside_its_cache_shard(start_node, tmp_path):
    address = free_address()
    start_node(address)
    with fabric.connect(address, heartbeat_interval_s=0.2, liveness_s=1.0) as fx:
        wait_for(lambda: fx.workers() == 1, 20, "the daemon's worker")
        assert fx.submit(write_below_python, "daemon-5e1d").result(timeout=30) == "daemon-5e1d"
        node = fx.nodes()[0]
        log = Path(node.log_file)
    assert log == CacheConfig(dir=str(tmp_path / "cache")).shard_path(node.name).with_suffix(".log")
    wait_for(lambda: "fd2 daemon-5e1d" in log.read_text(errors="replace"), 10, "the worker's write in the log")
    assert f"node {node.name} on " in log.read_text()  # the daemon's own messages are there too
