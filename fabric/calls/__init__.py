"""How the user's code is called on a worker: the wrappers around it, and the tasks defined on the nodes.

Wrappers built in the client and shipped with a user's function
(:mod:`.guard`: ``retry_on`` and ``task_timeout``; :mod:`.fold`:
``map_reduce(combine=)``; :mod:`.setup`: the initializer; :mod:`.pickled`: a
callable pickled whole) are imported on the worker when a shipped function is
unpickled, so nothing here imports :mod:`fabric.client`.  :mod:`.registry`
holds the ``@fabric.task`` decorator and the node's tasks called by name;
:mod:`.context` what ``fabric.current_worker()`` says about the running call.
"""
