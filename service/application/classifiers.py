"""The classifiers service: create, list, read a classifier (and the readiness ping)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from model_core.config import BackboneSpec, InputSpec, NetworkSpec, default_backbone
from service.domain.backbones import BackboneChecker
from service.domain.commands import NewClassifier
from service.domain.errors import Conflict, Invalid
from service.domain.gate import GateConfig
from service.persistence.models import Classifier
from service.persistence.registry import get_classifier
from service.settings import Settings


def classifier_view(c: Classifier) -> dict[str, Any]:
    return {"name": c.name, "input": c.network["input"], "scenario": c.network["scenario"],
            "backbone": BackboneSpec.parse(c.network["backbone"]).name, "gate": c.gate, "active_version": c.active_version,
            "created_at": c.created_at}  # fmt: skip


class ClassifierService:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings | None = None) -> None:
        self.sessions = sessions
        self.settings = settings or Settings()
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
            clf = Classifier(name=cmd.name, network=network, gate=dict(gate.__dict__))
            s.add(clf)
            try:
                s.commit()
            except IntegrityError:  # the unique name: also right when two requests race
                raise Conflict(f"a classifier named {cmd.name!r} already exists") from None
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
