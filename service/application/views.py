"""The response bodies the services answer, built in one place from the ORM rows.

Each builder returns the plain dict that its model in ``service.schemas`` describes (``ClassifierView``,
``VersionView``, ``JobView``, ``AuditView``), field for field and in the same order; timestamps stay
datetimes, serialised at the HTTP edge.
"""

from __future__ import annotations

from typing import Any

from model_core.config import BackboneSpec
from service.domain.unknowns import UnknownSettings
from service.persistence.models import AuditEntry, Classifier, Job, Version


def classifier_view(c: Classifier) -> dict[str, Any]:
    return {"name": c.name, "input": {**c.network["input"], "max_tokens": c.network["input"].get("max_tokens", 0)}, "scenario": c.network["scenario"],
            "backbone": BackboneSpec.parse(c.network["backbone"]).name, "gate": c.gate,
            "unknowns": UnknownSettings.from_dict(c.unknowns).to_dict(), "active_version": c.active_version,
            "created_at": c.created_at}  # fmt: skip


def version_view(v: Version) -> dict[str, Any]:
    return {"version": v.number, "status": v.status, "parent": v.parent, "strategy": v.strategy,
            "params": v.params, "classes": v.labels, "tasks": v.tasks, "report": v.report,
            "job_id": v.job_id, "created_at": v.created_at}  # fmt: skip


def job_view(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id, "status": job.status, "task": job.task, "strategy": job.strategy,
        "retention": job.retention, "progress": job.progress, "parent": job.parent, "version": job.version,
        "report": job.report, "error": job.error, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "seconds": job.seconds,
        "worker": job.worker,  # host:pid:id of the worker that took the job
    }  # fmt: skip


def audit_view(a: AuditEntry) -> dict[str, Any]:
    return {"action": a.action, "actor": a.actor, "from_version": a.from_version, "to_version": a.to_version,
            "reason": a.reason, "forced": a.forced, "at": a.at}  # fmt: skip
