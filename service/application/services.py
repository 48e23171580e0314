"""The application layer behind the HTTP controllers, as five services with one job each:

- ``classifiers`` (``service.application.classifiers``): create, list, read; the readiness ping;
- ``learning`` (``service.application.learning``): validate and queue learn jobs; read, cancel and reap jobs;
- ``versions`` (``service.application.versions``): versions, audit, promotion and rollback (compare-and-set);
- ``serving`` (``service.application.serving``): which version this replica serves, loading it, predict;
- ``lifecycle`` (``service.application.lifecycle``): retention and prune, deleting a classifier, store sizes.

They take the application's own command types (``service.domain.commands``), never the HTTP schemas, and raise
the domain errors of ``service.domain.errors``. They hold the transactions and reach the database only through
the named queries and state transitions of ``service.persistence.registry``; what they answer is built by
``service.application.views``. No torch here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from model_core.strategy_specs import SPECS
from service.application.classifiers import ClassifierService
from service.application.learning import LearningService, stratified_holdout
from service.application.lifecycle import LifecycleService
from service.application.metrics import Metrics
from service.application.serving import ServingService
from service.application.versions import VersionService
from service.application.views import classifier_view, version_view
from service.domain.errors import Invalid
from service.inference.sessions import ServingState
from service.settings import Settings
from service.storage.base import ArtifactStore

__all__ = ["EngramService", "Invalid", "classifier_view", "stratified_holdout", "version_view"]


class EngramService:
    """The five application services over one database, artifact store and serving state."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        state: ServingState,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.classifiers = ClassifierService(sessions, settings)
        self.serving = ServingService(settings, sessions, store, state, self.metrics)
        self.learning = LearningService(settings, sessions, store, self.metrics, follow=self.serving.follow)
        self.versions = VersionService(sessions, store, self.serving)
        self.lifecycle = LifecycleService(settings, sessions, store, self.serving, self.metrics)

    @staticmethod
    def strategies() -> dict[str, Any]:
        return {n: {"summary": s.summary, "stores_data": s.stores_data, "adds_classes": s.adds_classes,
                    "needs_tasks": s.needs_tasks, "parameters": s.defaults} for n, s in sorted(SPECS.items())}  # fmt: skip
