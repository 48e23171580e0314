"""The versions service: listing versions and their audit, promotion and rollback.

A pointer move reads the pointer (``expected``) and the target's folder in one short session, builds and
warms the target's session with no database connection held (single flight, ``service.application.serving``), then
moves the pointer by compare-and-set in a second short transaction with its audit row. A move that lost a
race answers 409 naming the version active now, never a second active version.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from model_core.files import sha256_file, write_atomic
from model_core.graphs import compose
from service.application.serving import ServingService, version_ref
from service.application.views import audit_view, version_view
from service.domain.errors import Conflict, Gone, Invalid, NotFound
from service.inference.sessions import HEAD_FILE, MODEL_FILE, read_references
from service.persistence import registry
from service.persistence.models import Classifier, Version
from service.storage.base import ArtifactStore

MAX_REASON = 2000  # characters of a promotion's or rollback's reason (the API's schema says the same)


def audit_reason(reason: str | None) -> str | None:
    """A reason as the audit keeps it, whichever door it came in by (API, dashboard): trimmed, None when blank, at
    most MAX_REASON characters (Invalid beyond)."""
    text = (reason or "").strip()
    if len(text) > MAX_REASON:
        raise Invalid(f"reason has {len(text)} characters; at most {MAX_REASON}")
    return text or None


def refuse_pruned(name: str, v: Version) -> None:
    """Gone (410) for a version the retention policy pruned: its row stays, its files do not."""
    if v.status == "pruned":
        raise Gone(f"version {v.number} of {name!r} was pruned by the retention policy: its files are gone, so it "
                   "cannot be served, promoted or rolled back to (its report and lineage remain)")


def composed_path(store: ArtifactStore, head_sha256: str) -> Path:
    """Where this host caches the whole graph of a head on a shared backbone (``VersionService.onnx_path``): beside
    the store's content, under the head's sha256 (the file store's root, or the S3 store's local cache)."""
    base = getattr(store, "root", None) or getattr(store, "cache")  # noqa: B009
    return Path(base) / "content" / "composed" / f"{head_sha256}.onnx"


class VersionService:
    def __init__(self, sessions: sessionmaker[Session], store: ArtifactStore, serving: ServingService) -> None:
        self.sessions = sessions
        self.store = store
        self.serving = serving

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            return [version_view(v) for v in registry.list_versions(s, clf)]

    def get_version(self, name: str, number: int) -> dict[str, Any]:
        with self.sessions() as s:
            return version_view(registry.get_version(s, registry.get_classifier(s, name), number))

    def onnx_path(self, name: str, number: int) -> Path:
        """The version's whole graph as one file: its own ``model.onnx``, or, for a head on a shared backbone,
        the backbone and the head joined (made once per version, kept in this host's cache)."""
        with self.sessions() as s:
            v = registry.get_version(s, registry.get_classifier(s, name), number)
            refuse_pruned(name, v)
            folder = self.store.path(v.artifact)
        refs = read_references(folder)
        if "backbone" not in refs or not (folder / HEAD_FILE).exists():
            return folder / MODEL_FILE
        head = folder / HEAD_FILE
        out = composed_path(self.store, sha256_file(head))
        if not out.exists():
            import onnx

            backbone = onnx.load(str(self.store.content_path(refs["backbone"]["sha256"])))
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out, compose(backbone, onnx.load(str(head))))
        return out

    def audit(self, name: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            return [audit_view(a) for a in registry.list_audit(s, clf)]

    def lineage_matrix(self, name: str, number: int) -> dict[str, Any]:
        """Accuracy matrix along a version's lineage: rows are the versions from the first to ``number``
        (following parents), columns the tasks of ``number``; a cell is that version's gate accuracy."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            versions = {v.number: v for v in registry.list_versions(s, clf)}
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

    # --- pointer moves ----------------------------------------------------------------------------

    def promote(self, name: str, number: int, actor: str, force: bool, reason: str | None) -> dict[str, Any]:
        reason = audit_reason(reason)

        def check(v: Version) -> bool:
            refuse_pruned(name, v)
            if v.status == "rejected" and not (force and reason):
                raise Conflict(f"version {number} was rejected by the gate; promoting it needs force=true and a reason")
            return v.status == "rejected"  # forced

        return self._move(name, lambda s, clf: number, check, "promote", actor, reason)

    def rollback(self, name: str, to_version: int | None, actor: str, reason: str | None) -> dict[str, Any]:
        reason = audit_reason(reason)

        def target(s: Session, clf: Classifier) -> int:
            number = to_version if to_version is not None else registry.previous_active(s, clf)
            if number is None:
                raise Conflict(f"classifier {name!r} has no earlier active version to roll back to")
            return number

        def check(v: Version) -> bool:
            refuse_pruned(name, v)
            if v.status in ("rejected", "candidate"):
                raise Conflict(f"version {v.number} was never promoted ({v.status}); promote it instead")
            return False

        return self._move(name, target, check, "rollback", actor, reason)

    def _move(
        self,
        name: str,
        target: Callable[[Session, Classifier], int],
        check: Callable[[Version], bool],
        action: str,
        actor: str,
        reason: str | None,
    ) -> dict[str, Any]:
        """Read, build outside any session, then compare-and-set the pointer from what was read."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            expected = clf.active_version
            number = target(s, clf)
            v = registry.get_version(s, clf, number)
            check(v)
            if v.number == expected:
                raise Conflict(f"version {number} of {name!r} is already active")
            ref = version_ref(self.store, clf, v)
        served = self.serving.load(ref)  # no connection held while the session is built
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            v = registry.get_version(s, clf, number)
            forced = check(v)  # again: the status may have changed meanwhile
            entry = registry.set_active(s, clf, v, action, actor, reason, forced=forced, expected=expected)
            s.commit()
            view = version_view(v)
        self.serving.adopt(served, entry.id)  # served here before the answer says it is active
        return view
