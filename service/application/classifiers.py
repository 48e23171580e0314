"""The classifiers service: create, list, read a classifier (and the readiness ping)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from model_core.config import BackboneSpec, InputSpec, NetworkSpec, default_backbone
from service.application.views import classifier_view
from service.domain.backbones import BackboneChecker
from service.domain.commands import NewClassifier
from service.domain.errors import Invalid
from service.domain.gate import GateConfig
from service.persistence import registry
from service.settings import Settings


class ClassifierService:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        self.backbones = BackboneChecker()  # a child with torch, started at the first pretrained backbone

    def create_classifier(self, cmd: NewClassifier) -> dict[str, Any]:
        inp = InputSpec(**cmd.input)
        try:  # NetworkSpec validates the combination (e.g. a conv backbone on vectors)
            backbone = BackboneSpec.parse(cmd.backbone or default_backbone(inp))
            spec = NetworkSpec(inp, backbone=backbone, scenario=cmd.scenario)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise Invalid(str(exc)) from None
        # Pretrained weights are loaded once now (in a child process: no torch here), so a missing or
        # ill-fitting file is refused with the classifier rather than at its first job.
        network = self.backbones.resolve_network(
            spec.to_dict(), self.settings.weights_cache_path, self.settings.allow_downloads
        )
        gate = GateConfig().merged(cmd.gate)
        with self.sessions() as s:
            clf = registry.add_classifier(s, cmd.name, network, dict(gate.__dict__))  # Conflict: the name is taken
            s.commit()
            return classifier_view(clf)

    def ping(self) -> None:
        """Raise if the database does not answer (readiness)."""
        with self.sessions() as s:
            registry.ping(s)

    def list_classifiers(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [classifier_view(c) for c in registry.list_classifiers(s)]

    def get_classifier(self, name: str) -> dict[str, Any]:
        with self.sessions() as s:
            return classifier_view(registry.get_classifier(s, name))
