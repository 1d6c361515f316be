"""Prometheus metrics: decision counters and O(1) gauges."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from rq import Queue

from dedupkit import Deduplicator
from dedupkit.metrics import prometheus_text

from . import rqstate

TASK = "tests.tasks.work"


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_metrics_text(dedup: Deduplicator, queue: Queue) -> None:
    dedup.enqueue("a", TASK, "x")
    dedup.enqueue("a", TASK, "x")
    running = dedup.enqueue("b", TASK, "x")
    rqstate.start(queue.connection, queue, running.job_id)
    dedup.enqueue("b", TASK, "x", on_conflict="follow_up")
    other = Deduplicator(Queue("other", connection=queue.connection))
    other.enqueue("z", TASK, "x")

    samples = _samples(prometheus_text([dedup, other]))
    q = ("queue", "test")
    assert samples[("dedupkit_decisions_total", (("decision", "admitted"), q))] == 3
    assert samples[("dedupkit_decisions_total", (("decision", "conflict"), q))] == 1
    assert samples[("dedupkit_decisions_total", (("decision", "follow_up"), q))] == 1
    assert samples[("dedupkit_decisions_total", (("decision", "replaced"), q))] == 0
    assert samples[("dedupkit_slots", (q,))] == 2
    assert samples[("dedupkit_follow_ups", (q,))] == 1
    assert samples[("dedupkit_rq_jobs", (q, ("state", "queued")))] == 1
    assert samples[("dedupkit_rq_jobs", (q, ("state", "started")))] == 1
    assert samples[("dedupkit_rq_jobs", (q, ("state", "deferred")))] == 1
    assert samples[("dedupkit_decisions_total", (("decision", "admitted"), ("queue", "other")))] == 1
