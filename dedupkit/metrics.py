"""Prometheus metrics for dedupkit (optional: ``pip install "rq-dedupkit[metrics]"``).

    from prometheus_client import REGISTRY
    REGISTRY.register(DedupkitCollector([dedup]))

Every scrape costs one pipelined round trip per queue of O(1) commands (HGETALL of the
small counters hash, HLEN, LLEN, ZCARD), and two for ``dedupkit_follow_ups``, which counts
only follow-ups RQ still defers (an entry stays in the follow-ups hash after its job ran:
see ``dedupkit.follow_ups``): no slot is scanned, however many there are.
``dedupkit_slots`` counts occupied slot fields, including slots of ended jobs that gc has
not collected yet; it is an upper bound of keys with a pending job, and the exact pending
numbers are RQ's own sizes in ``dedupkit_rq_jobs``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # the optional extra is not installed
    raise ImportError(
        f"dedupkit.metrics needs prometheus_client ({exc}): install the metrics extra, "
        "pip install \"rq-dedupkit[metrics]\"", name=exc.name) from exc

from . import scripts
from .deduplicator import Deduplicator
from .follow_ups import waiting as waiting_follow_ups

DECISIONS = ("admitted", "conflict", "replaced", "follow_up", "recovered", "dead", "cancelled", "swept",
             "collision", "error")


class DedupkitCollector(Collector):
    """Collects the decision counters and O(1) gauges of some Deduplicators' queues."""

    def __init__(self, deduplicators: Iterable[Deduplicator]) -> None:
        self.deduplicators = list(deduplicators)

    def collect(self) -> Iterator[Any]:
        decisions = CounterMetricFamily("dedupkit_decisions", "Admission decisions by dedupkit's scripts",
                                        labels=["queue", "decision"])
        slots = GaugeMetricFamily("dedupkit_slots", "Occupied dedupkit slots (upper bound of pending keys)",
                                  labels=["queue"])
        follow_ups = GaugeMetricFamily("dedupkit_follow_ups", "Follow-up jobs waiting for a running job",
                                       labels=["queue"])
        rq_jobs = GaugeMetricFamily("dedupkit_rq_jobs", "RQ jobs by state, from RQ's queue and registries",
                                    labels=["queue", "state"])
        for dedup in self.deduplicators:
            k, name = dedup.keys, dedup.queue.name
            with scripts.redis_errors(), dedup.connection.pipeline(transaction=False) as pipe:
                pipe.hgetall(k.stats)
                pipe.hlen(k.slots)
                pipe.llen(k.queue)
                pipe.zcard(k.scheduled)
                pipe.zcard(k.started)
                pipe.zcard(k.deferred)
                stats, n_slots, queued, scheduled, started, deferred = pipe.execute()
            n_follow = waiting_follow_ups(dedup)
            counts = {key.decode(): int(value) for key, value in stats.items()}
            for decision in sorted(set(DECISIONS) | set(counts)):
                decisions.add_metric([name, decision], counts.get(decision, 0))
            slots.add_metric([name], n_slots)
            follow_ups.add_metric([name], n_follow)
            for state, value in (("queued", queued), ("scheduled", scheduled), ("started", started),
                                 ("deferred", deferred)):
                rq_jobs.add_metric([name, state], value)
        yield from (decisions, slots, follow_ups, rq_jobs)


def prometheus_text(deduplicators: Iterable[Deduplicator]) -> bytes:
    """The metrics of these Deduplicators in Prometheus text format (for a /metrics view)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DedupkitCollector(deduplicators))
    return generate_latest(registry)
