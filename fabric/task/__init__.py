"""Wrappers built in the client, shipped with a user's function and run on a worker.

They are imported on the worker when a shipped function is unpickled, so they
must not import :mod:`fabric.client`.
"""
