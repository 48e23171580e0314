"""One learning job, worker side: parent version -> learn -> gate -> immutable bundle -> version row.

This module imports torch (through model_core); the API process never imports it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from model_core.checkpoint import load_bundle, save_bundle
from model_core.config import NetworkSpec, TrainConfig
from model_core.data import Experience
from model_core.export import ExportError, Novelty, NoveltyExportError, export_head, export_onnx
from model_core.export_frozen import OnnxFeatures, backbone_digest
from model_core.learner import Learner, LearnResult
from model_core.novelty import fit_novelty, novelty_module
from model_core.quantize import Int8Kernels, QuantConfig, this_processor
from model_core.strategies.base import Progress, TrainingCancelled
from model_core.trainer import resolve_device
from service.domain.commands import JobRequest
from service.domain.errors import PointerMoved
from service.domain.gate import GateConfig, GateInputs, TaskPredictions, evaluate
from service.domain.gate_advice import JobFacts
from service.domain.new_task import CrossChecked, nearest_mean_accuracy
from service.domain.unknowns import UnknownSettings
from service.jobs import training_cross_check as cross_check
from service.jobs.int8 import INT8, TOLERANCE, Int8Backbone, Int8Tolerance, check_version, int8_features, plan_int8
from service.jobs.suite import EVAL_FILE, Ref, read_suite, scored_rows, suite_references
from service.jobs.training_choice import choose
from service.persistence.models import Classifier, Job, Version, utcnow
from service.persistence.registry import end_job, get_version, next_version_number, set_active
from service.retry import backoff
from service.storage.base import ArtifactStore, arrays_to_bytes, bytes_to_arrays, references_of

log = logging.getLogger("engram.worker")
# The version's own labels for every row of its suite (over every class it knows), stored with it so that the next
# job scores its parent by reading them rather than by a pass over every class for every sample (classes^2 per job)
SERVED = "served"
SERVED_FILE = "served.npz"  # SERVED in a version's own folder (its suite is content: service.jobs.suite)
CHECKED_ROWS = 32  # cached parent labels recomputed as a check; any difference recomputes them all
MODEL_FILE, HEAD_FILE = "model.onnx", "head.onnx"  # a whole graph; or the head on a shared backbone (references)
THROTTLE = 0.5  # seconds between progress writes and cancel checks
FINISH_PATIENCE = 120.0  # seconds a failed job waits for the database to record why it failed
FEATURE_CACHES = 4  # frozen backbones whose features a worker keeps between jobs
# Bytes of frozen-backbone features a worker keeps in all (EfficientNet-Lite0: 5 KB a sample, so about 100,000
# samples); past it the oldest features go first, whatever backbone or classifier they were computed for
FEATURE_CACHE_BYTES = 512 << 20
# Frozen backbones' ONNX Runtime sessions (``OnnxFeatures``) a worker keeps between jobs, least recently used out:
# building one for EfficientNet-Lite0 costs 0.3-0.6 s, a third of a new photo class's job; each kept holds its
# graph and its arena. A job of a classifier with an int8 backbone uses two, its int8 graph's and the fp32 one it
# is checked against, so three keep one such classifier's pair with another backbone's session.
FEATURE_SESSIONS = 3
# Suite samples the served score's temperature and the novelty threshold are fitted on (a seeded uniform subsample
# beyond it). Each fit reads every sample's logits over every class, and the suite grows with the classes, so on
# the whole suite they would cost classes^2 per job (the temperature's search: ~190 passes); two scalars and a
# 95% quantile need no more than this (benchmarks.class_growth).
CALIBRATION_SAMPLES = 2048
# Suite samples the gate scores a job on before it samples the suite (service.jobs.suite.scored_rows): the default of
# the gate_suite_samples setting. Every stream of up to 100 classes with at most 200 held-out samples a class is
# scored whole, as is any suite this size or smaller.
GATE_SUITE_SAMPLES = 20_000


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


STAGES = ("started", "trained", "bundle-written", "row-committed", "promoted")  # the points ``on_stage`` hears of


class JobRunner:
    """Executes jobs; ``progress`` writes and cancel checks go through short database sessions.

    ``on_stage``, when given, is called with each of STAGES a job reaches: "started" as it begins, then the
    boundaries of publishing (see ``JobRun.run``). Production passes none; the crash tests' workers pass
    ``tests.faults.CrashHook``, which kills the process at a chosen one."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        device: str = "auto",
        cache_dir: Path | None = None,
        max_steps: int = TrainConfig.max_iterations,
        on_stage: Callable[[str], None] | None = None,
        novelty: bool = True,
        shared_backbone: bool = True,
        shared_content: bool = True,
        int8: bool = False,
        int8_tolerance: Int8Tolerance = TOLERANCE,
        int8_config: QuantConfig | None = None,
        int8_kernels: Int8Kernels | None = None,
        int8_shared: bool = True,
        gate_suite_samples: int = GATE_SUITE_SAMPLES,
        feature_threads: int = 0,
    ) -> None:
        self.novelty = novelty
        self.gate_suite_samples = gate_suite_samples  # the suite samples a gate scores per job (0: every one)
        # ONNX Runtime intra-op threads computing frozen-backbone features (Settings.ort_threads; 0: its default)
        self.feature_threads = feature_threads
        # A classifier on a shared frozen backbone learns from, and serves, an int8 version of it where that
        # agrees with fp32 within ``int8_tolerance`` (service.jobs.int8, docs/guides/int8-backbone.md)
        self.int8, self.int8_tolerance = int8, int8_tolerance
        self.int8_config = int8_config or QuantConfig()  # how a first job quantizes (Settings.int8_float_parts)
        # whether int8 graphs run on this processor's kernels or with their Q/DQ pairs in float (Settings.int8_kernels)
        self.int8_kernels = int8_kernels or this_processor()
        # a classifier's first job takes an int8 graph another classifier on its backbone has (Settings.int8_calibration)
        self.int8_shared = int8_shared
        # Store a frozen backbone's graph once in the artifact store and only the head in each version (the
        # manifest references the backbone by sha256); False: the whole graph in each version's model.onnx.
        self.shared_backbone = shared_backbone  # export each version's novelty score where it has class models
        # Each task's evaluation samples and the strategy's large state tensors stored once as content and referenced
        # from the manifests (service.jobs.suite, model_core.state_content); False: every version's eval.npz and
        # state.pt hold them all, as before. Either way, a parent of either layout loads.
        self.shared_content = shared_content
        self.sessions = sessions
        self.store = store
        self.device = device
        self.cache_dir = cache_dir  # local scratch: frozen backbones' ONNX graphs, exported once
        self.on_stage = on_stage
        self.max_steps = max_steps  # the bound on a step budget from the data
        # Frozen-backbone features this worker computed, by backbone digest (its spec and weights: the same input
        # gives the same features on it, whatever classifier sends it): a job reuses the features of the regression
        # suite, of kept training samples and of any sample another classifier on the backbone sent before. The
        # least recently used backbones' features go first, then the oldest past FEATURE_CACHE_BYTES.
        self.features: OrderedDict[str, dict[bytes, torch.Tensor]] = OrderedDict()
        self.feature_sessions: OrderedDict[str, OnnxFeatures] = OrderedDict()  # by backbone digest, LRU

    def run(self, job_id: str) -> None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            retention = job.retention
        self.stage("started")
        try:
            JobRun(self, job_id).run()
        except TrainingCancelled:
            self._finish(job_id, "cancelled", error="cancelled on request")
        except Exception as exc:
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            self._finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if retention == "discard":
                self.store.delete_job(job_id)

    def stage(self, name: str) -> None:
        """Tell ``on_stage`` (if any) that the running job reached ``name``, one of STAGES."""
        if self.on_stage is not None:
            self.on_stage(name)

    def _features_of(self, key: str) -> dict[bytes, torch.Tensor]:
        cache = self.features.pop(key, {})
        self.features[key] = cache
        while len(self.features) > FEATURE_CACHES:
            self.features.popitem(last=False)
        trim_features(self.features, FEATURE_CACHE_BYTES)
        return cache

    def _feature_session(self, learner: Learner, digest: str) -> OnnxFeatures:
        """The ONNX Runtime session computing ``learner``'s frozen-backbone features, built once per backbone
        (by its ``digest``, ``backbone_digest``: the same spec and weights give the same graph) and kept for the
        next jobs."""
        return self._kept_session(digest, lambda: OnnxFeatures(learner, self.cache_dir, self.feature_threads))

    def _int8_session(self, learner: Learner, int8: Int8Backbone) -> OnnxFeatures:
        """The session computing features on ``int8``'s graph, built once per graph (by its sha256) and kept
        with the fp32 ones: every job of a classifier with an int8 backbone after its first reads the same graph."""
        return self._kept_session(f"int8:{int8.sha256}", lambda: int8_features(learner, int8, self.int8_kernels))

    def _kept_session(self, key: str, build: Callable[[], OnnxFeatures]) -> OnnxFeatures:
        """The session kept under ``key``, or ``build()``'s; the least recently used go past FEATURE_SESSIONS."""
        found = self.feature_sessions.pop(key, None) or build()
        self.feature_sessions[key] = found
        while len(self.feature_sessions) > FEATURE_SESSIONS:
            self.feature_sessions.popitem(last=False)
        return found

    def _finish(self, job_id: str, status: str, error: str) -> None:
        """End the job with its reason. A job that failed because the database went away cannot say so
        until it is back: retry for up to FINISH_PATIENCE seconds (then the reaper fails it as stalled)."""
        deadline, attempt = time.monotonic() + FINISH_PATIENCE, 0
        while True:
            try:
                with self.sessions() as s:
                    job = s.get(Job, job_id)
                    assert job is not None
                    end_job(job, status, error)
                    s.commit()
                return
            except OperationalError:
                attempt += 1
                delay = backoff(attempt, 0.5, 10.0)
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("job %s: cannot record %r yet (database unavailable); retrying in %.1f s", job_id,
                            status, delay)  # fmt: skip
                time.sleep(delay)

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

    def _set_status(self, job_id: str, status: str) -> None:
        with self.sessions() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.status = status
            s.commit()


@dataclass(frozen=True)
class JobSpec:
    """What a job reads from the database as it starts: its classifier, its request and the parent it trains from."""

    job_id: str
    classifier_id: int
    name: str
    network: dict[str, Any]
    gate_defaults: dict[str, Any]
    task: str
    strategy: str
    retention: str
    request: JobRequest
    parent_number: int | None
    parent_dir: Path | None
    known_rate: float = UnknownSettings.known_rate  # the novelty threshold's calibration (service.domain.unknowns)


@dataclass(frozen=True)
class ParentScores:
    """The parent's view of every task's evaluation samples, taken before the learner changes."""

    slices: dict[str, tuple[np.ndarray, np.ndarray]]  # (x, labels) of each task's evaluation samples
    units: int  # the parent's output units: its classes
    predicted: dict[str, np.ndarray | None]  # the parent's labels (None: a task it lacks)
    correct: dict[str, np.ndarray | None]  # per sample, whether the parent was right


@dataclass(frozen=True)
class Candidate:
    """The trained learner's result and its scores on every task: what the gate judges."""

    result: LearnResult
    predicted: dict[str, TaskPredictions]
    rows: list[tuple[str, np.ndarray | None, np.ndarray]]  # (task, parent correct, candidate correct)


@dataclass(frozen=True)
class Exported:
    """The candidate's ONNX graph (empty when the export failed), its difference from torch, or why it failed."""

    onnx: bytes
    max_abs_diff: float | None
    error: str | None
    novelty: dict[str, Any] | None = None  # kind, threshold and known rate; None: the version has no class models
    backbone: bytes = b""  # set when ``onnx`` is only the head: the shared backbone graph it reads the features of
    backbone_digest: str | None = None
    # the served score's temperature and its expected calibration error (model_core.calibration.calibration_report)
    calibration: dict[str, float] | None = None


class JobRun:
    """One job's life, step by step (``run``). ``times`` collects the seconds of each stage for the report."""

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner, self.store, self.job_id = runner, runner.store, job_id
        self.times: dict[str, float] = {}
        # The parent's suite as segments stored once (service.jobs.suite): their references, or for a parent of
        # the old layout (refs empty) its suite, to be split into segments; and this job's evaluation samples
        self.parent_refs: list[Ref] = []
        self.parent_suite: dict[str, np.ndarray] = {}
        self.new_eval: dict[str, np.ndarray] = {}
        self.int8: Int8Backbone | None = None  # the int8 backbone graph this job learns from (service.jobs.int8)
        self.fp32_features: tuple[Callable[[torch.Tensor], torch.Tensor], dict[bytes, torch.Tensor]] | None = None

    def run(self) -> None:
        t0 = time.perf_counter()
        spec = self.start()
        learner, suite = self.load_parent(spec)
        served = suite.pop(SERVED, None)  # the parent's labels for its suite's rows (None: a bundle without them)
        train, suite = self.merge_evaluation_sets(spec, suite)
        task_names = list(dict.fromkeys([*(str(t) for t in suite["task"])]))
        self.choose_feature_backend(spec, learner, train)
        self.times["load"] = time.perf_counter() - t0 - self.times.get("int8-quantize", 0.0)
        t_parent = time.perf_counter()
        # the rows the gate scores: the whole suite, or past the budget a seeded sample keeping every class
        seed = spec.request.options.seed
        rows = scored_rows(suite["task"], suite["label"], spec.task, self.runner.gate_suite_samples, seed)
        scored, scored_served = scored_suite(suite, served, rows)
        parent = self.score_parent(learner, scored, task_names, scored_served)  # part of the gate's time
        parent_seconds = time.perf_counter() - t_parent
        chosen: tuple[Learner, LearnResult] | None = None
        choice: dict[str, Any] | None = None
        cfg = GateConfig.from_dict(spec.gate_defaults).merged(spec.request.gate)  # the classifier's, then the request's
        # the parent as it was, to cross-validate a new task whose held-out split is small (service.jobs.training_cross_check)
        before = self.fold_parent(spec, cfg, learner)
        if spec.request.choose and spec.parent_dir is None:
            spec, chosen, choice = self.choose_strategy(spec, learner, train, suite)
        learner, result = chosen if chosen is not None else (learner, self.train(spec, learner, train))
        self.runner._set_status(self.job_id, "evaluating")
        candidate = self.score_candidate(learner, result, parent, parent_seconds)
        cross = self.cross_validate(spec, cfg, learner, candidate, parent, train, before)
        exported = self.export(learner, suite, spec.known_rate, out_of_fold(cross[0], len(train["x"])))
        report = self.gate(spec, cfg, learner, candidate, exported, parent, train, cross)
        report["strategy_choice"] = choice
        report["suite"] = suite_summary(len(suite["x"]), rows, self.runner.gate_suite_samples, seed)
        if self.int8 is not None:
            report[INT8] = self.check_int8(learner, parent, exported)
        t_save = time.perf_counter()
        # Publishing, crash-safe at every instant: (1) the bundle goes to a folder named by this job, not by a
        # version number, so a worker that dies before (2) leaves a folder nobody collides with (the next
        # worker start sweeps it); (2) the version row is committed, numbered then; (3) the pointer moves by
        # compare-and-set from the parent this job trained from, or the candidate is held.
        self.runner.stage("trained")
        folder = self.write_bundle(spec, learner, result, exported, with_served(suite, candidate.predicted, rows), report)
        self.runner.stage("bundle-written")
        number = self.commit_version(spec, learner, result, report, folder)
        self.runner.stage("row-committed")
        job_status = self.promote(spec, cfg, number, report, t_save)
        self.runner.stage("promoted")
        log.info("job %s: %s version %d of %s (%s)", self.job_id, job_status, number, spec.name, report["seconds"])

    def start(self) -> JobSpec:
        """Record the job's lineage (the version active as it starts) and read what it needs."""
        with self.runner.sessions() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            clf = s.get(Classifier, job.classifier_id)
            assert clf is not None
            job.parent = clf.active_version  # lineage: the version active when the job starts
            if job.started_at is not None:  # the wait between the learn request and a worker taking the job
                self.times["queued"] = max(0.0, (job.started_at - job.created_at).total_seconds())
            s.commit()
            parent = get_version(s, clf, clf.active_version) if clf.active_version is not None else None
            return JobSpec(
                job_id=self.job_id, classifier_id=clf.id, name=clf.name, network=dict(clf.network),
                gate_defaults=dict(clf.gate), task=job.task, strategy=job.strategy, retention=job.retention,
                request=JobRequest.from_stored(dict(job.request)),  # any schema version this worker knows
                parent_number=parent.number if parent else None,
                parent_dir=self.store.path(parent.artifact) if parent else None,
                known_rate=UnknownSettings.from_dict(clf.unknowns).known_rate,
            )  # fmt: skip

    def load_parent(self, spec: JobSpec) -> tuple[Learner, dict[str, np.ndarray]]:
        """The parent's whole learner state (weights and every strategy's state) and its regression suite; a
        new learner and an empty suite for a classifier's first version."""
        if spec.parent_dir is not None:
            learner, manifest = load_bundle(spec.parent_dir, self.store.content_path)
            suite, self.parent_refs = read_suite(spec.parent_dir, manifest.references, self.store.content_path)
            if (spec.parent_dir / SERVED_FILE).exists():  # the parent's own labels for its suite's rows
                suite[SERVED] = bytes_to_arrays((spec.parent_dir / SERVED_FILE).read_bytes())[SERVED]
            if not self.parent_refs:
                self.parent_suite = suite
            return learner, suite
        return Learner.create(NetworkSpec.from_dict(spec.network), seed=spec.request.options.seed), {}

    def merge_evaluation_sets(
        self, spec: JobSpec, suite: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(the job's training samples, the parent's suite plus the job's evaluation samples)."""
        train = self.store.read_arrays(self.job_id, "train")
        new_eval = self.store.read_arrays(self.job_id, "eval")
        if train is None or new_eval is None:
            raise RuntimeError("the job's samples are gone from the artifact store")
        self.new_eval = new_eval
        return train, merge_suite(suite, new_eval, spec.task)

    def choose_feature_backend(self, spec: JobSpec, learner: Learner, train: dict[str, np.ndarray]) -> None:
        """A frozen backbone's features: cached between jobs, and computed by ONNX Runtime on a CPU (with its
        int8 graph where the classifier has one, or gets one now: service.jobs.int8)."""
        digest = backbone_digest(learner) if learner.frozen_backbone else ""
        if learner.frozen_backbone:
            learner.feature_cache = self.runner._features_of(digest)
        if learner.frozen_backbone and resolve_device(self.runner.device).type == "cpu":
            # Features through ONNX Runtime on the backbone graph the versions serve (exported once, cached):
            # several times faster than eager torch on a CPU, and the head trains on what serving computes.
            learner.feature_fn = self.runner._feature_session(learner, digest)
            if self.runner.int8 and self.runner.shared_backbone:
                t = time.perf_counter()
                try:
                    shared = self.shared_int8(spec) if spec.parent_dir is None and self.runner.int8_shared else ()
                    self.int8 = plan_int8(learner, spec.parent_dir, train["x"], self.store, self.runner.cache_dir,
                                          self.runner.int8_config, shared)  # fmt: skip
                except Exception:  # the job goes on with fp32 (the report has no int8 section); the log says why
                    log.warning("job %s: no int8 backbone, learning from fp32:\n%s", self.job_id, traceback.format_exc())
                self.times["int8-quantize"] = time.perf_counter() - t
            if self.int8 is not None:  # its own feature cache: int8 features never mix with fp32 ones
                self.fp32_features = learner.feature_fn, learner.feature_cache
                learner.feature_cache = self.runner._features_of(f"{digest}:{self.int8.sha256}")
                learner.feature_fn = self.runner._int8_session(learner, self.int8)

    def shared_int8(self, spec: JobSpec) -> Iterator[dict[str, Any]]:
        """The ``int8`` references of the other classifiers' active versions, read lazily (``plan_int8`` stops at
        the first that fits): a classifier's first job takes the int8 graph of one on the same backbone rather
        than quantize its own, so the deployment holds one int8 graph per backbone and serving one session for
        it (Settings.int8_calibration "deployment")."""
        with self.runner.sessions() as s:
            artifacts = s.scalars(
                select(Version.artifact)
                .join(Classifier, (Classifier.id == Version.classifier_id) & (Classifier.active_version == Version.number))
                .where(Classifier.id != spec.classifier_id)
                .order_by(Version.created_at)
            ).all()
        for artifact in artifacts:
            try:
                ref = references_of(self.store.read_manifest(artifact)).get(INT8)
            except Exception:  # a bundle pruned or unreadable meanwhile: not one to share
                continue
            if ref:
                yield dict(ref)

    def check_int8(self, learner: Learner, parent: ParentScores, exported: Exported) -> dict[str, Any]:
        """The report's ``int8`` section: the version's head on the int8 and fp32 graphs' features of every
        task's evaluation samples, and whether int8 serves (service.jobs.int8.check_version)."""
        assert self.int8 is not None and self.fp32_features is not None
        t = time.perf_counter()
        units = len(learner.labels)
        check = check_version(learner, parent.slices,
                              lambda lr, x, y, task: predictions(lr, x, y, task, units).after,
                              self.fp32_features, self.runner.int8_tolerance)  # fmt: skip
        if not exported.backbone:  # no shared backbone to serve either graph from (a whole graph, or no export)
            check["serve_int8"] = False
            check["reason"] = "fp32 serves: the version has no head on a shared backbone"
        self.int8.check = check
        self.times["int8-check"] = time.perf_counter() - t
        return {**check, "sha256": self.int8.sha256, "digest": self.int8.digest, "quantization": self.int8.quantization,
                "kernels": self.runner.int8_kernels.to_dict()}  # fmt: skip

    def score_parent(
        self, learner: Learner, suite: dict[str, np.ndarray], task_names: list[str], served: np.ndarray | None = None
    ) -> ParentScores:
        """The parent's accuracy per task, before the learner changes (``parent_scores``)."""
        return parent_scores(learner, suite, task_names, served)

    def choose_strategy(
        self, spec: JobSpec, learner: Learner, train: dict[str, np.ndarray], suite: dict[str, np.ndarray]
    ) -> tuple[JobSpec, tuple[Learner, LearnResult] | None, dict[str, Any]]:
        """A classifier's first job naming no strategy: choose among the candidates by their scores on the job's
        data (service.jobs.training_choice) and record the winner as the job's strategy. Returns the job's spec with it, the
        winner's learner and result where they can be kept as trained (else None: train it), and the report."""
        t0 = time.perf_counter()
        held_x, held_y = task_slice(suite, spec.task)

        def share(fresh: Learner) -> None:  # the job's frozen-feature cache and backend, for every candidate
            fresh.feature_cache, fresh.feature_fn = learner.feature_cache, learner.feature_fn

        _, should_cancel = self.runner._callbacks(self.job_id, {})
        picked = choose(spec.network, spec.request.options.seed, train, {"x": held_x, "label": held_y},
                        self.config(spec), lambda x, y: experience(spec.task, x, y), share, should_cancel)  # fmt: skip
        with self.runner.sessions() as s:
            job = s.get(Job, self.job_id)
            assert job is not None
            job.strategy = picked.strategy
            s.commit()
        self.times["choose"] = time.perf_counter() - t0
        kept = None if picked.learner is None or picked.result is None else (picked.learner, picked.result)
        # the winner runs with its own defaults (the stored parameters were the measured default's, checked at submit)
        request = replace(spec.request, params={})
        return replace(spec, strategy=picked.strategy, request=request), kept, picked.report

    def fold_parent(self, spec: JobSpec, cfg: GateConfig, learner: Learner) -> Learner | None:
        """A copy of the untrained ``learner`` when the job's new task may be cross-validated (its held-out split
        under SMALL_EVAL, its floor from the data, and a closed-form strategy, or one still to be chosen)."""
        choosing = spec.request.choose and spec.parent_dir is None
        strategy = None if choosing else spec.strategy
        if not cross_check.wanted(strategy, len(self.new_eval["x"]), cfg.new_task_floor, 2):
            return None
        return cross_check.snapshot(learner)

    def config(self, spec: JobSpec) -> TrainConfig:
        """The job's training configuration: its options, bounded by this worker's step limit."""
        options = spec.request.options
        return TrainConfig(iterations=options.iterations, batch_size=options.batch_size, lr=options.lr,
                           seed=options.seed, device=self.runner.device, max_iterations=self.runner.max_steps)  # fmt: skip

    def train(self, spec: JobSpec, learner: Learner, train: dict[str, np.ndarray]) -> LearnResult:
        """Learn the job's task with its strategy; progress and cancel checks go to the job's row."""
        t1 = time.perf_counter()
        config = self.config(spec)
        stages: dict[str, float] = {}
        progress, should_cancel = self.runner._callbacks(self.job_id, stages)
        exp = experience(spec.task, train["x"], train["label"])
        result = learner.learn(exp, spec.strategy, spec.request.params, config, progress, should_cancel)
        self.times["train"] = time.perf_counter() - t1
        self.times.update({f"train.{stage}": sec for stage, sec in stages.items()})  # e.g. train.generator
        return result

    def score_candidate(
        self, learner: Learner, result: LearnResult, parent: ParentScores, parent_seconds: float
    ) -> Candidate:
        """Score the trained learner on every task (the gate's time, with the parent's scoring)."""
        t2 = time.perf_counter()
        predicted = {t: predictions(learner, *parent.slices[t], t, parent.units, parent.predicted[t])
                     for t in parent.slices}  # fmt: skip
        rows = [(t, parent.correct[t], p.after == p.labels) for t, p in predicted.items()]
        self.times["gate"] = parent_seconds + time.perf_counter() - t2
        return Candidate(result, predicted, rows)

    def export(
        self, learner: Learner, suite: dict[str, np.ndarray], known_rate: float, evidence: tuple[int, int] | None = None
    ) -> Exported:
        """The candidate as ONNX, checked against torch on the suite's first samples; a failure is the gate's. Its
        served score is calibrated first (a temperature in the graph, fitted on the suite's held-out samples). Where the version has class models, its novelty score goes into the graph, its threshold calibrated on
        every task's evaluation samples (held out from training) at the classifier's known rate. ``evidence``: (right,
        n) of the new task's training samples scored out of fold, where it was cross-validated (``out_of_fold``)."""
        t3 = time.perf_counter()
        onnx_bytes, diff, err = b"", None, None
        # the served score's temperature, fitted on every task's evaluation samples (never trained on; at most
        # CALIBRATION_SAMPLES of them), before the novelty (which reads the served logits) is fitted
        fit = calibration_rows(len(suite["x"]))
        calibration = learner.calibrate(torch.from_numpy(suite["x"][fit]), suite["label"][fit].astype(str).tolist(),
                                        suite["task"][fit].astype(str).tolist(), evidence)  # fmt: skip
        novelty = None
        module = novelty_module(learner) if self.runner.novelty else None
        if module is not None:
            x = torch.from_numpy(suite["x"][fit])
            novelty = Novelty(module, fit_novelty(learner, module, x, known_rate), known_rate)
        about = json.loads(novelty.metadata()) if novelty else None
        check = torch.from_numpy(suite["x"][:64])
        backbone, digest = b"", None
        split = learner.frozen_backbone and self.runner.shared_backbone

        def run(novelty: Novelty | None) -> tuple[bytes, float]:
            nonlocal backbone, digest
            if split:
                head = export_head(learner, check, cache_dir=self.runner.cache_dir, novelty=novelty)
                backbone, digest = head.backbone, head.backbone_digest
                return head.head, head.max_abs_diff
            whole = export_onnx(learner, check, cache_dir=self.runner.cache_dir, novelty=novelty)
            return whole.onnx, whole.max_abs_diff

        try:
            try:
                onnx_bytes, diff = run(novelty)
            except NoveltyExportError as exc:  # the classifier still serves, without novelty; the report says why
                about = {"error": str(exc)}
                onnx_bytes, diff = run(None)
        except ExportError as exc:
            err = str(exc)
        self.times["export"] = time.perf_counter() - t3
        return Exported(onnx_bytes, diff, err, about, backbone, digest, calibration)

    def cross_validate(
        self, spec: JobSpec, cfg: GateConfig, learner: Learner, candidate: Candidate, parent: ParentScores,
        train: dict[str, np.ndarray], before: Learner | None,
    ) -> tuple[CrossChecked | None, str | None]:  # fmt: skip
        """The new task cross-validated from ``before`` (the parent as it was) where its held-out split is small
        (``service.jobs.training_cross_check``), or why its folds could not be fitted; (None, None) where it is not.
        Part of the gate's time; before the export, whose calibration counts its out-of-fold answers."""
        t0 = time.perf_counter()
        if before is None or spec.task not in parent.slices:
            return None, None
        chance_classes, others, inputs_of = reference_inputs(learner, spec.task, train, parent.slices)
        if not cross_check.wanted(spec.strategy, len(parent.slices[spec.task][0]), cfg.new_task_floor, chance_classes):
            return None, None
        _, should_cancel = self.runner._callbacks(self.job_id, {})
        checked = cross_check.cross_check(
            before, spec.strategy, candidate.result.params, self.config(spec), train,
            parent.slices[spec.task], others, inputs_of, lambda x, y: experience(spec.task, x, y),
            lambda lr, x, y: predictions(lr, x, y, spec.task, len(lr.labels)).after,
            spec.request.options.seed, should_cancel,
        )  # fmt: skip
        self.times["gate.cross-check"] = time.perf_counter() - t0
        self.times["gate"] = self.times.get("gate", 0.0) + time.perf_counter() - t0
        return (checked, None) if isinstance(checked, CrossChecked) else (None, checked)

    def gate(
        self, spec: JobSpec, cfg: GateConfig, learner: Learner, candidate: Candidate, exported: Exported,
        parent: ParentScores, train: dict[str, np.ndarray],
        cross: tuple[CrossChecked | None, str | None] = (None, None),
    ) -> dict[str, Any]:  # fmt: skip
        """The gate's report under ``cfg`` (the classifier's configuration, overridden by the request). ``cross``:
        the new task cross-validated (``cross_validate``), or why it could not be."""
        t0 = time.perf_counter()
        chance_classes, reference = new_task_reference(learner, spec.task, train, parent.slices)
        cross_checked, cross_error = cross
        self.times["gate"] = self.times.get("gate", 0.0) + time.perf_counter() - t0
        result = candidate.result
        training = result.train.summary()  # steps, budget and why training stopped: for the advice and the report
        inputs = GateInputs(
            scenario=learner.scenario, strategy=spec.strategy, retention=spec.retention, new_task=spec.task,
            added_classes=result.new_labels, tasks=candidate.rows, onnx_diff=exported.max_abs_diff,
            onnx_error=exported.error, labels={t: parent.slices[t][1] for t in parent.slices},
            diagnostics=result.diagnostics, facts=JobFacts(result.params, result.train.steps, spec.network, training),
            predictions=candidate.predicted, chance_classes=chance_classes, reference=reference,
            cross_checked=cross_checked, cross_check_error=cross_error,
        )  # fmt: skip
        report = evaluate(cfg, inputs)
        report["training"] = training
        report["novelty"] = exported.novelty
        report["calibration"] = exported.calibration
        return report

    def write_bundle(
        self, spec: JobSpec, learner: Learner, result: LearnResult, exported: Exported, suite: dict[str, np.ndarray],
        report: dict[str, Any],
    ) -> Path:  # fmt: skip
        """The bundle, in a folder named by this job, published to the store before any row names it."""
        folder = self.store.bundle_dir(spec.name, self.job_id)
        if folder.exists():  # this job's own leftover (a retried task): never a published version's folder
            self.store.remove(self.store.relative(folder))
        references: dict[str, dict[str, Any]] = {}
        extra: dict[str, bytes] = {}
        if self.runner.shared_content:  # each task's samples once in the store, referenced by sha256
            t = time.perf_counter()
            if SERVED in suite:  # the version's own labels for its suite: its own, in its folder
                extra[SERVED_FILE] = arrays_to_bytes({SERVED: suite[SERVED]})
            net = NetworkSpec.from_dict(spec.network)
            scale = net.preprocessing.pixel_scale if net.input.kind == "image" else None
            references.update(suite_references(self.store.put_content, self.parent_refs, self.parent_suite,
                                               self.new_eval, spec.task, scale))  # fmt: skip
            self.times["eval-store"] = time.perf_counter() - t
        else:
            extra[EVAL_FILE] = arrays_to_bytes(suite)
        if exported.onnx and exported.backbone:  # the head only; the backbone once in the store, by sha256
            t = time.perf_counter()
            sha = self.store.put_content(exported.backbone)  # before the bundle that references it is published
            self.times["backbone-store"] = time.perf_counter() - t
            references["backbone"] = {"sha256": sha, "size": len(exported.backbone), "kind": "onnx-backbone",
                                      "digest": exported.backbone_digest, "input": "input", "output": "features"}  # fmt: skip
            extra[HEAD_FILE] = exported.onnx
            if self.int8 is not None:  # the int8 graph once too, whether this version serves it or not
                self.store.put_content(self.int8.graph)
                references[INT8] = self.int8.reference()
        elif exported.onnx:
            extra[MODEL_FILE] = exported.onnx
        save_bundle(folder, learner, {"name": spec.strategy, "params": result.params},
                    parent=None if spec.parent_number is None else f"v{spec.parent_number}",
                    metadata={"job_id": self.job_id, "report": report}, extra_files=extra, references=references,
                    put_content=self.store.put_content if self.runner.shared_content else None)  # fmt: skip
        self.store.publish(folder)  # an object store uploads it here, before any row names it
        return folder

    def commit_version(
        self, spec: JobSpec, learner: Learner, result: LearnResult, report: dict[str, Any], folder: Path
    ) -> int:
        """The version row, numbered now (a candidate, or rejected by the gate); returns its number."""
        status = "candidate" if report["passed"] else "rejected"
        with self.runner.sessions() as s:
            clf = s.get(Classifier, spec.classifier_id)
            job = s.get(Job, self.job_id)
            assert clf is not None and job is not None
            number = next_version_number(s, clf)  # one job per classifier at a time: no race for the number
            s.add(Version(
                classifier_id=clf.id, number=number, status=status, parent=spec.parent_number, strategy=spec.strategy,
                params=result.params, labels=list(learner.labels),
                tasks=[{"name": t.name, "labels": [learner.labels[u] for u in t.units]} for t in learner.tasks],
                report=report, artifact=self.store.relative(folder), job_id=self.job_id,
            ))  # fmt: skip
            job.version = number
            s.commit()
        return number

    def promote(self, spec: JobSpec, cfg: GateConfig, number: int, report: dict[str, Any], t_save: float) -> str:
        """Auto-promote a version that passed (unless approval is manual or the pointer moved while it trained)
        and end the job with its report and seconds per stage ("save": from ``t_save`` until now). Returns the
        job's final status."""
        with self.runner.sessions() as s:
            clf = s.get(Classifier, spec.classifier_id)
            job = s.get(Job, self.job_id)
            assert clf is not None and job is not None
            version = get_version(s, clf, number)
            job_status = "passed" if report["passed"] else "rejected"
            if report["passed"] and not cfg.manual_approval:
                held = hold_reason(spec.parent_number, clf.active_version)
                if held is None:
                    try:
                        set_active(s, clf, version, "auto-promote", "worker", "gate passed", forced=False,
                                   expected=spec.parent_number)  # fmt: skip
                        job_status = "promoted"
                    except PointerMoved as exc:  # an admin moved it after the read above
                        held = hold_reason(spec.parent_number, exc.current)
                if held is not None:
                    report["held"] = held
                    log.warning("job %s: version %d of %s not promoted: %s", self.job_id, number, spec.name, held)
            self.times["save"] = time.perf_counter() - t_save
            report["seconds"] = {k: round(v, 3) for k, v in self.times.items()}
            version.report = dict(report)
            job.report, job.status, job.finished_at = report, job_status, utcnow()
            job.seconds = report["seconds"]
            s.commit()
        return job_status


def trim_features(caches: OrderedDict[str, dict[bytes, torch.Tensor]], budget: int) -> None:
    """Drop the oldest features of ``caches`` (least recently used backbone first, then each cache's oldest rows)
    until they hold at most ``budget`` bytes."""
    used = sum(t.numel() * t.element_size() for cache in caches.values() for t in cache.values())
    for cache in list(caches.values()):
        while used > budget and cache:
            used -= (t := cache.pop(next(iter(cache)))).numel() * t.element_size()
        if used <= budget:
            return


def reference_inputs(
    learner: Learner, task: str, train: dict[str, np.ndarray], slices: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[int, tuple[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """What the new task's floor is read from (service.domain.new_task): the classes the candidate chooses among
    for ``task``'s samples; the samples, beside the job's training samples, that a nearest-class-mean reference's
    means come from (in class-incremental learning the regression suite's samples of every class the job does not
    teach, so that it too chooses among every class); and the inputs the head sees of a batch (frozen-backbone
    features, or the flattened raw input)."""
    if learner.scenario == "task-incremental":
        classes = len(learner.task(task).units) if task in learner.task_names else 0
        others = [slices[task]] if task in slices else []
    else:
        classes = len(learner.labels)
        others = [s for t, s in slices.items() if t != task]
    taught = set(train["label"].astype(str).tolist())
    xs, ys = [train["x"][:0]], [train["label"][:0].astype(str)]
    for x, y in others:
        keep = ~np.isin(y.astype(str), list(taught))
        xs.append(x[keep])
        ys.append(y[keep].astype(str))

    def inputs(x: np.ndarray) -> np.ndarray:
        if not learner.frozen_backbone or len(x) == 0:
            return x.reshape(len(x), -1)
        return learner.features(torch.from_numpy(x.astype(np.float32))).numpy()

    return classes, (np.concatenate(xs), np.concatenate(ys)), inputs


def new_task_reference(
    learner: Learner, task: str, train: dict[str, np.ndarray], slices: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[int, float | None]:
    """(the classes the candidate chooses among for ``task``'s samples, a nearest-class-mean reference's accuracy
    on the task's evaluation samples) from ``reference_inputs``."""
    classes, others, inputs = reference_inputs(learner, task, train, slices)
    if task not in slices:
        return classes, None
    test_x, test_y = slices[task]
    xs, ys = np.concatenate([train["x"], others[0]]), np.concatenate([train["label"].astype(str), others[1]])
    return classes, nearest_mean_accuracy(inputs(xs), ys, inputs(test_x), test_y)


def hold_reason(parent: int | None, active: int | None) -> str | None:
    """Why a candidate that passed its gate is not auto-promoted: the version it trained from is no longer
    the active one (an admin rolled back or promoted another while it trained). None: promote it."""
    if active == parent:
        return None
    now = "no version" if active is None else f"v{active}"
    return (f"trained from {'scratch' if parent is None else f'v{parent}'}; {now} was made active while it trained, "
            "so it was not auto-promoted over that decision; an admin may still promote it")  # fmt: skip


def out_of_fold(cross: CrossChecked | None, train_rows: int) -> tuple[int, int] | None:
    """(right, n) of the new task's training samples in its cross-validation (``CrossChecked.correct`` lists the
    training samples first, then the held-out ones), each scored by a fold that never saw it: what the served score's
    calibration counts beside the held-out samples (``model_core.calibration.fit_temperature``); None without one."""
    if cross is None or train_rows <= 0:
        return None
    return int(cross.correct[:train_rows].sum()), int(min(train_rows, len(cross.correct)))


def calibration_rows(n: int, cap: int = CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    """Row indices of the suite's samples the calibrations fit on: all ``n`` in order, or a seeded uniform ``cap``
    of them (sorted) when there are more."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def merge_suite(suite: dict[str, np.ndarray], new_eval: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
    """The parent's regression suite plus this job's evaluation samples under ``task``."""
    n = len(new_eval["x"])
    added = {"x": new_eval["x"], "label": new_eval["label"].astype(str), "task": np.array([task] * n, dtype=str)}
    if not suite:
        return added
    return {k: np.concatenate([suite[k], added[k]]) for k in added}  # numpy widens string dtypes


def parent_scores(
    learner: Learner, suite: dict[str, np.ndarray], task_names: list[str], served: np.ndarray | None = None
) -> ParentScores:
    """The parent's accuracy per task, before the learner changes. ``served``: the parent's labels for the first
    rows of ``suite`` (its own suite, stored with it); only the rows after them are predicted."""
    slices = task_slices(suite, task_names)
    units = len(learner.labels)
    if served is not None and not parent_labels_hold(learner, suite, served, units):
        served = None
    rows = task_rows(suite["task"], task_names) if served is not None else {}
    predicted: dict[str, np.ndarray | None] = {}
    for t in task_names:
        if t not in learner.task_names:
            predicted[t] = None
        elif served is None:
            predicted[t] = predictions(learner, *slices[t], t, units).after
        else:
            known = rows[t] < len(served)  # rows of the parent's own suite; the rest are this job's
            known[known] = served[rows[t][known]] != ""  # "": a row the parent's own gate did not score
            labels = np.empty(len(known), dtype=object)
            labels[known] = served[rows[t][known]]
            x, y = slices[t]
            labels[~known] = predictions(learner, x[~known], y[~known], t, units).after
            predicted[t] = labels.astype(str)
    correct = {t: None if p is None else p == slices[t][1].astype(str) for t, p in predicted.items()}
    return ParentScores(slices, units, predicted, correct)


def task_rows(suite_tasks: np.ndarray, tasks: list[str]) -> dict[str, np.ndarray]:
    """{task: its rows of the suite, in order} in one pass over the suite (one comparison of the whole suite per
    task would grow with tasks x samples, faster than linearly in the classes learnt)."""
    if not tasks:
        return {}
    names, inverse = np.unique(suite_tasks.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(names) + 1))
    rows = {str(n): order[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
    empty = np.zeros(0, dtype=int)
    return {t: rows.get(t, empty) for t in tasks}


def task_slices(suite: dict[str, np.ndarray], tasks: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{task: (x, labels) of its evaluation samples}, in suite order (``task_rows``)."""
    return {t: (suite["x"][r], suite["label"][r]) for t, r in task_rows(suite["task"], tasks).items()}


def with_served(
    suite: dict[str, np.ndarray], predicted: dict[str, TaskPredictions], rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The suite with the candidate's own label for each of its rows (``SERVED``), for the next job to read.
    ``rows``: the suite's rows the gate scored (``scored_suite``; None: all), which ``predicted`` covers; the
    others get "" (not scored: a later job that scores them predicts them with this version)."""
    served = np.full(len(suite["x"]), "", dtype=object)
    at = np.arange(len(suite["x"])) if rows is None else rows
    for t, r in task_rows(suite["task"][at], list(predicted)).items():
        served[at[r]] = predicted[t].after
    return {**suite, SERVED: served.astype(str)}


def scored_suite(
    suite: dict[str, np.ndarray], served: np.ndarray | None, rows: np.ndarray | None
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """(the suite's ``rows``, the parent's stored labels for those of them it has: its own rows come first), or
    the suite and the labels as they are when ``rows`` is None."""
    if rows is None:
        return suite, served
    return {k: v[rows] for k, v in suite.items()}, None if served is None else served[rows[rows < len(served)]]


def suite_summary(samples: int, rows: np.ndarray | None, budget: int, seed: int) -> dict[str, Any]:
    """The report's ``suite``: how many of the suite's samples the gate scored, and whether they were a sample
    (seeded by ``seed``; service.jobs.suite.scored_rows) because the suite holds more than ``budget``."""
    scored = samples if rows is None else len(rows)
    return {"samples": samples, "scored": scored, "sampled": rows is not None, "budget": budget,
            "seed": seed if rows is not None else None}  # fmt: skip


def parent_labels_hold(learner: Learner, suite: dict[str, np.ndarray], served: np.ndarray, units: int) -> bool:
    """Whether the stored labels are this parent's: they cover no more rows than the suite, and the parent gives
    the same labels to ``CHECKED_ROWS`` seeded rows of those it stored (not "": rows its gate did not score), per
    task (task-incremental labels are within one)."""
    if len(served) > len(suite["x"]) or len(served) == 0:
        return False
    stored = np.flatnonzero(served.astype(str) != "")  # the rows the parent's gate scored (all, unless sampled)
    if len(stored) == 0:
        return False
    rows = stored[np.random.default_rng(0).choice(len(stored), min(CHECKED_ROWS, len(stored)), replace=False)]
    for t in np.unique(suite["task"][rows].astype(str)):
        mine = rows[suite["task"][rows].astype(str) == t]
        if t not in learner.task_names:
            continue
        got = predictions(learner, suite["x"][mine], suite["label"][mine], str(t), units).after
        if not np.array_equal(got.astype(str), served[mine].astype(str)):
            return False
    return True


def task_slice(suite: dict[str, np.ndarray], task: str) -> tuple[np.ndarray, np.ndarray]:
    keep = suite["task"] == task
    return suite["x"][keep], suite["label"][keep]
