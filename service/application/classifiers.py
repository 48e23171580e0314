"""The classifiers service: create, list, read a classifier (and the readiness ping)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from model_core.config import BackboneSpec, InputSpec, NetworkSpec, default_backbone
from service.application.views import classifier_view
from service.domain.backbones import BackboneChecker
from service.domain.commands import NewClassifier
from service.domain.errors import Invalid
from service.domain.gate import GateConfig
from service.domain.unknowns import UnknownSettings
from service.inference.inputs import image_png
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
            spec.to_dict(), self.settings.weights_cache_path, self.settings.allow_downloads,
            self.settings.weights_files_path,
        )
        gate = GateConfig().merged(cmd.gate)
        with self.sessions() as s:
            unknowns = UnknownSettings.from_dict(cmd.unknowns).to_dict()
            clf = registry.add_classifier(s, cmd.name, network, dict(gate.__dict__), unknowns)  # Conflict: name taken
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

    # --- inputs captured as unknown (service.domain.unknowns) -----------------------------------------------

    def captured(self, name: str) -> dict[str, Any]:
        """The classifier's captured inputs, oldest first, each as a learn sample's input (``image_b64``, a PNG,
        ``vector``, or ``text``) with the version that flagged it and its novelty."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            settings = UnknownSettings.from_dict(clf.unknowns)
            registry.expire_captured(s, clf.id, settings.capture_max_age_hours)  # expired: deleted, never shown
            s.commit()
            rows = registry.list_captured(s, clf)
            kind = clf.network["input"]["kind"]
        items = []
        for row in rows:
            if kind == "text":  # kept as the message's UTF-8 text (service.application.serving)
                items.append({"id": row.id, "version": row.version, "novelty": row.novelty,
                              "created_at": row.created_at, "text": bytes(row.data).decode()})  # fmt: skip
                continue
            x = np.load(io.BytesIO(row.data), allow_pickle=False)
            value = {"image_b64": base64.b64encode(image_png(x)).decode()} if kind == "image" else {
                "vector": [float(v) for v in x.reshape(-1)]}  # fmt: skip
            items.append({"id": row.id, "version": row.version, "novelty": row.novelty, "created_at": row.created_at,
                          **value})  # fmt: skip
        return {"classifier": name, "capture": settings.capture, "items": items}

    def delete_captured(self, name: str, through_id: int) -> dict[str, Any]:
        """Delete the captured inputs up to ``through_id`` (once exported)."""
        with self.sessions() as s:
            deleted = registry.delete_captured(s, registry.get_classifier(s, name), through_id)
            s.commit()
        return {"classifier": name, "deleted": deleted}
