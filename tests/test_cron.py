"""dedupkit.cron: RQ's cron (``rq cron CONFIG``) without a run beside its own pending run.

In-process: RQ's own CronScheduler loads a config file and ticks by hand (fakeredis and a
real server). As real processes: ``rq cron`` with a config file, real ``rq worker``s and a
real redis-server, two ``rq cron`` processes on one config; a job that runs longer than its
interval never overlaps itself, judged
from RQ's job hashes and the job's own start/end log, while RQ's own cron job of the same
function in the same file does overlap.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import rq
from rq import Queue, SimpleWorker
from rq.cron import CronJob, CronScheduler
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, InvalidKeyError, InvalidRequestError
from dedupkit import cron as dcron
from dedupkit.cli import main
from dedupkit.cron import DedupCronJob
from dedupkit.encoding import MAX_KEY_BYTES

from .support import ROOT, RQ_BIN, RedisServer, RQWorker, wait_for
from .tasks import step_log_key, step_work

# RQ's per-name history of cron runs (rq.cron_job_registry): RQ 3 and late 2.x (2.12 has it, 2.10 not).
HISTORY = importlib.util.find_spec("rq.cron_job_registry") is not None
CONFIG = """\
from rq import cron as rq_cron
from dedupkit import cron
from tests.tasks import step_work, work

cron.register(step_work, "cronq", args=("dedup", 0), interval=60, name="dedup-run")
cron.register(work, "cronq", args=("a",), interval=60, per_args=True)
cron.register(work, "cronq", args=("b",), interval=60, per_args=True)
rq_cron.register(work, "cronq", args=("plain",), interval=60)
"""


def write_config(tmp_path: Path, text: str, name: str = "cron_config.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def loaded(conn: redis.Redis, path: str) -> CronScheduler:
    scheduler = CronScheduler(connection=conn)
    scheduler.load_config_from_file(path)
    return scheduler


def tick(scheduler: CronScheduler) -> None:
    """One pass of RQ's loop with every job due now (as if each interval had passed)."""
    for job in scheduler.get_jobs():
        job.latest_enqueue_time = None
    scheduler.enqueue_jobs()


# -- registration ------------------------------------------------------------------------

def test_config_file_loaded_by_rqs_scheduler_registers_dedup_jobs_beside_rqs(
        fake_redis: redis.Redis, tmp_path: Path) -> None:
    scheduler = loaded(fake_redis, write_config(tmp_path, CONFIG))
    jobs = scheduler.get_jobs()
    ours = [j for j in jobs if isinstance(j, DedupCronJob)]
    assert [type(j) for j in jobs].count(CronJob) == 1  # rq.cron.register's job is RQ's own, untouched
    assert [j.key for j in ours] == ["cron:dedup-run", 'cron:tests.tasks.work:[["a"],{}]',
                                     'cron:tests.tasks.work:[["b"],{}]']
    assert [j.name for j in ours] == ["dedup-run", "tests.tasks.work", "tests.tasks.work"]
    assert all(j.interval == 60 and j.queue_name == "cronq" for j in ours)
    assert ours[0].to_dict()["dedup_key"] == "cron:dedup-run"


def test_relative_module_config_is_found_too(fake_redis: redis.Redis, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, CONFIG, "dk_cron_cfg_mod.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dk_cron_cfg_mod", raising=False)
    scheduler = loaded(fake_redis, "dk_cron_cfg_mod")
    assert sum(isinstance(j, DedupCronJob) for j in scheduler.get_jobs()) == 3


def test_register_outside_a_loading_scheduler_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="found no CronScheduler loading this config file"):
        dcron.register(step_work, "cronq", interval=5)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"key": "k", "per_args": True}, InvalidRequestError, "not both"),
    ({"args": (object(),), "per_args": True}, InvalidRequestError, "JSON-serializable"),
    ({"args": ("x" * MAX_KEY_BYTES,), "per_args": True}, InvalidKeyError, "bytes"),
    ({"key": "  "}, InvalidKeyError, "whitespace"),
    ({"func": lambda: None}, InvalidRequestError, "lambda"),
    ({"func": "tests.tasks.work"}, InvalidRequestError, "must be a callable"),
    ({"namespace": "a b"}, InvalidRequestError, "namespace"),
    ({"job_id_prefix": "a:b"}, InvalidRequestError, "prefix"),
])
def test_bad_registrations_are_typed_errors(fake_redis: redis.Redis, kwargs: dict[str, Any],
                                            error: type[Exception], message: str) -> None:
    scheduler = CronScheduler(connection=fake_redis)
    func = kwargs.pop("func", step_work)
    with pytest.raises(error, match=message):
        dcron.register(func, "cronq", interval=5, scheduler=scheduler, **kwargs)
    assert scheduler.get_jobs() == []


def test_a_function_defined_in_the_config_file_is_refused(fake_redis: redis.Redis, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # RQ imports an absolute-path config as module rq_cron_config_<file>: no worker can.
    path = write_config(tmp_path, "from dedupkit import cron\n\ndef job():\n    pass\n\n"
                                  "cron.register(job, 'cronq', interval=5)\n")
    with pytest.raises(ImportError, match="defined in the cron config file itself"):
        loaded(fake_redis, path)


def test_rq_rejects_a_schedule_as_for_its_own_jobs(fake_redis: redis.Redis) -> None:
    scheduler = CronScheduler(connection=fake_redis)
    with pytest.raises(ValueError, match="either interval or cron"):
        dcron.register(step_work, "cronq", scheduler=scheduler)
    job = dcron.register(step_work, "cronq", cron="*/5 * * * *", scheduler=scheduler)
    assert job.cron == "*/5 * * * *" and job.next_enqueue_time is not None


def test_the_counts_key_joins_rqs_hash_tag(fake_redis: redis.Redis) -> None:
    from dedupkit.keys import cron_counts_key

    class TaggedQueue(Queue):  # what RQ 3 names under RQ_KEY_PREFIX={rq} (read at import)
        redis_queue_namespace_prefix = "{rq}:queue:"

    assert cron_counts_key(Queue("q", connection=fake_redis), "dedupkit") == "dedupkit:cron:q"
    assert cron_counts_key(TaggedQueue("q", connection=fake_redis), "ns") == "{rq}:ns:cron:q"


# -- ticks, in-process ---------------------------------------------------------------------

def test_a_tick_is_skipped_logged_and_counted_while_the_run_is_pending(
        conn: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scheduler = loaded(conn, write_config(tmp_path, CONFIG))
    dedup_job, per_a, per_b = [j for j in scheduler.get_jobs() if isinstance(j, DedupCronJob)]
    queue = Queue("cronq", connection=conn)
    with caplog.at_level(logging.INFO, logger="rq.cron"):
        tick(scheduler)
        first = dedup_job.deduplicator(conn).status(dedup_job.key)
        tick(scheduler)
        tick(scheduler)
    assert first.pending and first.job_id is not None
    # Three dedup jobs and RQ's own plain job: one job each for the dedup keys, three for RQ's.
    jobs = [Job.fetch(i, connection=conn) for i in queue.get_job_ids()]
    assert sorted(j.args[0] for j in jobs) == ["a", "b", "dedup", "plain", "plain", "plain"]
    assert (dedup_job.admitted, dedup_job.skipped, per_a.skipped, per_b.skipped) == (1, 2, 2, 2)
    skips = [r.getMessage() for r in caplog.records
             if r.name == "rq.cron.dedupkit" and r.getMessage().startswith("Skipping cron job dedup-run")]
    assert len(skips) == 2
    assert f"key cron:dedup-run - job already pending: {{'key': 'cron:dedup-run', 'job_id': '{first.job_id}'" \
        in skips[0]
    assert dcron.counts(queue) == {"dedup-run": {"admitted": 1, "skipped": 2},
                                   "tests.tasks.work": {"admitted": 2, "skipped": 4}}
    assert Deduplicator(queue).stats()["conflict"] == 6  # a skip is the admission's conflict

    # Once the run ends, the next tick is admitted again.
    SimpleWorker([queue], connection=conn).work(burst=True)
    assert Job.fetch(first.job_id, connection=conn).get_status() == JobStatus.FINISHED
    tick(scheduler)
    again = dedup_job.deduplicator(conn).status(dedup_job.key)
    assert again.pending and again.job_id != first.job_id
    assert dcron.counts(queue)["dedup-run"] == {"admitted": 2, "skipped": 2}
    if HISTORY:  # RQ's own per-name history lists the runs dedupkit admitted, newest first
        assert dedup_job.get_job_ids(conn) == [again.job_id, first.job_id]


def test_redis_failing_the_count_after_the_admission_is_logged_not_raised(
        fake_redis: redis.Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = CronScheduler(connection=fake_redis)
    job = dcron.register(step_work, "cronq", args=("x", 0), interval=5, scheduler=scheduler, name="blip")

    def down(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("connection lost")

    monkeypatch.setattr(fake_redis, "hincrby", down)
    monkeypatch.setattr(fake_redis, "pipeline", down)  # RQ 3's history write
    with caplog.at_level(logging.WARNING, logger="rq.cron"):
        admitted = job.enqueue(fake_redis)
    assert admitted is not None and admitted.get_status() == JobStatus.QUEUED  # the run stands
    assert job.admitted == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Could not count the admitted tick of cron job blip" in w for w in warnings)
    assert any(f"Could not record job {admitted.id}" in w for w in warnings) == HISTORY


def test_counts_reach_the_metrics(fake_redis: redis.Redis, tmp_path: Path) -> None:
    parser = pytest.importorskip("prometheus_client.parser")  # the metrics extra (not in .venv-rq2)
    from dedupkit.metrics import prometheus_text

    scheduler = loaded(fake_redis, write_config(tmp_path, CONFIG))
    tick(scheduler)
    tick(scheduler)
    text = prometheus_text([Deduplicator(Queue("cronq", connection=fake_redis))]).decode()
    samples = {(s.labels["cron_job"], s.labels["outcome"]): s.value
               for family in parser.text_string_to_metric_families(text)
               for s in family.samples if s.name == "dedupkit_cron_ticks_total"}
    assert samples == {("dedup-run", "admitted"): 1, ("dedup-run", "skipped"): 1,
                       ("tests.tasks.work", "admitted"): 2, ("tests.tasks.work", "skipped"): 2}


def test_counts_reach_the_cli(fake_redis: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = loaded(fake_redis, write_config(tmp_path, CONFIG))
    tick(scheduler)
    tick(scheduler)
    monkeypatch.setattr("dedupkit.cli._configured", lambda args: fake_redis)
    assert main(["cron", "cronq", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == dcron.counts(Queue("cronq", connection=fake_redis))
    assert main(["cron", "cronq"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CRON", "JOB", "ADMITTED", "SKIPPED"]
    assert [line.split() for line in lines[1:]] == [["dedup-run", "1", "1"], ["tests.tasks.work", "2", "2"]]
    assert main(["cron", "otherq"]) == 0
    assert "no dedupkit.cron ticks" in capsys.readouterr().out


# -- the real processes: rq cron, rq workers, redis-server -------------------------------------

REAL_CONFIG = """\
from rq import cron as rq_cron
from dedupkit import cron
from tests.tasks import step_work

# Both run 2.5 s every 1 s; three workers take them.
cron.register(step_work, "cron_dedup", args=("dedup", {seconds}), interval=1, job_timeout=60, name="long-run")
rq_cron.register(step_work, "cron_plain", args=("plain", {seconds}), interval=1, job_timeout=60)
"""


def _runs(conn: redis.Redis, tag: str) -> list[tuple[str, float, float]]:
    """(job id, start, end) of each run, from the job's own log of start and end times."""
    starts: dict[str, float] = {}
    runs = []
    for raw in conn.lrange(step_log_key(tag), 0, -1):
        event = json.loads(raw)
        if event["ev"] == "start":
            starts[event["job"]] = event["t"]
        else:
            runs.append((event["job"], starts.pop(event["job"]), event["t"]))
    assert not starts, f"runs of {tag} without an end: {starts}"
    return sorted(runs, key=lambda r: r[1])


def _overlaps(intervals: list[tuple[str, Any, Any]]) -> list[tuple[str, str]]:
    """Pairs of runs whose [start, end] intervals overlap, each run against the next by start
    (none there means none at all: each ends before the next starts)."""
    ordered = sorted(intervals, key=lambda r: r[1])
    return [(a[0], b[0]) for a, b in itertools.pairwise(ordered) if b[1] < a[2]]


def _rq_intervals(conn: redis.Redis, job_ids: list[str]) -> list[tuple[str, datetime, datetime]]:
    """(job id, started_at, ended_at) from RQ's job hashes."""
    jobs = [Job.fetch(job_id, connection=conn) for job_id in job_ids]
    assert all(j.started_at and j.ended_at for j in jobs), [(j.id, j.get_status()) for j in jobs]
    return [(j.id, j.started_at, j.ended_at) for j in jobs]  # type: ignore[misc]


@pytest.mark.slow
def test_rq_cron_process_never_overlaps_a_long_job(real_server: RedisServer, real_redis: redis.Redis,
                                                   tmp_path: Path) -> None:
    """Two ``rq cron`` processes on one config (RQ's cron has no leader: both tick), three workers."""
    seconds, run_for = 2.5, 9.0
    config = write_config(tmp_path, REAL_CONFIG.format(seconds=seconds))
    workers = [RQWorker(real_server.url, ["cron_dedup", "cron_plain"], name=f"cron-w{i}") for i in range(3)]
    logs = [tempfile.NamedTemporaryFile(prefix="rq-cron-", suffix=".log", delete=False) for _ in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    crons: list[subprocess.Popen[bytes]] = []
    dedup_queue, plain_queue = Queue("cron_dedup", connection=real_redis), Queue("cron_plain", connection=real_redis)
    try:
        wait_for(lambda: len(rq.Worker.all(connection=real_redis)) == 3, 30, what="three rq workers")
        crons = [subprocess.Popen([RQ_BIN, "cron", "-u", real_server.url, "--path", str(ROOT), config], cwd=ROOT,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                 for log in logs]
        # The clock starts once both have loaded the config (imports take seconds on a busy machine).
        wait_for(lambda: all("registering birth" in Path(log.name).read_text() for log in logs), 60,
                 what="both rq cron processes to start")
        time.sleep(run_for)
        for proc, log in zip(crons, logs, strict=True):
            assert proc.poll() is None, Path(log.name).read_text()
            proc.send_signal(signal.SIGTERM)
        for proc in crons:
            proc.wait(15)
        # No more ticks: RQ's backlog of plain runs is dropped, the runs under way finish.
        plain_queue.empty()
        wait_for(lambda: not dedup_queue.count and not dedup_queue.started_job_registry.get_job_ids()
                 and not plain_queue.started_job_registry.get_job_ids(),
                 3 * seconds + 10, what="the runs under way to finish")
    finally:
        for proc in crons:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for worker in workers:
            worker.stop()
        for log in logs:
            log.close()
    output = "\n".join(Path(log.name).read_text() for log in logs)

    # What the job itself logged, and what RQ recorded in each job's hash.
    dedup_runs, plain_runs = _runs(real_redis, "dedup"), _runs(real_redis, "plain")
    finished = sorted(dedup_queue.finished_job_registry.get_job_ids())
    assert sorted(r[0] for r in dedup_runs) == finished
    assert _overlaps(dedup_runs) == []
    assert _overlaps(_rq_intervals(real_redis, finished)) == []
    # RQ's own cron, the same job in the same file, ran beside itself: the judge can tell.
    assert _overlaps(plain_runs), plain_runs
    assert _overlaps(_rq_intervals(real_redis, [r[0] for r in plain_runs]))

    # Every tick was admitted or skipped; skips were logged by rq cron and counted in Redis.
    counts = dcron.counts(dedup_queue)["long-run"]
    enqueued = [line for line in output.splitlines() if "Enqueued job job_cron-3along-2drun_" in line]
    skipped = [line for line in output.splitlines()
               if "Skipping cron job long-run for key cron:long-run - job already pending" in line]
    assert counts == {"admitted": len(enqueued), "skipped": len(skipped)}, output
    assert counts["admitted"] == len(finished) >= 2
    assert counts["skipped"] >= counts["admitted"]  # 2.5 s runs on a 1 s interval skip 1-2 ticks per run
    assert counts["admitted"] + counts["skipped"] >= run_for  # about one tick a second in each process
    assert all("'pending': True" in line for line in skipped)
    assert dedup_queue.failed_job_registry.count == 0
    print(f"\nrq {rq.__version__}, 2 rq cron processes: dedupkit.cron {counts['admitted']} runs, "
          f"{counts['skipped']} ticks skipped, "
          f"0 overlaps; rq.cron {len(plain_runs)} runs, {len(_overlaps(plain_runs))} overlapping pairs")
