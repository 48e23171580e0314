"""The learning service: validate and stage a learn request, queue its job; read, cancel and reap jobs.

No torch here: a worker trains the job (``service.jobs.training``). What is stored for it is a
``service.domain.commands.JobRequest`` with a schema version, never the HTTP body.
"""

from __future__ import annotations

import reprlib
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from model_core.strategy_specs import (
    SPECS,
    class_models_refusal,
    default_candidates,
    default_strategy,
    task_network_refusal,
)
from model_core.text import package_file
from service.application.metrics import Metrics
from service.application.views import job_view
from service.domain.commands import JobRequest, Learn
from service.domain.errors import Invalid
from service.domain.gate import GateConfig
from service.domain.unknowns import UnknownSettings, refuse_discard_with_capture
from service.inference.inputs import InputError, InputFormat, parse_items
from service.jobs.queue import enqueue, uses_procrastinate
from service.persistence import registry
from service.persistence.models import utcnow
from service.persistence.notify import ring
from service.settings import Settings
from service.storage.base import ArtifactStore


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


class LearningService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        metrics: Metrics,
        follow: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.metrics = metrics
        # Brings this process's serving up to a classifier's pointer (ServingService.follow), by its id.
        self.follow = follow
        self._jobs_seen_until = utcnow()  # jobs finished after this are still to be counted

    def submit_learn(self, name: str, req: Learn) -> dict[str, Any]:
        """Validate the request against the classifier, split off the gate's evaluation samples, stage both and
        queue the job: a job row never exists without its data, nor its data without a row."""
        if req.strategy is not None and req.strategy not in SPECS:
            raise Invalid(f"unknown strategy {req.strategy!r}; choose one of {', '.join(sorted(SPECS))}")
        network, gate_defaults, active_tasks, previous, unknowns = self._classifier_state(name)
        refuse_discard_with_capture(UnknownSettings.from_dict(unknowns), req.retention, name)
        strategy, params = self._strategy(req, network, previous)
        if not req.samples:
            raise Invalid("samples is empty: send at least one labelled sample per class")
        if len(req.samples) > self.settings.max_batch_items:
            raise Invalid(f"samples has {len(req.samples)} items; the limit is {self.settings.max_batch_items}")
        fmt = InputFormat.from_network(network, self.store.content_path)
        if fmt.tokenizer is not None:  # stored once, by sha256: every API replica then tokenizes with the same file
            self._store_tokenizer(network)
        labels = self._labels(req.samples, "samples")
        x = parse_items(req.samples, fmt, "samples", self.settings.max_image_pixels)
        if network["scenario"] == "task-incremental":
            _check_task_classes(req.task, labels, active_tasks)
            _check_task_is_new(strategy, req.task, active_tasks)
        gate = GateConfig.from_dict(gate_defaults).merged(req.gate)
        train_x, train_y, ev_x, ev_labels = self._evaluation_split(req, fmt, x, labels, gate.holdout)
        # A classifier's first job naming no strategy (nor parameters, which belong to one): the worker chooses
        # among the candidates by their scores on this job's data (service.jobs.training_choice)
        choose = req.strategy is None and previous is None and not req.params and len(default_candidates(network)) > 1
        # a job that chooses is refused only when no candidate can take its samples (the choice lists the others,
        # refused with why): a few-shot first job under class_models' minimum is generative replay's to learn
        known = _known_labels(network["scenario"], req.task, active_tasks)
        if not (choose and any(_short_classes(c, train_y, known) == [] for c in default_candidates(network))):
            _check_new_class_samples(strategy, train_y, known)
        job_id = str(uuid.uuid4())
        # Stage the arrays first: a job row never exists without its data.
        self.store.write_arrays(job_id, "train", {"x": train_x, "label": train_y})
        self.store.write_arrays(job_id, "eval", {"x": ev_x, "label": ev_labels})
        request = JobRequest(req.options, params, dict(req.gate or {}), {"train": len(train_x), "eval": len(ev_x)},
                             sorted(set(labels.tolist())), choose).to_stored()  # fmt: skip
        try:
            with self.sessions() as s:
                clf = registry.get_classifier(s, name)
                job = registry.add_job(s, job_id, clf, req.task, strategy, req.retention, request)
                if uses_procrastinate(self.settings.db_url):
                    s.flush()
                    enqueue(s, self.settings, job_id, clf.name)  # same transaction as the job row
                s.commit()
                view = job_view(job)
        except BaseException:
            self.store.delete_job(job_id)
            raise
        if not uses_procrastinate(self.settings.db_url):
            ring(self.settings.run_dir)  # wake the polling worker now (procrastinate's worker is NOTIFYed)
        return view

    def _store_tokenizer(self, network: dict[str, Any]) -> None:
        """Put a text classifier's tokenizer file in the artifact store (a no-op when it is there already)."""
        sha = network["backbone"].get("tokenizer")
        try:
            self.store.content_path(sha)
            return
        except FileNotFoundError:
            pass
        path = package_file(network["backbone"]["name"], "tokenizer")
        if path is not None:
            self.store.put_content(path.read_bytes())

    def _classifier_state(
        self, name: str
    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], str | None, dict[str, Any]]:
        """The classifier's network, gate defaults, the active version's tasks and strategy (None: no version),
        and its unknown-input settings."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            active = registry.get_version(s, clf, clf.active_version) if clf.active_version is not None else None
            return (clf.network, clf.gate, (active.tasks if active else []), (active.strategy if active else None),
                    clf.unknowns)  # fmt: skip

    @staticmethod
    def _strategy(req: Learn, network: dict[str, Any], previous: str | None) -> tuple[str, dict[str, Any]]:
        """The job's strategy (the request's, else the classifier's default) and its checked parameters."""
        strategy = req.strategy or default_strategy(network, previous)
        spec = SPECS[strategy]
        if previous == "class_models" and strategy != "class_models":
            raise Invalid(class_models_refusal(strategy))
        refusal = task_network_refusal(strategy, previous, network)
        if refusal is not None:
            raise Invalid(refusal)
        try:
            params = spec.check_params(req.params)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if req.retention == "discard" and spec.stores_data:
            raise Invalid(
                f"strategy {strategy!r} keeps training samples, which retention 'discard' forbids; "
                "use generative_replay (keeps no samples), or ewc/lwf/mas/imm for task-incremental classifiers"
            )
        return strategy, params

    def _evaluation_split(
        self, req: Learn, fmt: InputFormat, x: np.ndarray, labels: np.ndarray, holdout: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(train x, train labels, evaluation x, evaluation labels): the request's eval_samples, or a stratified
        ``holdout`` share of each class of the samples."""
        if not req.eval_samples:
            mask = stratified_holdout(labels, holdout, req.options.seed)
            return x[~mask], labels[~mask], x[mask], labels[mask]
        ev_labels = self._labels(req.eval_samples, "eval_samples")
        unknown = sorted(set(ev_labels.tolist()) - set(labels.tolist()))
        if unknown:
            raise Invalid(f"eval_samples has labels {unknown} that the samples do not teach")
        return x, labels, parse_items(req.eval_samples, fmt, "eval_samples", self.settings.max_image_pixels), ev_labels

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
        """The job. One that ended ``promoted`` is answered only once this process serves the classifier's
        active version as of this read, so a prediction sent here after it gets the new version (or later)."""
        with self.sessions() as s:
            job = registry.get_job(s, job_id)
            view = job_view(job)
        if job.status == "promoted" and self.follow is not None:
            self.follow(job.classifier_id)
        return view

    def recent_jobs(self, name: str, limit: int = 10) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            return [job_view(j) for j in registry.recent_jobs(s, clf, limit)]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        with self.sessions() as s:
            job = registry.get_job(s, job_id)
            registry.cancel_job(job)  # Conflict once it ended
            s.commit()
            if job.status == "cancelled" and job.retention == "discard":
                self.store.delete_job(job_id)  # after the commit: a failed commit keeps a queued job's data
            return job_view(job)

    def observe_finished_jobs(self) -> None:
        """Feed jobs that ended since the last call into the job metrics (outcome, time per stage)."""
        with self.sessions() as s:
            for job, name in registry.jobs_finished_since(s, self._jobs_seen_until):
                self.metrics.observe_job(name, job.status, job.seconds or {})
                if job.finished_at is not None:
                    self._jobs_seen_until = max(self._jobs_seen_until, job.finished_at)

    def reap(self) -> None:
        with self.sessions() as s:
            for job in registry.reap_stale_jobs(s, self.settings.stale_after_seconds):
                if job.retention == "discard":
                    self.store.delete_job(job.id)


def _check_task_classes(task: str, labels: np.ndarray, active_tasks: list[dict[str, Any]]) -> None:
    """Task-incremental: a task that exists keeps its classes (its head cannot grow)."""
    known = {t["name"]: set(t["labels"]) for t in active_tasks}
    if task in known and not set(labels.tolist()) <= known[task]:
        extra = sorted(set(labels.tolist()) - known[task])
        raise Invalid(f"task {task!r} already exists with classes {sorted(known[task])}; "
                      f"its classes cannot grow (new: {extra}); learn them under a new task name")  # fmt: skip


def _known_labels(scenario: str, task: str, active_tasks: list[dict[str, Any]]) -> set[str]:
    """Labels the active version already has a unit for: any task's (class-incremental), or this task's."""
    return {str(lab) for t in active_tasks if scenario != "task-incremental" or t["name"] == task for lab in t["labels"]}


def _short_classes(strategy: str, train_labels: np.ndarray, known: set[str]) -> list[tuple[str, int]]:
    """(label, training samples) of each new class with fewer than ``strategy``'s minimum, by label."""
    need = SPECS[strategy].min_new_class_samples
    if need <= 1:
        return []
    counts = Counter(str(lab) for lab in train_labels.tolist())
    return sorted((lab, n) for lab, n in counts.items() if lab not in known and n < need)


def _check_new_class_samples(strategy: str, train_labels: np.ndarray, known: set[str]) -> None:
    """A strategy's minimum of training samples per new class, checked before the job is queued (after the gate's
    holdout, as the strategy counts them); the refusal names a few classes, never thousands."""
    need = SPECS[strategy].min_new_class_samples
    short = _short_classes(strategy, train_labels, known)
    if short:
        named = ", ".join(f"{reprlib.repr(lab)} ({n})" for lab, n in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise Invalid(f"strategy {strategy!r} needs at least {need} training samples of each new class, after the "
                      f"gate's holdout; {len(short)} class(es) have fewer: {named}{more}. Send more samples of "
                      "them, or give eval_samples so that every sample trains")  # fmt: skip


def _check_task_is_new(strategy: str, task: str, active_tasks: list[dict[str, Any]]) -> None:
    """packnet and progressive freeze a task once learned: more data for it cannot train it again."""
    if SPECS[strategy].needs_tasks and any(t["name"] == task for t in active_tasks):
        raise Invalid(f"strategy {strategy!r} learns each task once and then freezes it, and task {task!r} is "
                      "already learned: send the new data under a new task name")  # fmt: skip
