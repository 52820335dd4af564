"""fabric's benchmark harness: every workload on fabric and on the tools users would
pick instead, in the same run, on the same worker count; ratios, not wall-clock bounds.

``python -m benchmarks`` (or ``fabric-bench``) runs it; see ``runner.py``.
"""
