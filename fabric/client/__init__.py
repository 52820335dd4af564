"""Code that runs in the client process (a script or a notebook).

The user's threads call the API (:mod:`.executor`, :mod:`.submission`); one I/O
thread (:mod:`.io_loop`) owns every socket and drives the pure dispatch state
(:mod:`.ventilator`); results come back to map streams (:mod:`.mapping`) and
futures (:mod:`.futures`).  Nothing here is imported by a node or a worker.
"""
