"""A worker's capture of what tasks print: attributed to each task of a batch
without any work per item, bounded, and written back in the caller with a prefix."""

import io
import sys

import pytest

from fabric.client import output
from fabric.node.output import STDERR, STDOUT, OutputCapture
from fabric.node.worker import apply
from fabric.wire.protocol import Mode


@pytest.fixture
def capture():
    saved = sys.stdout, sys.stderr
    made = OutputCapture(max_chars=100)
    yield made
    sys.stdout, sys.stderr = saved


def chatty(i):
    print("item", i)
    if i % 2:
        print("odd", file=sys.stderr)
    return i


def test_each_write_is_attributed_to_the_task_of_the_batch_that_made_it(capture):
    results = []
    capture.begin(results)
    apply(chatty, Mode.MAP, [0, 1, 2], results)
    assert capture.end() == [[0, STDOUT, "item 0\n"], [1, STDOUT, "item 1\n"], [1, STDERR, "odd\n"],
                             [2, STDOUT, "item 2\n"]]
    assert capture.end() == []  # nothing kept for the next batch


def test_output_beyond_the_limit_is_dropped_and_counted(capture):
    results = []
    capture.begin(results)
    apply(lambda i: print("x" * 39), Mode.MAP, range(5), results)
    records = capture.end()
    assert "".join(text for _, stream, text in records if stream == STDOUT) == ("x" * 39 + "\n") * 2 + "x" * 20
    assert records[-1] == [2, STDERR, "[fabric: 100 more characters of output dropped: a batch keeps at most 100]\n"]


def test_between_batches_writes_go_to_the_workers_own_stream(capture, capfd):
    capture.install()
    print("not a task's")
    sys.stdout.flush()
    assert capture.end() == []
    assert "not a task's" in capfd.readouterr().out


def test_a_handler_made_by_a_task_keeps_writing_through_the_capture(capture):
    import logging
    results = []
    capture.begin(results)
    handler = logging.StreamHandler()  # takes sys.stderr now: the worker's proxy
    capture.end()
    sys.stderr = sys.__stderr__  # a task replaced it; the next batch puts it back
    capture.begin(results)
    handler.emit(logging.makeLogRecord({"msg": "later"}))
    assert capture.end() == [[0, STDERR, "later\n"]]


def test_the_caller_writes_each_line_prefixed_in_task_order(capsys):
    first = output.Printed("(a:w1)", [[1, STDOUT, "one\ntwo"], [0, STDERR, "zero\n"]])
    second = output.Printed("(a:w2)", [[0, STDOUT, "three\n"]])
    output.show_at([((5, 6), first), ((2,), second)])
    assert capsys.readouterr() == ("(a:w2) three\n(a:w1) one\n(a:w1) two\n", "(a:w1) zero\n")
    assert {task: p.records for task, p in first.by_task().items()} == {1: [[1, STDOUT, "one\ntwo"]],
                                                                         0: [[0, STDERR, "zero\n"]]}


def test_the_streams_descriptor_is_the_workers_own(capture):
    assert capture.stdout.fileno() == sys.__stdout__.fileno()
    assert capture.stderr.fileno() == sys.__stderr__.fileno()


def test_a_closed_stream_in_the_caller_costs_it_nothing(monkeypatch):
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    output.show(output.Printed("(a:w1)", [[0, STDOUT, "lost\n"]]))  # no exception: the results still come
