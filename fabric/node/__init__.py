"""Code that runs in a node process (``fabric-node``, or the embedded node) and its workers.

The node (:mod:`.loop`, every decision in :mod:`.state` and :mod:`.health`,
psutil readings from :mod:`.load`) spawns and watches worker processes
(:mod:`.worker`), publishes heartbeats and holds a result-cache shard
(:mod:`.store`); ``python -m fabric.node`` (:mod:`.__main__`) is the embedded
node.  Nothing here imports :mod:`fabric.client`.
"""
