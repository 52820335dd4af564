"""Code that runs in a node process (``fabric-node``, or the embedded node) and its workers.

The node (:mod:`.loop`, decisions in :mod:`.state`) spawns and watches worker
processes (:mod:`.worker`), publishes heartbeats and holds a result-cache
shard (:mod:`.store`).  Nothing here imports :mod:`fabric.client`.
"""
