"""The training worker: takes queued jobs, one at a time, and runs them.

On PostgreSQL the jobs come through procrastinate (enqueued by ``service.jobs.queue``); on SQLite, the embedded
default, this module polls the jobs table.

- A task that finds its job no longer queued (cancelled, or already failed) does nothing: a job is never
  trained twice.
- Stalled-job recovery, which procrastinate leaves to the application: every worker looks for jobs whose
  worker stopped sending heartbeats, marks the procrastinate job failed (releasing its lock) and the
  Engram job failed with the reason.

It knows nothing of HTTP. While a job runs, a thread refreshes the job's heartbeat; if the worker dies,
the API's reaper marks the job failed once the heartbeat is older than ``stale_after_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from service.domain.job_status import LIVE
from service.jobs.host import make_runner, run_with_heartbeat
from service.jobs.queue import TASK_NAME, libpq_url, uses_procrastinate
from service.persistence.models import Job
from service.persistence.notify import JobBell
from service.persistence.registry import claim_job, claim_next_job, end_job
from service.settings import Settings

log = logging.getLogger("engram.worker")


def run_worker(
    settings: Settings,
    stop: threading.Event | None = None,
    max_jobs: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> int:
    """Work until ``stop`` is set (or ``max_jobs`` are done); returns the number of jobs run. ``on_stage``:
    see ``service.jobs.host.make_runner`` (None in production; the crash tests' fault injection)."""
    stop = stop or threading.Event()
    engine, sessions, runner, worker_id = make_runner(settings, on_stage)
    bell = JobBell(settings.run_dir)  # rung by the API as it queues a job: no poll interval to wait out
    log.info("worker %s ready (device %s)", worker_id, settings.device)
    done = 0
    try:
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            with sessions() as s:
                job_id = claim_next_job(s, worker_id)
            if job_id is None:
                bell.wait(settings.worker_poll_seconds)
                continue
            log.info("worker %s took job %s", worker_id, job_id)
            run_with_heartbeat(runner, sessions, job_id, settings.heartbeat_seconds)
            done += 1
    finally:
        bell.close()
        engine.dispose()
    return done


def run_procrastinate_worker(settings: Settings) -> None:
    """A procrastinate worker on ``settings.queue``: one training job at a time, with stalled recovery."""
    import procrastinate
    from procrastinate.jobs import Status

    engine, sessions, runner, worker_id = make_runner(settings)
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=libpq_url(settings.db_url)))

    @app.task(name=TASK_NAME, queue=settings.queue)
    def train(job_id: str) -> None:
        with sessions() as s:
            if not claim_job(s, job_id, worker_id):
                log.info("job %s is no longer queued; nothing to do", job_id)
                return
        run_with_heartbeat(runner, sessions, job_id, settings.heartbeat_seconds)

    def fail_engram_job(pg_job_args: dict[str, Any]) -> None:
        job_id = str(pg_job_args.get("job_id", ""))
        with sessions() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is not None and job.status in LIVE:
                end_job(job, "failed",
                        "the worker stopped responding (procrastinate found its task stalled); it died or was killed")  # fmt: skip
                s.commit()
                if job.retention == "discard":
                    runner.store.delete_job(job_id)

    async def recover_stalled() -> None:
        while True:
            try:
                for pg_job in await app.job_manager.get_stalled_jobs(
                    queue=settings.queue, seconds_since_heartbeat=settings.stale_after_seconds
                ):
                    log.warning("procrastinate job %s stalled; marking it failed", pg_job.id)
                    assert pg_job.id is not None
                    await app.job_manager.finish_job_by_id_async(pg_job.id, Status.FAILED, delete_job=False)
                    await asyncio.to_thread(fail_engram_job, dict(pg_job.task_kwargs))
                await app.job_manager.prune_stalled_workers(settings.stale_after_seconds)
            except Exception:
                log.exception("stalled-job recovery failed; retrying")
            await asyncio.sleep(max(1.0, settings.stale_after_seconds / 4))

    async def main() -> None:
        async with app.open_async():
            recovery = asyncio.create_task(recover_stalled())
            try:
                await app.run_worker_async(
                    queues=[settings.queue],
                    name=worker_id,
                    concurrency=1,
                    update_heartbeat_interval=settings.heartbeat_seconds,
                    stalled_worker_timeout=settings.stale_after_seconds,
                    shutdown_graceful_timeout=5,
                )
            finally:
                recovery.cancel()

    log.info("procrastinate worker %s on queue %r (device %s)", worker_id, settings.queue, settings.device)
    asyncio.run(main())
    engine.dispose()


def serve_jobs(settings: Settings) -> None:
    """Run the worker that fits the database: procrastinate on PostgreSQL, the polling loop on SQLite."""
    if uses_procrastinate(settings.db_url):
        run_procrastinate_worker(settings)
    else:
        run_worker(settings)


def die_with_parent() -> None:
    """When started by ``engram serve``, ask the kernel to end this process if the server dies (even by
    SIGKILL), so a worker never outlives the server that supervises it."""
    parent = os.environ.get("ENGRAM_PARENT_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("cannot tie the worker's life to its server on this platform")
    if os.getppid() != int(parent):  # the server died before prctl took effect
        os._exit(0)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    die_with_parent()
    serve_jobs(Settings())


if __name__ == "__main__":
    main()
