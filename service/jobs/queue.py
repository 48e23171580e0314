"""The job queue's API side: enqueue a training job through procrastinate (PostgreSQL), the task engine for
multi-host deployments. The API process imports this and nothing of the worker (``service.jobs.worker`` runs
the tasks: procrastinate's worker with stalled-job recovery on PostgreSQL, a polling loop on SQLite).

- The API enqueues in the same transaction as the job row, through procrastinate's own SQL function,
  so a job row never exists without its task and a task never points at a missing row.
- Each task carries ``lock=<classifier name>``: procrastinate never runs two jobs with one lock at once,
  so two jobs for one classifier never overlap, whichever worker takes them.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

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
