"""Commands posted from many threads all run in the I/O thread: no lost wake-up."""

import threading

import zmq

from fabric.client.io_loop import IOLoop

THREADS = 8
POSTS = 5_000


def test_every_posted_command_runs():
    context = zmq.Context()
    loop = IOLoop(context, b"c-test", "127.0.0.1", retries=3, heartbeat_interval_s=1.0, liveness_s=3.0)
    loop.start()
    ran = []
    start = threading.Barrier(THREADS)

    def poster(n):
        start.wait()
        for i in range(POSTS):
            loop.post(lambda i=i: ran.append((n, i)))

    threads = [threading.Thread(target=poster, args=(n,)) for n in range(THREADS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert loop.wait_idle(timeout_s=30)
        assert len(ran) == THREADS * POSTS
        for n in range(THREADS):  # each thread's commands ran in its order
            assert [i for m, i in ran if m == n] == list(range(POSTS))
    finally:
        loop.stop()
        context.term()
    assert not loop.thread.is_alive()
    assert loop.post(lambda: None) is False
