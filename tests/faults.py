"""Test-only fault injection for the crash tests: a worker that SIGKILLs itself at a chosen stage of a job.

``python -m tests.faults`` runs the polling worker (``service.jobs.worker.run_worker``, as ``engram worker``
does on SQLite) with a ``CrashHook`` from ``ENGRAM_TEST_CRASH_AT=<stage>@<n>`` as the job runner's
``on_stage``. Production code never reads that variable: the hook reaches the runner only through here.
"""

from __future__ import annotations

import logging
import os
import signal

from service.jobs.training import STAGES

log = logging.getLogger("engram.worker")
CRASH_AT_ENV = "ENGRAM_TEST_CRASH_AT"
CRASH_STAGES = tuple(s for s in STAGES if s != "started")  # where a crash may be asked for


class CrashHook:
    """``<stage>@<n>`` makes this process SIGKILL itself when its n-th job (1-based) reaches ``stage`` (one of
    CRASH_STAGES: trained, bundle-written, row-committed, promoted). Without a spec it does nothing."""

    def __init__(self, spec: str | None) -> None:
        self.stage_name: str | None = None
        self.job_number = 0  # which job of this process dies (1-based)
        self.jobs = 0  # jobs this process has started
        if spec:
            stage, _, n = spec.partition("@")
            if stage not in CRASH_STAGES:
                raise ValueError(f"{CRASH_AT_ENV}: unknown stage {stage!r}; one of {', '.join(CRASH_STAGES)}")
            self.stage_name, self.job_number = stage, int(n or 1)

    @classmethod
    def from_env(cls) -> CrashHook:
        return cls(os.environ.get(CRASH_AT_ENV))

    def __call__(self, name: str) -> None:
        if name == "started":
            self.jobs += 1
        elif name == self.stage_name and self.jobs == self.job_number:
            log.warning("%s: killing this worker (pid %d) at stage %r", CRASH_AT_ENV, os.getpid(), name)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    """``service.jobs.worker.main`` on SQLite, with the crash hook installed."""
    from service.jobs.worker import die_with_parent, run_worker
    from service.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    hook = CrashHook.from_env()  # a bad spec fails here, before the worker takes a job
    die_with_parent()
    run_worker(Settings(), on_stage=hook)


if __name__ == "__main__":
    main()
