"""The training worker: takes queued jobs, one at a time, and runs them.

On PostgreSQL the jobs come through procrastinate (``service.tasks``); on SQLite, the embedded default,
this module polls the jobs table.

It knows nothing of HTTP. While a job runs, a thread refreshes the job's heartbeat; if the worker dies,
the API's reaper marks the job failed once the heartbeat is older than ``stale_after_seconds``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.db import Job, make_engine, make_sessionmaker, utcnow
from service.registry import claim_next_job
from service.settings import Settings
from service.storage import open_store

if TYPE_CHECKING:
    from service.training import JobRunner

log = logging.getLogger("engram.worker")


def beat(sessions: sessionmaker[Session], job_id: str) -> None:
    """Mark a running job alive."""
    try:
        with sessions() as s:
            job = s.get(Job, job_id)
            if job is not None:
                job.heartbeat_at = utcnow()
                s.commit()
    except Exception:  # a busy database must not kill the heartbeat
        log.warning("heartbeat for job %s failed", job_id, exc_info=True)


def _heartbeat(sessions: sessionmaker[Session], job_id: str, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        beat(sessions, job_id)


def run_with_heartbeat(runner: JobRunner, sessions: sessionmaker[Session], job_id: str, every: float) -> None:
    """Run a claimed job while a thread keeps its heartbeat fresh."""
    stop = threading.Event()
    thread = threading.Thread(target=_heartbeat, args=(sessions, job_id, every, stop), daemon=True)
    thread.start()
    try:
        runner.run(job_id)
    finally:
        stop.set()
        thread.join()


def make_runner(settings: Settings) -> tuple[Engine, sessionmaker[Session], JobRunner, str]:
    """What every worker needs: the database, a job runner on the artifact store, and its own id."""
    from service.training import JobRunner  # torch is imported here, in the worker process only

    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    runner = JobRunner(sessions, open_store(settings.artifacts_path), settings.device)
    return engine, sessions, runner, f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_worker(settings: Settings, stop: threading.Event | None = None, max_jobs: int | None = None) -> int:
    """Work until ``stop`` is set (or ``max_jobs`` are done); returns the number of jobs run."""
    stop = stop or threading.Event()
    engine, sessions, runner, worker_id = make_runner(settings)
    log.info("worker %s ready (device %s)", worker_id, settings.device)
    done = 0
    while not stop.is_set() and (max_jobs is None or done < max_jobs):
        with sessions() as s:
            job_id = claim_next_job(s, worker_id)
        if job_id is None:
            stop.wait(settings.worker_poll_seconds)
            continue
        log.info("worker %s took job %s", worker_id, job_id)
        run_with_heartbeat(runner, sessions, job_id, settings.heartbeat_seconds)
        done += 1
    engine.dispose()
    return done


def serve_jobs(settings: Settings) -> None:
    """Run the worker that fits the database: procrastinate on PostgreSQL, the polling loop on SQLite."""
    from service.tasks import run_procrastinate_worker, uses_procrastinate

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
