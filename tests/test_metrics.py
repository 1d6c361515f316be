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


def test_follow_up_gauge_counts_only_what_waits(dedup: Deduplicator, queue: Queue) -> None:
    """A follow-up that RQ released and ran keeps its entry in the follow-ups hash until the
    key's next write; the gauge (and the CLI's size) count only a follow-up still deferred."""
    from rq.job import Job

    from dedupkit import follow_ups

    conn = queue.connection
    running = dedup.enqueue("b", TASK, "x")
    rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("b", TASK, "x", on_conflict="follow_up")
    assert _samples(prometheus_text([dedup]))[("dedupkit_follow_ups", (("queue", "test"),))] == 1
    holder = Job.fetch(running.job_id, connection=conn)
    holder.set_status("finished")
    conn.zrem(queue.started_job_registry.key, *conn.zrange(queue.started_job_registry.key, 0, -1))
    queue.enqueue_dependents(holder)  # RQ releases the follow-up, as its worker does on the holder's end
    rqstate.run_all(queue)
    assert Job.fetch(follow.job_id, connection=conn).get_status() == "finished"
    assert conn.hget(dedup.keys.followups, "b") == follow.job_id.encode(), "the stale entry is still there"
    assert _samples(prometheus_text([dedup]))[("dedupkit_follow_ups", (("queue", "test"),))] == 0
    assert follow_ups.waiting(dedup) == 0


def test_import_without_the_extra_names_it(tmp_path: object) -> None:
    import subprocess
    import sys

    code = "import sys; sys.modules['prometheus_client'] = None; import dedupkit.metrics"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert 'install the metrics extra, pip install "rq-dedupkit[metrics]"' in out.stderr, out.stderr
