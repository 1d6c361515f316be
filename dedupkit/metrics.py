"""Prometheus metrics for dedupkit (optional: ``pip install "rq-dedupkit[metrics]"``).

    from prometheus_client import REGISTRY
    REGISTRY.register(DedupkitCollector([dedup]))

Every scrape costs two round trips per queue of O(1) commands (HGETALL of the small
counters hash; then pipelined HLEN, LLEN, ZCARD), and two for ``dedupkit_follow_ups``, which
counts only follow-ups RQ still defers (an entry stays in the follow-ups hash after its job
ran: see ``dedupkit.follow_ups``): no slot is scanned, however many there are. On RQ 3 with
rate limits in use, the jobs waiting in them are read once per scrape (a rate limit spans
queues, so each waiting job's ``origin`` is read: see ``sizes.py``).
``dedupkit_slots`` counts occupied slot fields, including slots of ended jobs that gc has
not collected yet; it is an upper bound of keys with a pending job, and the exact pending
numbers are RQ's own sizes in ``dedupkit_rq_jobs``. ``dedupkit_cron_ticks`` counts the ticks of
``dedupkit.cron`` jobs admitted and skipped (their previous run still pending), per cron job:
one more HGETALL per queue.
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

from .cron import OUTCOMES as CRON_OUTCOMES
from .cron import counts as cron_counts
from .deduplicator import Deduplicator
from .sizes import PENDING_STATES, queue_sizes

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
        cron_ticks = CounterMetricFamily("dedupkit_cron_ticks", "Ticks of dedupkit.cron jobs, admitted or skipped "
                                         "(the previous run still pending)", labels=["queue", "cron_job", "outcome"])
        for dedup, sizes in zip(self.deduplicators, queue_sizes(self.deduplicators), strict=True):
            name = dedup.queue.name
            counts = dedup.stats()
            for decision in sorted(set(DECISIONS) | set(counts)):
                decisions.add_metric([name, decision], counts.get(decision, 0))
            slots.add_metric([name], sizes["slots"])
            follow_ups.add_metric([name], sizes["follow_ups"])
            for state in PENDING_STATES:
                rq_jobs.add_metric([name, state], sizes[state])
            for cron_job, ticks in cron_counts(dedup.queue, namespace=dedup.namespace).items():
                for outcome in CRON_OUTCOMES:
                    cron_ticks.add_metric([name, cron_job, outcome], ticks[outcome])
        yield from (decisions, slots, follow_ups, rq_jobs, cron_ticks)


def prometheus_text(deduplicators: Iterable[Deduplicator]) -> bytes:
    """The metrics of these Deduplicators in Prometheus text format (for a /metrics view)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DedupkitCollector(deduplicators))
    return generate_latest(registry)
