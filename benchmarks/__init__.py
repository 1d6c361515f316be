"""Benchmarks: dedupkit against plain RQ, RQ ``unique=True`` and the naive check-then-enqueue.

Each module is one command (``python -m benchmarks.<name>``); see benchmarks/README.md.
``benchmarks.naive`` is also imported by tests as the reference racy implementation.
"""
