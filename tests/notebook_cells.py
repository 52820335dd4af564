"""Notebook cells for tests of what is shipped by value: functions defined in ``__main__``."""


def cell(source):
    """Run ``source`` as a notebook cell would: in a namespace whose module is ``__main__``."""
    namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace
