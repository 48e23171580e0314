"""Job dispatch through procrastinate (PostgreSQL), the task engine for multi-host deployments.

- The API enqueues in the same transaction as the job row, through procrastinate's own SQL function,
  so a job row never exists without its task and a task never points at a missing row.
- Each task carries ``lock=<classifier name>``: procrastinate never runs two jobs with one lock at once,
  so two jobs for one classifier never overlap, whichever worker takes them.
- A task that finds its job no longer queued (cancelled, or already failed) does nothing: a job is never
  trained twice.
- Stalled-job recovery, which procrastinate leaves to the application: every worker looks for jobs whose
  worker stopped sending heartbeats, marks the procrastinate job failed (releasing its lock) and the
  Engram job failed with the reason.

SQLite deployments (the embedded default) have no procrastinate; ``service.jobs.worker`` polls the jobs table.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from service.jobs.host import make_runner, run_with_heartbeat
from service.persistence.models import Job
from service.persistence.registry import claim_job, end_job
from service.settings import Settings

log = logging.getLogger("engram.tasks")
TASK_NAME = "engram.train"


def uses_procrastinate(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def libpq_url(url: str) -> str:
    """SQLAlchemy's postgresql+psycopg://... -> libpq's postgresql://..."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def enqueue(s: Session, settings: Settings, job_id: str, classifier: str) -> None:
    """Defer the training task inside the caller's transaction (commit makes both visible at once):
    procrastinate's own defer, run on the session's psycopg connection."""
    import procrastinate
    from procrastinate.jobs import Job as TaskJob

    # Never opened: with an explicit connection, procrastinate uses that and no pool of its own.
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector())
    task = TaskJob(id=None, queue=settings.queue, lock=f"classifier:{classifier}", queueing_lock=None,
                   task_name=TASK_NAME, task_kwargs={"job_id": job_id})  # fmt: skip
    app.job_manager.defer_job(task, connection=s.connection().connection.driver_connection)


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
            if job is not None and job.status in ("queued", "running", "evaluating"):
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
