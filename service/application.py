"""Application services behind the HTTP controllers: classifiers, learn jobs, versions, serving.

No torch here: learn requests are validated and staged, then a worker trains them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from model_core.config import InputSpec, NetworkSpec, default_backbone
from model_core.strategy_specs import SPECS
from service.api.schemas import ClassifierCreate, LearnRequest, PredictRequest
from service.db import AuditEntry, Classifier, Job, Version, utcnow
from service.gate import GateConfig
from service.inference import Served, ServingOptions, ServingState, load_served
from service.observability import Metrics
from service.preprocess import InputError, InputFormat, parse_items
from service.registry import (
    Conflict,
    NotFound,
    end_job,
    get_classifier,
    get_version,
    job_view,
    previous_active,
    reap_stale_jobs,
    set_active,
)
from service.settings import Settings
from service.storage import ArtifactStore
from service.tasks import enqueue, uses_procrastinate

log = logging.getLogger("engram.application")


class Invalid(ValueError):
    """Well-formed JSON that cannot be acted on (422)."""


def classifier_view(c: Classifier) -> dict[str, Any]:
    return {"name": c.name, "input": c.network["input"], "scenario": c.network["scenario"],
            "backbone": c.network["backbone"], "gate": c.gate, "active_version": c.active_version,
            "created_at": c.created_at}  # fmt: skip


def version_view(v: Version) -> dict[str, Any]:
    return {"version": v.number, "status": v.status, "parent": v.parent, "strategy": v.strategy,
            "params": v.params, "classes": v.labels, "tasks": v.tasks, "report": v.report,
            "job_id": v.job_id, "created_at": v.created_at}  # fmt: skip


def stratified_holdout(labels: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of evaluation rows: ``share`` of every class (at least one), never a whole class."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for label, count in Counter(labels.tolist()).items():
        if count < 2:
            raise Invalid(f"class {label!r} has {count} sample; send at least 2 per class, or give eval_samples")
        idx = np.flatnonzero(labels == label)
        n_eval = min(count - 1, max(1, round(count * share)))
        mask[rng.choice(idx, n_eval, replace=False)] = True
    return mask


class EngramService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        serving: ServingState,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.serving = serving
        self.metrics = metrics or Metrics()
        self._jobs_seen_until = utcnow()  # jobs finished after this are still to be counted
        self._unservable: set[tuple[str, int]] = set()  # active versions whose session failed to build
        self.serving_options = ServingOptions.from_settings(settings)

    # --- classifiers ------------------------------------------------------------------------------

    def create_classifier(self, req: ClassifierCreate) -> dict[str, Any]:
        inp = InputSpec(**req.input.model_dump())
        try:  # NetworkSpec validates the combination (e.g. a conv backbone on vectors)
            spec = NetworkSpec(inp, backbone=req.backbone or default_backbone(inp), scenario=req.scenario)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        gate = GateConfig().merged(req.gate.model_dump() if req.gate else None)
        with self.sessions() as s:
            clf = Classifier(name=req.name, network=spec.to_dict(), gate=dict(gate.__dict__))
            s.add(clf)
            try:
                s.commit()
            except IntegrityError:  # the unique name: also right when two requests race
                raise Conflict(f"a classifier named {req.name!r} already exists") from None
            return classifier_view(clf)

    def ping(self) -> None:
        """Raise if the database does not answer (readiness)."""
        with self.sessions() as s:
            s.execute(text("SELECT 1"))

    def list_classifiers(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [classifier_view(c) for c in s.scalars(select(Classifier).order_by(Classifier.name))]

    def get_classifier(self, name: str) -> dict[str, Any]:
        with self.sessions() as s:
            return classifier_view(get_classifier(s, name))

    # --- learning ---------------------------------------------------------------------------------

    def submit_learn(self, name: str, req: LearnRequest) -> dict[str, Any]:
        spec = SPECS.get(req.strategy)
        if spec is None:
            raise Invalid(f"unknown strategy {req.strategy!r}; choose one of {', '.join(sorted(SPECS))}")
        try:
            params = spec.check_params(req.params)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if req.retention == "discard" and spec.stores_data:
            raise Invalid(
                f"strategy {req.strategy!r} keeps training samples, which retention 'discard' forbids; "
                "use generative_replay (keeps no samples), or ewc/lwf/mas for task-incremental classifiers"
            )
        if not req.samples:
            raise Invalid("samples is empty: send at least one labelled sample per class")
        if len(req.samples) > self.settings.max_batch_items:
            raise Invalid(f"samples has {len(req.samples)} items; the limit is {self.settings.max_batch_items}")
        with self.sessions() as s:
            clf = get_classifier(s, name)
            network, gate_defaults, active = clf.network, clf.gate, clf.active_version
            active_tasks = get_version(s, clf, active).tasks if active is not None else []
        fmt = InputFormat.from_network(network)
        labels = self._labels(req.samples, "samples")
        x = parse_items(req.samples, fmt, "samples", self.settings.max_image_pixels)
        if network["scenario"] == "task-incremental":
            known = {t["name"]: set(t["labels"]) for t in active_tasks}
            if req.task in known and not set(labels.tolist()) <= known[req.task]:
                extra = sorted(set(labels.tolist()) - known[req.task])
                raise Invalid(f"task {req.task!r} already exists with classes {sorted(known[req.task])}; "
                              f"its classes cannot grow (new: {extra}); learn them under a new task name")  # fmt: skip
        gate = GateConfig.from_dict(gate_defaults).merged(req.gate.model_dump() if req.gate else None)
        if req.eval_samples:
            ev_labels = self._labels(req.eval_samples, "eval_samples")
            unknown = sorted(set(ev_labels.tolist()) - set(labels.tolist()))
            if unknown:
                raise Invalid(f"eval_samples has labels {unknown} that the samples do not teach")
            ev_x = parse_items(req.eval_samples, fmt, "eval_samples", self.settings.max_image_pixels)
            train_x, train_y = x, labels
        else:
            mask = stratified_holdout(labels, gate.holdout, req.options.seed)
            ev_x, ev_labels, train_x, train_y = x[mask], labels[mask], x[~mask], labels[~mask]
        job_id = str(uuid.uuid4())
        # Stage the arrays first: a job row never exists without its data.
        self.store.write_arrays(job_id, "train", {"x": train_x, "label": train_y})
        self.store.write_arrays(job_id, "eval", {"x": ev_x, "label": ev_labels})
        request = {"options": req.options.model_dump(), "params": params,
                   "gate": req.gate.model_dump(exclude_none=True) if req.gate else {},
                   "samples": {"train": len(train_x), "eval": len(ev_x)},
                   "classes": sorted(set(labels.tolist()))}  # fmt: skip
        try:
            with self.sessions() as s:
                clf = get_classifier(s, name)
                job = Job(id=job_id, classifier_id=clf.id, status="queued", task=req.task, strategy=req.strategy,
                          retention=req.retention, request=request, progress={}, seconds={})  # fmt: skip
                s.add(job)
                if uses_procrastinate(self.settings.db_url):
                    s.flush()
                    enqueue(s, self.settings, job_id, clf.name)  # same transaction as the job row
                s.commit()
                return job_view(job)
        except BaseException:
            self.store.delete_job(job_id)
            raise

    @staticmethod
    def _labels(items: list[dict[str, Any]], field: str) -> np.ndarray:
        out = []
        for i, item in enumerate(items):
            label = item.get("label") if isinstance(item, dict) else None
            if not isinstance(label, str) or not label.strip() or len(label) > 128:
                raise InputError(field, i, "'label' must be a non-empty string of at most 128 characters")
            if not label.isprintable():  # control characters; numpy would also drop a trailing NUL silently
                raise InputError(field, i, "'label' must not contain control characters")
            out.append(label)
        return np.array(out, dtype=str)

    def get_job(self, job_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            return job_view(job)

    def recent_jobs(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = get_classifier(s, name)
            rows = s.scalars(
                select(Job).where(Job.classifier_id == clf.id).order_by(Job.created_at.desc()).limit(limit)
            )
            return [job_view(j) for j in rows]

    def lineage_matrix(self, name: str, number: int) -> dict[str, Any]:
        """Accuracy matrix along a version's lineage: rows are the versions from the first to ``number``
        (following parents), columns the tasks of ``number``; a cell is that version's gate accuracy."""
        with self.sessions() as s:
            clf = get_classifier(s, name)
            versions = {v.number: v for v in s.scalars(select(Version).where(Version.classifier_id == clf.id))}
        if number not in versions:
            raise NotFound(f"classifier {name!r} has no version {number}")
        chain: list[Version] = []
        current: int | None = number
        while current is not None:
            chain.append(versions[current])
            current = versions[current].parent
        chain.reverse()
        tasks = [row["task"] for row in chain[-1].report.get("tasks", [])]
        rows = []
        for v in chain:
            acc = {row["task"]: row["after"] for row in v.report.get("tasks", [])}
            rows.append({"version": v.number, "cells": [acc.get(t) for t in tasks]})
        return {"tasks": tasks, "rows": rows}

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            if job.status == "queued":
                end_job(job, "cancelled", "cancelled before it started")
            elif job.status in ("running", "evaluating"):
                job.cancel_requested = True
            else:
                raise Conflict(f"job {job_id} already ended as {job.status!r}")
            s.commit()
            if job.status == "cancelled" and job.retention == "discard":
                self.store.delete_job(job_id)  # after the commit: a failed commit keeps a queued job's data
            return job_view(job)

    def observe_finished_jobs(self) -> None:
        """Feed jobs that ended since the last call into the job metrics (outcome, time per stage)."""
        with self.sessions() as s:
            rows = s.execute(
                select(Job, Classifier.name)
                .join(Classifier, Classifier.id == Job.classifier_id)
                .where(Job.finished_at.is_not(None), Job.finished_at > self._jobs_seen_until)
                .order_by(Job.finished_at)
            ).all()
            for job, name in rows:
                self.metrics.observe_job(name, job.status, job.seconds or {})
                if job.finished_at is not None:
                    self._jobs_seen_until = max(self._jobs_seen_until, job.finished_at)

    def reap(self) -> None:
        with self.sessions() as s:
            for job in reap_stale_jobs(s, self.settings.stale_after_seconds):
                if job.retention == "discard":
                    self.store.delete_job(job.id)

    # --- versions, promotion, rollback ------------------------------------------------------------

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = get_classifier(s, name)
            rows = s.scalars(select(Version).where(Version.classifier_id == clf.id).order_by(Version.number))
            return [version_view(v) for v in rows]

    def get_version(self, name: str, number: int) -> dict[str, Any]:
        with self.sessions() as s:
            return version_view(get_version(s, get_classifier(s, name), number))

    def onnx_path(self, name: str, number: int) -> Path:
        with self.sessions() as s:
            v = get_version(s, get_classifier(s, name), number)
            return self.store.path(v.artifact) / "model.onnx"

    def audit(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = get_classifier(s, name)
            rows = s.scalars(select(AuditEntry).where(AuditEntry.classifier_id == clf.id).order_by(AuditEntry.id))
            return [{"action": a.action, "actor": a.actor, "from_version": a.from_version, "to_version": a.to_version,
                     "reason": a.reason, "forced": a.forced, "at": a.at} for a in rows]  # fmt: skip

    def _load(self, clf: Classifier, v: Version) -> Served:
        cached = self.serving.cached(clf.name, v.number)
        if cached is not None:
            return cached
        served = load_served(clf.name, v.number, self.store.path(v.artifact), clf.network, self.serving_options)
        self.serving.remember(served)
        return served

    def _activate(
        self, s: Session, clf: Classifier, v: Version, action: str, actor: str, reason: str | None, forced: bool
    ) -> None:
        """Build and warm ``v``'s session, then move the pointer (one transaction), then swap it in."""
        served = self._load(clf, v)
        set_active(s, clf, v, action, actor, reason, forced=forced)
        s.commit()
        self.serving.swap(served)

    def promote(self, name: str, number: int, actor: str, force: bool, reason: str | None) -> dict[str, Any]:
        with self.sessions() as s:
            clf = get_classifier(s, name)
            v = get_version(s, clf, number)
            if v.status == "rejected" and not (force and reason):
                raise Conflict(f"version {number} was rejected by the gate; promoting it needs force=true and a reason")
            self._activate(s, clf, v, "promote", actor, reason, forced=v.status == "rejected")
            return version_view(v)

    def rollback(self, name: str, to_version: int | None, actor: str, reason: str | None) -> dict[str, Any]:
        with self.sessions() as s:
            clf = get_classifier(s, name)
            target = to_version if to_version is not None else previous_active(s, clf)
            if target is None:
                raise Conflict(f"classifier {name!r} has no earlier active version to roll back to")
            v = get_version(s, clf, target)
            if v.status in ("rejected", "candidate"):
                raise Conflict(f"version {target} was never promoted ({v.status}); promote it instead")
            self._activate(s, clf, v, "rollback", actor, reason, forced=False)
            return version_view(v)

    def sync_serving(self) -> None:
        """Follow active pointers moved elsewhere (the worker, another replica): build, then swap."""
        with self.sessions() as s:
            pointers = s.execute(select(Classifier.name, Classifier.active_version)).all()
            moved = []
            for name, number in pointers:
                current = self.serving.active(name)
                if (
                    number is not None
                    and (current is None or current.version != number)
                    and ((name, number) not in self._unservable)
                ):
                    clf = get_classifier(s, name)
                    moved.append((clf, get_version(s, clf, number)))
        for clf, v in moved:  # built outside the session; one that fails to load does not hold up the others
            try:
                self.serving.swap(self._load(clf, v))
            except Exception:
                log.exception("cannot serve %s version %d; not retried until a restart", clf.name, v.number)
                self._unservable.add((clf.name, v.number))

    # --- predict ----------------------------------------------------------------------------------

    async def predict(self, name: str, req: PredictRequest) -> dict[str, Any]:
        """Decode and run as part of a micro-batch with concurrent requests (see service.batching)."""
        if not req.inputs:
            raise Invalid("inputs is empty")
        if len(req.inputs) > self.settings.max_predict_items:
            raise Invalid(f"inputs has {len(req.inputs)} items; the limit is {self.settings.max_predict_items}")
        start = time.perf_counter()
        served = self.serving.active(name) if req.version is None else self.serving.cached(name, req.version)
        if served is None:
            served = await anyio.to_thread.run_sync(self._served_for, name, req.version)
        if served.scenario == "task-incremental":
            if req.task is None:
                raise Invalid(f"classifier {name!r} is task-incremental: give 'task', one of {sorted(served.tasks)}")
            if req.task not in served.tasks:
                raise Invalid(f"unknown task {req.task!r} for version {served.version}; known: {sorted(served.tasks)}")
        logits, run_rows = await served.batcher.submit(req.inputs)  # decoded in the batch's worker thread
        predictions = served.postprocess(logits, req.top_k, req.task)
        self.metrics.predict_seconds.labels(name, str(served.version)).observe(time.perf_counter() - start)
        self.metrics.batch_size.labels(name).observe(len(req.inputs))
        self.metrics.model_batch_rows.labels(name).observe(run_rows)
        return {"classifier": name, "version": served.version, "predictions": predictions}

    def _served_for(self, name: str, version: int | None) -> Served:
        """A pinned version, or the active one before the background sync has loaded it."""
        with self.sessions() as s:
            clf = get_classifier(s, name)
            number = version if version is not None else clf.active_version
            if number is None:
                raise Conflict(f"classifier {name!r} has no active version yet; learn something first")
            return self._load(clf, get_version(s, clf, number))

    def strategies(self) -> dict[str, Any]:
        return {n: {"summary": s.summary, "stores_data": s.stores_data, "adds_classes": s.adds_classes,
                    "parameters": s.defaults} for n, s in sorted(SPECS.items())}  # fmt: skip
