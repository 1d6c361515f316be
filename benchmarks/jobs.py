"""The job function every benchmark enqueues. No worker runs it in the benchmarks."""

from __future__ import annotations


def process(user_id: object) -> object:
    """Stand-in for the seed's per-user email processing job."""
    return user_id
