"""Archives: a classifier (``engram export`` / ``engram import``) or the whole deployment (``engram backup`` /
``engram restore``) as one tar file, restored on another deployment whatever its database or store.

    classifiers/<name>/classifier.json         the classifier (network, gate settings, novelty settings, retention
                                               policy, active version), every version row (pruned ones too, as
                                               rows: their lineage and reports), and its audit log
    classifiers/<name>/bundles/<folder>/<file> every kept version's bundle folder, file for file
    content/<sha256>                           every piece of content a kept version's manifest references
                                               (``references``: role -> {sha256, size, ...}), once
    INDEX.json                                 written last: the format, what the archive holds, and the size and
                                               sha256 of every member above

An export reads the rows in one snapshot, checks every bundle file against its manifest's sha256 and every piece
of content against its name, writes to a temporary file next to FILE, fsyncs it and renames it into place: a FILE
exists only once whole. An import reads the whole archive into a staging folder first and refuses it (nothing
restored) unless the last member is an INDEX.json that lists exactly the members read, with their sizes and
sha256, and every bundle and reference checks against its manifest; only then are bundles written to the store
(published), content put, and the rows inserted in one transaction (the bundles written are removed again if it
fails). A half-written archive (an export killed midway leaves ``.FILE.partial-*``, or a copy cut short) therefore
restores nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.domain.errors import Conflict, NotFound
from service.persistence import registry
from service.persistence.models import AuditEntry, Classifier, LifecycleEvent, Version
from service.storage.base import SHA256_HEX, ArtifactStore, references_of

FORMAT = "engram-archive/1"
INDEX = "INDEX.json"
MANIFEST = "manifest.json"
CHUNK = 1 << 20
SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # a classifier, bundle folder or file name in an archive


class ArchiveError(Exception):
    """The archive is refused: truncated, corrupt, not an engram archive, or it does not fit this deployment."""


# --- export -------------------------------------------------------------------------------------------


def export_archive(
    sessions: sessionmaker[Session], store: ArtifactStore, path: Path, names: list[str] | None
) -> dict[str, Any]:
    """Write the classifiers ``names`` (None: every one, a backup) with their kept versions, referenced content and
    audit to ``path``, atomically. Raises NotFound for an unknown name, ArchiveError where the store does not hold
    what a row names (a version pruned or deleted meanwhile: run it again)."""
    with sessions() as s:
        _snapshot(s)
        clfs = [registry.get_classifier(s, n) for n in names] if names else registry.list_classifiers(s)
        records = [_record(s, clf) for clf in clfs]
        events = [_event_record(e) for e in reversed(registry.list_events(s, limit=100_000))] if names is None else []
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    members: dict[str, dict[str, Any]] = {}
    content: dict[str, int] = {}
    try:
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for rec in records:
                    name = rec["name"]
                    for v in rec["versions"]:
                        if v["bundle"] is None:
                            continue
                        folder = _bundle_folder(store, v["artifact"])
                        manifest = json.loads((folder / MANIFEST).read_text())
                        for file, want in sorted(_bundle_files(manifest, folder).items()):
                            _add_file(tar, members, f"classifiers/{name}/bundles/{v['bundle']}/{file}", folder / file,
                                      want)  # fmt: skip
                        _add_file(tar, members, f"classifiers/{name}/bundles/{v['bundle']}/{MANIFEST}",
                                  folder / MANIFEST, None)  # fmt: skip
                        for ref in references_of(manifest).values():
                            sha = str(ref["sha256"])
                            if sha not in content:
                                try:
                                    local = store.content_path(sha)
                                except FileNotFoundError:
                                    raise ArchiveError(f"version {v['number']} of {name!r} references content {sha} "
                                                       "that the store does not hold") from None  # fmt: skip
                                content[sha] = _add_file(tar, members, f"content/{sha}", local, sha)
                    _add_bytes(tar, members, f"classifiers/{name}/classifier.json", _dumps(rec))
                index = {"format": FORMAT, "kind": "classifier" if names else "backup", "created_at": time.time(),
                         "classifiers": [r["name"] for r in records], "events": events, "members": members}  # fmt: skip
                _add_bytes(tar, {}, INDEX, _dumps(index))  # last: an archive without it is half-written
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"file": str(path), "bytes": path.stat().st_size, "classifiers": [r["name"] for r in records],
            "versions": sum(1 for r in records for v in r["versions"] if v["bundle"]), "content": len(content)}  # fmt: skip


def _snapshot(s: Session) -> None:
    """Make the session's reads one consistent snapshot (PostgreSQL: repeatable read; SQLite: a read transaction)."""
    backend = s.get_bind().dialect.name
    if backend == "postgresql":
        s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    elif backend == "sqlite":
        s.connection().exec_driver_sql("BEGIN")


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _record(s: Session, clf: Classifier) -> dict[str, Any]:
    versions = []
    for v in registry.list_versions(s, clf):
        kept = v.status != "pruned"
        versions.append({"number": v.number, "status": v.status, "parent": v.parent, "strategy": v.strategy,
                         "params": v.params, "labels": v.labels, "tasks": v.tasks, "report": v.report,
                         "job_id": v.job_id, "created_at": _iso(v.created_at), "artifact": v.artifact,
                         "bundle": v.artifact.rstrip("/").rsplit("/", 1)[-1] if kept else None})  # fmt: skip
    audit = [{"action": a.action, "actor": a.actor, "from_version": a.from_version, "to_version": a.to_version,
              "reason": a.reason, "forced": a.forced, "at": _iso(a.at)} for a in registry.list_audit(s, clf)]  # fmt: skip
    return {"name": clf.name, "network": clf.network, "gate": clf.gate, "unknowns": clf.unknowns,
            "retention": clf.retention, "active_version": clf.active_version, "created_at": _iso(clf.created_at),
            "versions": versions, "audit": audit}  # fmt: skip


def _event_record(e: LifecycleEvent) -> dict[str, Any]:
    return {"classifier": e.classifier, "action": e.action, "actor": e.actor, "detail": e.detail, "at": _iso(e.at)}


def _bundle_folder(store: ArtifactStore, artifact: str) -> Path:
    try:
        folder = store.path(artifact)
    except FileNotFoundError:
        folder = None
    if folder is None or not (folder / MANIFEST).is_file():
        raise ArchiveError(f"the store has no bundle {artifact} (pruned or deleted while this ran? run it again)")
    return folder


def _bundle_files(manifest: dict[str, Any], folder: Path) -> dict[str, str | None]:
    """The bundle's files but the manifest (name -> sha256), each name checked to be a plain file name. A bundle
    written before manifests listed their files: every file of its folder, with no sha256 to check (the archive's
    index still carries one for each)."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return {p.name: None for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    for name, sha in files.items():
        if not SAFE.fullmatch(str(name)) or name == MANIFEST or not SHA256_HEX.fullmatch(str(sha)):
            raise ArchiveError(f"a bundle's manifest lists a file it may not: {str(name)[:80]!r}")
    return {str(k): str(v) for k, v in files.items()}


def _dumps(data: Any) -> bytes:
    return json.dumps(data, indent=1, sort_keys=True).encode()


def _add_bytes(tar: tarfile.TarFile, members: dict[str, dict[str, Any]], name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))
    members[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _add_file(tar: tarfile.TarFile, members: dict[str, dict[str, Any]], name: str, path: Path, want: str | None) -> int:
    """Add ``path`` as ``name``, refusing it (ArchiveError) unless it hashes to ``want`` (when given)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
        if want is not None and digest.hexdigest() != want:
            raise ArchiveError(f"{path} does not match its sha256 {want}: the store's copy is damaged")
        f.seek(0)
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = path.stat().st_size, int(time.time()), 0o644
        tar.addfile(info, f)
    members[name] = {"size": info.size, "sha256": digest.hexdigest()}
    return info.size


# --- import -------------------------------------------------------------------------------------------


def import_archive(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    path: Path,
    actor: str,
    action: str = "import",
    rename: str | None = None,
) -> dict[str, Any]:
    """Check the whole archive, then restore what it holds (every classifier; ``rename``: the one classifier of an
    export under another name). Refuses (ArchiveError, Conflict) without restoring anything."""
    with tempfile.TemporaryDirectory(prefix=".engram-import-", dir=Path(path).resolve().parent) as tmp:
        staging = Path(tmp)
        index = _read_archive(Path(path), staging)
        records = [_check_classifier(staging, n) for n in index["classifiers"]]
        if rename is not None:
            if len(records) != 1:
                raise ArchiveError(f"--as renames the one classifier of an export; this archive holds {len(records)}")
            records[0]["name"] = rename
        return _restore(sessions, store, staging, index, records, actor, action)


def _safe_member(name: str) -> bool:
    parts = name.split("/")
    return all(SAFE.fullmatch(p) for p in parts) and len(parts) <= 5


def _read_archive(path: Path, staging: Path) -> dict[str, Any]:
    """Every member into ``staging`` with its size and sha256; then INDEX.json, which must come last and list
    exactly those members."""
    if not path.is_file():
        raise ArchiveError(f"{path} is not a file")
    seen: dict[str, dict[str, Any]] = {}
    raw_index: bytes | None = None
    try:
        with tarfile.open(path, mode="r|") as tar:
            for m in tar:
                if raw_index is not None:
                    raise ArchiveError(f"{m.name!r} comes after {INDEX}, which an engram archive writes last")
                if not m.isfile() or not _safe_member(m.name) or m.name in seen:
                    raise ArchiveError(f"the archive holds a member an engram archive does not: {m.name[:120]!r}")
                src = tar.extractfile(m)
                assert src is not None  # a regular file
                if m.name == INDEX:
                    raw_index = src.read()
                    continue
                target = staging / m.name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                with open(target, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                seen[m.name] = {"size": size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{path} is truncated or not an engram archive ({exc}); nothing was restored") from None
    if raw_index is None:
        raise ArchiveError(f"{path} has no {INDEX}: it is half-written (an export that did not finish) or not an "
                           "engram archive; nothing was restored")  # fmt: skip
    try:
        index = json.loads(raw_index)
    except ValueError:
        raise ArchiveError(f"{INDEX} is not JSON; nothing was restored") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise ArchiveError(f"{path} is not an {FORMAT} archive; nothing was restored")
    listed = index.get("members") or {}
    for name in sorted(set(listed) | set(seen)):
        if listed.get(name) != seen.get(name):
            what = "is missing" if name not in seen else "is not listed" if name not in listed else "does not match"
            raise ArchiveError(f"member {name!r} {what} in {INDEX} (size and sha256): the archive is damaged; "
                               "nothing was restored")  # fmt: skip
    names = index.get("classifiers")
    if not isinstance(names, list) or not all(isinstance(n, str) and SAFE.fullmatch(n) for n in names):
        raise ArchiveError(f"{INDEX} names no classifiers it may")
    return index


def _check_classifier(staging: Path, name: str) -> dict[str, Any]:
    """The classifier's record, with every kept version's bundle checked against its manifest and every reference
    against the content in the archive."""
    try:
        rec: dict[str, Any] = json.loads((staging / "classifiers" / name / "classifier.json").read_text())
    except (OSError, ValueError):
        raise ArchiveError(f"the archive has no readable record of classifier {name!r}") from None
    for v in rec.get("versions", []):
        if v.get("bundle") is None:
            continue
        if not SAFE.fullmatch(str(v["bundle"])):
            raise ArchiveError(f"version {v.get('number')} of {name!r} names a bundle folder it may not")
        folder = staging / "classifiers" / name / "bundles" / v["bundle"]
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            raise ArchiveError(f"version {v['number']} of {name!r} has no readable manifest") from None
        files = _bundle_files(manifest, folder)
        have = {p.name for p in folder.iterdir()} - {MANIFEST}
        if have != set(files):
            raise ArchiveError(f"version {v['number']} of {name!r}: the bundle's files are not its manifest's")
        for file, sha in files.items():
            if sha is not None and _sha256(folder / file) != sha:
                raise ArchiveError(f"version {v['number']} of {name!r}: {file} does not match its manifest's sha256")
        try:
            refs = references_of(manifest)
        except ValueError as exc:
            raise ArchiveError(f"version {v['number']} of {name!r}: {exc}") from None
        for role, ref in refs.items():
            blob = staging / "content" / str(ref["sha256"])
            if not blob.is_file() or _sha256(blob) != ref["sha256"]:
                raise ArchiveError(f"version {v['number']} of {name!r} references {role} content {ref['sha256']} "
                                   "that the archive does not hold intact")  # fmt: skip
    return rec


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _when(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def _restore(
    sessions: sessionmaker[Session],
    store: ArtifactStore,
    staging: Path,
    index: dict[str, Any],
    records: list[dict[str, Any]],
    actor: str,
    action: str,
) -> dict[str, Any]:
    with sessions() as s:
        for rec in records:
            try:
                registry.get_classifier(s, rec["name"])
            except NotFound:
                continue
            raise Conflict(f"a classifier named {rec['name']!r} already exists here; delete it first, or import "
                           "under another name (--as NAME); nothing was restored")  # fmt: skip
    written: list[str] = []
    try:
        artifacts: dict[tuple[str, int], str] = {}
        for rec in records:
            for v in rec["versions"]:
                if v.get("bundle") is None:
                    continue
                src = staging / "classifiers" / _source_name(index, rec) / "bundles" / v["bundle"]
                dest = store.bundle_dir(rec["name"], "x").parent / v["bundle"]
                if dest.exists():
                    raise Conflict(f"the store already has a bundle folder {store.relative(dest)}; nothing was restored")
                _copy_folder(src, dest)
                written.append(store.relative(dest))
                store.publish(dest)
                artifacts[(rec["name"], v["number"])] = store.relative(dest)
        for blob in sorted((staging / "content").iterdir()) if (staging / "content").is_dir() else []:
            if store.put_content(blob.read_bytes()) != blob.name:
                raise ArchiveError(f"content {blob.name} changed while it was restored")
        with sessions() as s:
            if action == "restore":  # the backed-up deployment's lifecycle log, before this restore's own events
                for e in index.get("events", []):
                    s.add(LifecycleEvent(classifier=e["classifier"], action=e["action"], actor=e["actor"],
                                         detail=e["detail"], at=_when(e["at"])))  # fmt: skip
                s.flush()
            for rec in records:
                _insert(s, rec, artifacts, actor, action, index)
            s.commit()
    except BaseException:
        for relative in written:
            store.remove(relative)
        raise
    return {"classifiers": [r["name"] for r in records], "versions": len(artifacts),
            "content": len(list((staging / "content").iterdir())) if (staging / "content").is_dir() else 0}  # fmt: skip


def _source_name(index: dict[str, Any], rec: dict[str, Any]) -> str:
    """The classifier's name inside the archive (``rec['name']`` may be the --as name)."""
    names: list[str] = index["classifiers"]
    return rec["name"] if rec["name"] in names else names[0]


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy a bundle folder into the store's local place for it: each file fsynced, then renamed into place whole."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        for f in sorted(src.iterdir()):
            shutil.copyfile(f, tmp / f.name)
            with open(tmp / f.name, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _insert(s: Session, rec: dict[str, Any], artifacts: dict[tuple[str, int], str], actor: str, action: str,
            index: dict[str, Any]) -> None:  # fmt: skip
    name = rec["name"]
    clf = registry.add_classifier(s, name, rec["network"], rec["gate"], rec.get("unknowns") or {})
    clf.retention = rec.get("retention")
    clf.created_at = _when(rec.get("created_at")) or clf.created_at
    for v in rec["versions"]:
        s.add(Version(classifier_id=clf.id, number=v["number"], status=v["status"], parent=v["parent"],
                      strategy=v["strategy"], params=v["params"], labels=v["labels"], tasks=v["tasks"],
                      report=v["report"], artifact=artifacts.get((name, v["number"]), v["artifact"]),
                      job_id=v["job_id"], created_at=_when(v["created_at"])))  # fmt: skip
    for a in rec["audit"]:
        s.add(AuditEntry(classifier_id=clf.id, action=a["action"], actor=a["actor"], from_version=a["from_version"],
                         to_version=a["to_version"], reason=a["reason"], forced=a["forced"], at=_when(a["at"])))  # fmt: skip
    clf.active_version = rec["active_version"]
    s.flush()
    registry.add_event(s, name, action, actor, {"from": _source_name(index, rec), "versions": len(rec["versions"]),
                                                "archive_created_at": index.get("created_at")})  # fmt: skip
