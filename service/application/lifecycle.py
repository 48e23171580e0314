"""The lifecycle service: retention policies, pruning, deleting a classifier, collecting content, store sizes.

Every version is its own bundle folder plus the content its manifest references by sha256 (``references``: role ->
{sha256, size, ...}, stored once under ``content/sha256/<hex>``). This module walks those references by role
generically, never by a role's name, so whatever a version references (a frozen backbone, evaluation samples, a
strategy's large state) is kept exactly as long as one kept version of any classifier references it.

Order of work, so that a crash never leaves a row naming missing files:

- a prune marks versions ``pruned`` (with an audit entry each, and one lifecycle event) and commits, *then*
  deletes their folders; a rollback that raced it is refused by the pointer's compare-and-set, which reads the
  mark under the classifier's row lock (``registry.set_active``);
- a deletion deletes the classifier's rows and commits, *then* its store folders, staged arrays and caches;
- content is collected last, and only while no job of the deployment is live: a job puts its content before the
  row that references it exists, so while one runs, content no row references may be about to be.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.application.metrics import Metrics
from service.application.serving import ServingService
from service.application.versions import composed_path
from service.domain.errors import Conflict, Invalid
from service.domain.retention import PointerMove, RetentionPolicy, VersionFacts, plan
from service.inference.sessions import HEAD_FILE
from service.persistence import registry
from service.persistence.models import Classifier, utcnow
from service.settings import Settings
from service.storage.base import ArtifactStore, references_of

log = logging.getLogger("engram.lifecycle")


class LifecycleService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: ArtifactStore,
        serving: ServingService,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.serving = serving
        self.metrics = metrics
        self.default = RetentionPolicy(settings.retention_keep_ancestors, settings.retention_keep_days)
        self._bundles: dict[str, tuple[int, dict[str, dict[str, Any]], str | None]] = {}  # immutable: cached
        self._lock = threading.Lock()
        self._sized: set[str] = set()  # classifiers with a size gauge, removed when they go

    # --- policy -------------------------------------------------------------------------------------

    def policy_of(self, clf: Classifier) -> RetentionPolicy:
        return RetentionPolicy.from_dict(clf.retention, self.default)

    def retention(self, name: str) -> dict[str, Any]:
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            return self._policy_view(clf)

    def set_retention(self, name: str, policy: dict[str, Any] | None) -> dict[str, Any]:
        """Give the classifier its own policy (fields left out take the deployment's default), or None: the default."""
        try:
            stored = None if policy is None else RetentionPolicy.from_dict(policy, self.default).to_dict()
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            clf.retention = stored
            s.commit()
            return self._policy_view(clf)

    def _policy_view(self, clf: Classifier) -> dict[str, Any]:
        return {"classifier": clf.name, **self.policy_of(clf).to_dict(), "own": clf.retention is not None}

    # --- prune --------------------------------------------------------------------------------------

    def prune(self, name: str, actor: str, dry_run: bool) -> dict[str, Any]:
        """Apply the classifier's policy: mark and delete the versions it does not keep, then collect the content
        no kept version references. A dry run answers the same plan and changes nothing."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            if not dry_run:
                registry.lock_classifier(s, clf)  # no pointer move interleaves (registry.set_active)
            policy = self.policy_of(clf)
            versions = registry.list_versions(s, clf)
            moves = [PointerMove(a.from_version, a.to_version, a.at) for a in registry.pointer_moves(s, clf)]
            parents = [j.parent for j in registry.live_jobs(s, clf) if j.parent is not None]
            facts = [VersionFacts(v.number, v.status, v.parent, v.created_at) for v in versions]
            decisions = plan(facts, clf.active_version, moves, parents, policy, utcnow())
            by_number = {v.number: v for v in versions}
            pruned: list[dict[str, Any]] = []
            kept: list[dict[str, Any]] = []
            for number, why in decisions.items():
                v = by_number[number]
                if why is not None:
                    kept.append({"version": number, "status": v.status, "reason": why})
                    continue
                size = self._bundle(v.artifact)[0]
                reason = (f"retention policy (keep {policy.keep_ancestors} ancestors, {policy.keep_days:g} days): "
                          f"{v.status}, created {v.created_at:%Y-%m-%d}")  # fmt: skip
                if dry_run or registry.mark_pruned(s, clf, number, v.status, actor, reason):
                    pruned.append({"version": number, "status": v.status, "bytes": size, "artifact": v.artifact})
            if pruned and not dry_run:
                registry.add_event(s, name, "prune", actor, {"versions": [p["version"] for p in pruned],
                                                            "bytes": sum(p["bytes"] for p in pruned),
                                                            "policy": policy.to_dict()})  # fmt: skip
                s.commit()
        if not dry_run:
            for p in pruned:
                self._remove_bundle(p["artifact"])
                self.serving.forget_version(name, p["version"])
        collected = self.collect_content(dry_run=dry_run, leaving=[p["artifact"] for p in pruned])
        if not dry_run:
            self.refresh_usage()
        return {"classifier": name, "dry_run": dry_run, "policy": policy.to_dict(),
                "pruned": [{k: p[k] for k in ("version", "status", "bytes")} for p in pruned], "kept": kept,
                "content": collected,
                "bytes_freed": sum(p["bytes"] for p in pruned) + collected["bytes"]}  # fmt: skip

    # --- delete -------------------------------------------------------------------------------------

    def delete(self, name: str, actor: str) -> dict[str, Any]:
        """Delete the classifier: its rows (refused while a job of it is live), then its bundles, staged arrays,
        cached sessions and composed graphs; its content only where no other classifier's kept version references it."""
        with self.sessions() as s:
            clf = registry.get_classifier(s, name)
            registry.lock_classifier(s, clf)
            versions = [(v.number, v.artifact, v.status) for v in registry.list_versions(s, clf)]
            live = [artifact for _, artifact, status in versions if status != "pruned"]
            size = sum(self._bundle(a)[0] for a in live)
            heads = [h for h in (self._bundle(a)[2] for a in live) if h]
            job_ids = registry.delete_classifier(s, clf)  # Conflict while a job of it is live
            registry.add_event(s, name, "delete", actor, {"versions": len(versions), "jobs": len(job_ids),
                                                           "bytes": size})  # fmt: skip
            try:
                s.commit()
            except IntegrityError:  # a learn request inserted a job between the check and the delete
                raise Conflict(f"a job of {name!r} was submitted while it was being deleted; retry") from None
        self.store.remove_classifier(name)
        for job_id in job_ids:
            self.store.delete_job(job_id)
        for head in heads:
            composed_path(self.store, head).unlink(missing_ok=True)
        self.serving.forget(name)
        for _, artifact, _ in versions:
            self._bundles.pop(artifact, None)
        collected = self.collect_content(leaving=[a for _, a, _ in versions])
        self.refresh_usage()
        log.info("deleted classifier %s (%d versions, %d jobs) for %s", name, len(versions), len(job_ids), actor)
        return {"classifier": name, "versions": len(versions), "jobs": len(job_ids), "content": collected,
                "bytes_freed": size + collected["bytes"]}  # fmt: skip

    # --- content ------------------------------------------------------------------------------------

    def collect_content(self, dry_run: bool = False, leaving: Iterable[str] = ()) -> dict[str, Any]:
        """Delete the content no kept version of any classifier references (``leaving``: bundles just pruned or
        deleted, whose references tell the sizes freed). Deferred while any job is live, or when a kept
        version's manifest cannot be read: then nothing is deleted, and a later prune collects it."""
        leaving = list(leaving)
        sizes: dict[str, int] = {}
        for artifact in leaving:
            for ref in self._bundle(artifact)[1].values():
                sizes[str(ref["sha256"])] = int(ref.get("size") or 0)
        with self.sessions() as s:
            if registry.live_jobs(s):
                return {"removed": [], "bytes": 0, "deferred": "a job is running: content is collected by a later "
                        "prune once none is"}  # fmt: skip
            stored = set(self.store.list_content())
            kept_rows = [v.artifact for _, v in registry.kept_versions(s) if v.artifact not in leaving]  # dry run
        referenced: set[str] = set()
        try:
            for artifact in kept_rows:
                referenced.update(str(r["sha256"]) for r in self._bundle(artifact, strict=True)[1].values())
        except (OSError, ValueError) as exc:
            return {"removed": [], "bytes": 0, "deferred": f"a kept version's manifest cannot be read ({exc})"}
        unused = sorted(stored - referenced)
        if not dry_run:
            with self.sessions() as s:
                if registry.live_jobs(s):  # again, just before deleting
                    return {"removed": [], "bytes": 0, "deferred": "a job started: content is collected later"}
            for sha in unused:
                self.store.remove_content(sha)
        return {"removed": unused, "bytes": sum(sizes.get(h, 0) for h in unused), "deferred": None}

    # --- sizes --------------------------------------------------------------------------------------

    def usage(self) -> dict[str, dict[str, int]]:
        """Store bytes per classifier: ``versions`` (its kept bundles' own files), ``content`` (the content they
        reference, each once; content shared with other classifiers counts in each) and ``total``."""
        with self.sessions() as s:
            rows = registry.kept_versions(s)
            names = [c.name for c in registry.list_classifiers(s)]
        out = {n: {"versions": 0, "content": 0, "total": 0, "count": 0} for n in names}
        content: dict[str, dict[str, int]] = {n: {} for n in names}
        for name, v in rows:
            try:
                size, refs, _ = self._bundle(v.artifact, strict=True)
            except (OSError, ValueError):
                continue  # not readable right now (being written, or a store outage): counted at the next refresh
            out[name]["versions"] += size
            out[name]["count"] += 1
            for ref in refs.values():
                content[name][str(ref["sha256"])] = int(ref.get("size") or 0)
        for name, row in out.items():
            row["content"] = sum(content[name].values())
            row["total"] = row["versions"] + row["content"]
        return out

    def refresh_usage(self) -> dict[str, dict[str, int]]:
        """Set ``engram_store_bytes`` from ``usage`` (the background loop calls it every minute)."""
        usage = self.usage()
        with self._lock:
            for name in self._sized - set(usage):
                for part in ("versions", "content"):
                    with contextlib.suppress(KeyError):
                        self.metrics.store_bytes.remove(name, part)
            for name, row in usage.items():
                self.metrics.store_bytes.labels(name, "versions").set(row["versions"])
                self.metrics.store_bytes.labels(name, "content").set(row["content"])
            self._sized = set(usage)
        return usage

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [{"classifier": e.classifier, "action": e.action, "actor": e.actor, "detail": e.detail, "at": e.at}
                    for e in registry.list_events(s, name)]  # fmt: skip

    # --- helpers ------------------------------------------------------------------------------------

    def _bundle(self, artifact: str, strict: bool = False) -> tuple[int, dict[str, dict[str, Any]], str | None]:
        """A bundle's own bytes, its references and its head graph's sha256 (bundles never change: cached). A bundle
        that cannot be read is (0, {}, None), or raises with ``strict``."""
        cached = self._bundles.get(artifact)
        if cached is not None:
            return cached
        try:
            manifest = self.store.read_manifest(artifact)
            refs = references_of(manifest)
            files = manifest.get("files") or {}
            head = files.get(HEAD_FILE) if isinstance(files, dict) else None
            info = (self.store.bundle_bytes(artifact), refs, head if isinstance(head, str) else None)
        except (OSError, ValueError):
            if strict:
                raise
            return 0, {}, None
        self._bundles[artifact] = info
        return info

    def _remove_bundle(self, artifact: str) -> None:
        head = self._bundle(artifact)[2]
        self.store.remove(artifact)
        if head:
            composed_path(self.store, head).unlink(missing_ok=True)
        self._bundles.pop(artifact, None)

