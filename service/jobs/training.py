"""One learning job, worker side: parent version -> learn -> gate -> immutable bundle -> version row.

This module imports torch (through model_core); the API process never imports it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from model_core.checkpoint import load_bundle, save_bundle
from model_core.config import NetworkSpec, TrainConfig
from model_core.data import Experience
from model_core.export import ExportError, export_onnx
from model_core.export_frozen import OnnxFeatures
from model_core.learner import Learner
from model_core.strategies.base import Progress, TrainingCancelled
from model_core.trainer import resolve_device
from service.domain.commands import JobRequest
from service.domain.errors import PointerMoved
from service.domain.gate import GateConfig, TaskPredictions, evaluate
from service.domain.gate_advice import JobFacts
from service.persistence.models import Classifier, Job, Version, utcnow
from service.persistence.registry import end_job, get_version, next_version_number, set_active
from service.storage.files import ArtifactStore, arrays_to_bytes, bytes_to_arrays

log = logging.getLogger("engram.worker")
EVAL_FILE = "eval.npz"  # the version's regression suite: x, label, task for every task so far
THROTTLE = 0.5  # seconds between progress writes and cancel checks
FINISH_PATIENCE = 120.0  # seconds a failed job waits for the database to record why it failed
FEATURE_CACHES = 4  # classifiers whose frozen-backbone features a worker keeps between jobs


def experience(task: str, x: np.ndarray, labels: np.ndarray) -> Experience:
    classes = tuple(sorted({str(v) for v in labels}))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[str(v)] for v in labels], dtype=torch.long)
    return Experience(task, torch.from_numpy(x.astype(np.float32)), y, classes)


def predictions(
    learner: Learner, x: np.ndarray, labels: np.ndarray, task: str, old_units: int, before: np.ndarray | None = None
) -> TaskPredictions:
    """The candidate's labels for a task's evaluation samples: over every unit (within ``task``'s head in task-IL)
    and among the first ``old_units`` units only (the parent's classes; class-IL)."""
    names = np.array(learner.labels, dtype=str)
    if len(x) == 0 or (learner.scenario == "task-incremental" and task not in learner.task_names):
        empty = np.full(len(x), "", dtype=str)
        return TaskPredictions(labels.astype(str), empty, empty, before)
    logits = learner.logits(torch.from_numpy(x), device="cpu")
    if learner.scenario == "task-incremental":
        units = torch.tensor(learner.task(task).units)
        within = names[units[logits[:, units].argmax(1)].numpy()]
        return TaskPredictions(labels.astype(str), within, within, before)
    full = names[logits.argmax(1).numpy()]
    old = names[logits[:, :old_units].argmax(1).numpy()] if 0 < old_units < len(names) else full
    return TaskPredictions(labels.astype(str), full, old, before)


class JobRunner:
    """Executes jobs; ``progress`` writes and cancel checks go through short database sessions."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        device: str = "auto",
        crash_at: str | None = None,
        cache_dir: Path | None = None,
        max_steps: int = TrainConfig.max_iterations,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.device = device
        self.cache_dir = cache_dir  # local scratch: frozen backbones' ONNX graphs, exported once
        self.crash_hook = CrashHook(crash_at)
        self.max_steps = max_steps  # the bound on a step budget from the data
        # Frozen-backbone features this worker computed, by classifier and backbone: every version of a classifier
        # shares its frozen backbone, so a job reuses the features of the regression suite (and of kept training
        # samples) that earlier jobs computed. The least recently used classifiers' features go first.
        self.features: OrderedDict[str, dict[bytes, torch.Tensor]] = OrderedDict()

    def run(self, job_id: str) -> None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            retention = job.retention
        self.crash_hook.job_started()
        try:
            self._run(job_id)
        except TrainingCancelled:
            self._finish(job_id, "cancelled", error="cancelled on request")
        except Exception as exc:
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            self._finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if retention == "discard":
                self.store.delete_job(job_id)

    def _features_of(self, key: str) -> dict[bytes, torch.Tensor]:
        cache = self.features.pop(key, {})
        self.features[key] = cache
        while len(self.features) > FEATURE_CACHES:
            self.features.popitem(last=False)
        return cache

    def _finish(self, job_id: str, status: str, error: str) -> None:
        """End the job with its reason. A job that failed because the database went away cannot say so
        until it is back: retry for up to FINISH_PATIENCE seconds (then the reaper fails it as stalled)."""
        deadline, delay = time.monotonic() + FINISH_PATIENCE, 0.5
        while True:
            try:
                with self.sessions() as s:
                    job = s.get(Job, job_id)
                    assert job is not None
                    end_job(job, status, error)
                    s.commit()
                return
            except OperationalError:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("job %s: cannot record %r yet (database unavailable); retrying in %.1f s", job_id,
                            status, delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _callbacks(
        self, job_id: str, stage_seconds: dict[str, float]
    ) -> tuple[Callable[[Progress], None], Callable[[], bool]]:
        """Progress writes and cancel checks, throttled; a progress write also reads the cancel flag, so the
        usual report-then-check pair costs one session. ``stage_seconds`` collects the time of each training
        stage (classifier "train", "generator", "importance"): the time up to a report goes to its stage."""
        last = {"write": 0.0, "cancel": 0.0, "report": time.monotonic()}
        cancelled = {"flag": False}

        def progress(p: Progress) -> None:
            now = time.monotonic()
            stage_seconds[p.stage] = stage_seconds.get(p.stage, 0.0) + now - last["report"]
            last["report"] = now
            if now - last["write"] < THROTTLE and p.step != p.total:
                return
            last["write"] = last["cancel"] = now
            with self.sessions() as s:
                job = s.get(Job, job_id)
                cancelled["flag"] = bool(job is None or job.cancel_requested)
                if job is not None:
                    job.progress = {"stage": p.stage, "step": p.step, "total": p.total,
                                    "losses": {k: round(v, 5) for k, v in p.losses.items()}}  # fmt: skip
                    s.commit()

        def should_cancel() -> bool:
            now = time.monotonic()
            if now - last["cancel"] >= THROTTLE:
                last["cancel"] = now
                with self.sessions() as s:
                    job = s.get(Job, job_id)
                    cancelled["flag"] = bool(job is None or job.cancel_requested)
            return cancelled["flag"]

        return progress, should_cancel

    def _run(self, job_id: str) -> None:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            clf = s.get(Classifier, job.classifier_id)
            assert clf is not None
            job.parent = clf.active_version  # lineage: the version active when the job starts
            s.commit()
            parent = get_version(s, clf, clf.active_version) if clf.active_version is not None else None
            clf_id, name, network, gate_defaults = clf.id, clf.name, dict(clf.network), dict(clf.gate)
            task, strategy, retention = job.task, job.strategy, job.retention
            request = JobRequest.from_stored(dict(job.request))  # any schema version this worker knows
            options = request.options
            parent_number, parent_dir = (parent.number, self.store.path(parent.artifact)) if parent else (None, None)

        # Load the parent's whole learner state (weights and every strategy's state) and its suite.
        if parent_dir is not None:
            learner, _ = load_bundle(parent_dir)
            suite = bytes_to_arrays((parent_dir / EVAL_FILE).read_bytes())
        else:
            learner = Learner.create(NetworkSpec.from_dict(network), seed=options.seed)
            suite = {}
        train = self.store.read_arrays(job_id, "train")
        new_eval = self.store.read_arrays(job_id, "eval")
        if train is None or new_eval is None:
            raise RuntimeError("the job's samples are gone from the artifact store")
        suite = merge_suite(suite, new_eval, task)
        task_names = list(dict.fromkeys([*(str(t) for t in suite["task"])]))
        if learner.frozen_backbone:
            learner.feature_cache = self._features_of(f"{clf_id}:{json.dumps(network.get('backbone'), sort_keys=True)}")
        if learner.frozen_backbone and resolve_device(self.device).type == "cpu":
            # Features through ONNX Runtime on the backbone graph the versions serve (exported once, cached):
            # several times faster than eager torch on a CPU, and the head trains on what serving computes.
            learner.feature_fn = OnnxFeatures(learner, self.cache_dir)
        times["load"] = time.perf_counter() - t0

        # Parent accuracy per task, before the learner changes (part of the gate's time).
        t_parent = time.perf_counter()
        slices = {t: task_slice(suite, t) for t in task_names}  # (x, labels) of each task's evaluation samples
        parent_units = len(learner.labels)
        parent_pred = {t: predictions(learner, *slices[t], t, parent_units).after if t in learner.task_names else None
                       for t in task_names}  # fmt: skip
        before = {t: None if p is None else p == slices[t][1].astype(str) for t, p in parent_pred.items()}

        parent_gate = time.perf_counter() - t_parent
        t1 = time.perf_counter()
        config = TrainConfig(iterations=options.iterations, batch_size=options.batch_size, lr=options.lr,
                             seed=options.seed, device=self.device, max_iterations=self.max_steps)  # fmt: skip
        stages: dict[str, float] = {}
        progress, should_cancel = self._callbacks(job_id, stages)
        exp = experience(task, train["x"], train["label"])
        result = learner.learn(exp, strategy, request.params, config, progress, should_cancel)
        times["train"] = time.perf_counter() - t1
        training = result.train.summary()  # steps, budget and why training stopped: for the advice and the report
        times.update({f"train.{stage}": sec for stage, sec in stages.items()})  # e.g. train.generator

        self._set_status(job_id, "evaluating")
        t2 = time.perf_counter()
        predicted = {t: predictions(learner, *slices[t], t, parent_units, parent_pred[t]) for t in task_names}
        rows = [(t, before[t], p.after == p.labels) for t, p in predicted.items()]
        times["gate"] = parent_gate + time.perf_counter() - t2
        t3 = time.perf_counter()
        onnx_bytes, diff, err = b"", None, None
        try:
            exported = export_onnx(learner, torch.from_numpy(suite["x"][:64]), cache_dir=self.cache_dir)
            onnx_bytes, diff = exported.onnx, exported.max_abs_diff
        except ExportError as exc:
            err = str(exc)
        times["export"] = time.perf_counter() - t3
        cfg = GateConfig.from_dict(gate_defaults).merged(request.gate)
        report = evaluate(cfg, learner.scenario, strategy, retention, task, result.new_labels, rows, diff, err,
                          labels={t: slices[t][1] for t in task_names}, diagnostics=result.diagnostics,
                          facts=JobFacts(result.params, result.train.steps, network, training), predictions=predicted)  # fmt: skip
        report["training"] = training

        t4 = time.perf_counter()
        self.crash_hook.stage("trained")
        # Publishing, crash-safe at every instant: (1) the bundle goes to a folder named by this job, not by a
        # version number, so a worker that dies before (2) leaves a folder nobody collides with (the next
        # worker start sweeps it); (2) the version row is committed, numbered then; (3) the pointer moves by
        # compare-and-set from the parent this job trained from, or the candidate is held.
        folder = self.store.bundle_dir(name, job_id)
        if folder.exists():  # this job's own leftover (a retried task): never a published version's folder
            self.store.remove(self.store.relative(folder))
        extra = {EVAL_FILE: arrays_to_bytes(suite)}
        if onnx_bytes:
            extra["model.onnx"] = onnx_bytes
        save_bundle(folder, learner, {"name": strategy, "params": result.params},
                    parent=None if parent_number is None else f"v{parent_number}",
                    metadata={"job_id": job_id, "report": report}, extra_files=extra)  # fmt: skip
        self.store.publish(folder)  # an object store uploads it here, before any row names it
        self.crash_hook.stage("bundle-written")
        status = "candidate" if report["passed"] else "rejected"
        with self.sessions() as s:
            clf = s.get(Classifier, clf_id)
            job = s.get(Job, job_id)
            assert clf is not None and job is not None
            number = next_version_number(s, clf)  # one job per classifier at a time: no race for the number
            s.add(Version(
                classifier_id=clf.id, number=number, status=status, parent=parent_number, strategy=strategy,
                params=result.params, labels=list(learner.labels),
                tasks=[{"name": t.name, "labels": [learner.labels[u] for u in t.units]} for t in learner.tasks],
                report=report, artifact=self.store.relative(folder), job_id=job_id,
            ))  # fmt: skip
            job.version = number
            s.commit()
        self.crash_hook.stage("row-committed")
        with self.sessions() as s:
            clf = s.get(Classifier, clf_id)
            job = s.get(Job, job_id)
            assert clf is not None and job is not None
            version = get_version(s, clf, number)
            job_status = "passed" if report["passed"] else "rejected"
            if report["passed"] and not cfg.manual_approval:
                held = hold_reason(parent_number, clf.active_version)
                if held is None:
                    try:
                        set_active(s, clf, version, "auto-promote", "worker", "gate passed", forced=False,
                                   expected=parent_number)  # fmt: skip
                        job_status = "promoted"
                    except PointerMoved as exc:  # an admin moved it after the read above
                        held = hold_reason(parent_number, exc.current)
                if held is not None:
                    report["held"] = held
                    log.warning("job %s: version %d of %s not promoted: %s", job_id, number, name, held)
            times["save"] = time.perf_counter() - t4
            report["seconds"] = {k: round(v, 3) for k, v in times.items()}
            version.report = dict(report)
            job.report, job.status, job.finished_at = report, job_status, utcnow()
            job.seconds = report["seconds"]
            s.commit()
        self.crash_hook.stage("promoted")
        log.info("job %s: %s version %d of %s (%s)", job_id, job_status, number, name, report["seconds"])

    def _set_status(self, job_id: str, status: str) -> None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = status
            s.commit()


def hold_reason(parent: int | None, active: int | None) -> str | None:
    """Why a candidate that passed its gate is not auto-promoted: the version it trained from is no longer
    the active one (an admin rolled back or promoted another while it trained). None: promote it."""
    if active == parent:
        return None
    now = "no version" if active is None else f"v{active}"
    return (f"trained from {'scratch' if parent is None else f'v{parent}'}; {now} was made active while it trained, "
            "so it was not auto-promoted over that decision; an admin may still promote it")  # fmt: skip


class CrashHook:
    """Test-only fault injection: ``ENGRAM_TEST_CRASH_AT=<stage>@<n>`` makes this process SIGKILL itself when
    its n-th job (1-based) reaches ``stage`` (trained, bundle-written, row-committed, promoted). Unset, it
    does nothing; the crash tests use it to kill the worker at each boundary of publishing."""

    STAGES = ("trained", "bundle-written", "row-committed", "promoted")

    def __init__(self, spec: str | None) -> None:
        self.stage_name: str | None = None
        self.job_number = 0  # which job of this process dies (1-based)
        self.jobs = 0  # jobs this process has started
        if spec:
            stage, _, n = spec.partition("@")
            if stage not in self.STAGES:
                raise ValueError(f"ENGRAM_TEST_CRASH_AT: unknown stage {stage!r}; one of {', '.join(self.STAGES)}")
            self.stage_name, self.job_number = stage, int(n or 1)

    def job_started(self) -> None:
        self.jobs += 1

    def stage(self, name: str) -> None:
        if name == self.stage_name and self.jobs == self.job_number:
            log.warning("ENGRAM_TEST_CRASH_AT: killing this worker (pid %d) at stage %r", os.getpid(), name)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def merge_suite(suite: dict[str, np.ndarray], new_eval: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """The parent's regression suite plus this job's evaluation samples under ``task``."""
    n = len(new_eval["x"])
    added = {"x": new_eval["x"], "label": new_eval["label"].astype(str), "task": np.array([task] * n, dtype=str)}
    if not suite:
        return added
    return {k: np.concatenate([suite[k], added[k]]) for k in added}  # numpy widens string dtypes


def task_slice(suite: dict[str, np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray]:
    keep = suite["task"] == task
    return suite["x"][keep], suite["label"][keep]
