"""The training worker: takes queued jobs, one at a time, and runs them.

On PostgreSQL the jobs come through procrastinate (``service.jobs.queue``); on SQLite, the embedded default,
this module polls the jobs table.

It knows nothing of HTTP. While a job runs, a thread refreshes the job's heartbeat; if the worker dies,
the API's reaper marks the job failed once the heartbeat is older than ``stale_after_seconds``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from service.jobs.host import make_runner, run_with_heartbeat
from service.jobs.queue import run_procrastinate_worker, uses_procrastinate
from service.persistence.registry import claim_next_job
from service.settings import Settings

log = logging.getLogger("engram.worker")


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
