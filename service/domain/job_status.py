"""A learn job's statuses and their groups, defined once: the server, the worker, the HTTP schemas, the
client and the tests import them from here (no SQLAlchemy, no pydantic, no torch)."""

from typing import Literal, get_args

JobEnd = Literal["promoted", "passed", "rejected", "failed", "cancelled"]
JobStatus = Literal["queued", "running", "evaluating", JobEnd]

TERMINAL: tuple[JobEnd, ...] = get_args(JobEnd)  # the statuses a job never leaves (server, worker and client)
ACTIVE: tuple[JobStatus, ...] = ("running", "evaluating")  # a worker holds it: heartbeats due, cancel is a request
LIVE: tuple[JobStatus, ...] = ("queued", *ACTIVE)  # not ended yet: it may still write its bundle
