"""The artifact store: immutable version bundles and per-job staging files under one root folder.

    <root>/classifiers/<name>/j-<job>/  a model_core bundle (+ model.onnx, eval sets); never modified.
                                        Named by the job that trained it, not by its version number: the
                                        number is given when the row is committed, after the bundle is in
                                        place, so a worker that dies in between leaves a folder no later job
                                        can collide with, and the worker's start sweeps it (``orphans``).
                                        (Older stores have ``v<N>`` folders; the rows name them.)
    <root>/jobs/<job id>/train.npz      the job's training samples (preprocessed arrays, not uploads);
                                        deleted when the job ends if its retention is "discard"
    <root>/jobs/<job id>/eval.npz       the job's evaluation samples, stored as content by the job (older
                                        versions: copied into the bundle's eval.npz with every earlier task's)
    <root>/content/sha256/<hex>         content stored once and shared by the versions whose manifests reference
                                        it by sha256 (``put_content``, ``content_path``): a frozen backbone's
                                        graph, each task's evaluation samples, large strategy state tensors
                                        (docs/architecture/storage.md); never modified; deleted only by the
                                        lifecycle's collection once no kept version references it
                                        (``service.application.lifecycle``)

Every write goes to a temporary name, is fsynced, and is renamed into place. Callers see the small
``ArtifactStore`` protocol (here); ``service.storage.files.FileArtifactStore`` implements it on a path that
every host mounts (a shared volume), ``service.storage.s3.S3ArtifactStore`` on an S3-API object store with a
local cache. ``service.storage.open_store`` picks one.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Protocol

import numpy as np

Arrays = dict[str, np.ndarray]
BUNDLE_PREFIX = "j-"
CONTENT_DIR = "content/sha256"  # content referenced by sha256 from versions' manifests, stored once
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactStore(Protocol):
    def bundle_dir(self, classifier: str, job_id: str) -> Path:
        """Where job ``job_id`` writes its version's bundle (it must not exist yet)."""
        ...

    def bundle_folders(self) -> list[tuple[str, str | None]]:
        """Every bundle folder, finished or half-written: (store-relative name, the job id in its name or
        None for a legacy ``v<N>`` folder)."""
        ...

    def remove(self, relative: str) -> None:
        """Delete the artifact named ``relative`` (an orphan bundle)."""
        ...

    def publish(self, folder: Path) -> None:
        """Make the complete bundle just written to ``folder`` (a ``bundle_dir``) readable by every host,
        before any row names it. Refuses (FileExistsError) a bundle already published: versions are immutable."""
        ...

    def relative(self, path: Path) -> str:
        """The store-relative name recorded in the database for a bundle folder."""
        ...

    def path(self, relative: str) -> Path:
        """A local folder holding the artifact named ``relative``."""
        ...

    def put_content(self, data: bytes) -> str:
        """Store ``data`` once under its sha256 (a no-op when it is already there) and return the hex digest:
        what a version's manifest references (``model_core.checkpoint.Manifest.references``). Call it before
        publishing a bundle that references the content."""
        ...

    def content_path(self, sha256: str) -> Path:
        """A local file holding the content with this sha256, checked against it (FileNotFoundError when the
        store has none)."""
        ...

    def list_content(self) -> list[str]:
        """The sha256 of every piece of content in the store (what the lifecycle's collection weighs)."""
        ...

    def remove_content(self, sha256: str) -> None:
        """Delete the content with this sha256 (and its local copy); a no-op when it is not there."""
        ...

    def remove_classifier(self, classifier: str) -> None:
        """Delete every bundle folder of ``classifier`` (a deleted classifier), and this host's copies of them."""
        ...

    def bundle_bytes(self, relative: str) -> int:
        """The bytes of the bundle named ``relative`` in the store, its own files only (0 when it is gone)."""
        ...

    def read_manifest(self, relative: str) -> dict[str, object]:
        """The bundle's ``manifest.json``, parsed, read without fetching the rest of the bundle."""
        ...

    def write_arrays(self, job_id: str, name: str, arrays: Arrays) -> None: ...

    def read_arrays(self, job_id: str, name: str) -> Arrays | None: ...

    def delete_job(self, job_id: str) -> None:
        """Remove everything staged for a job (its training samples)."""
        ...


def references_of(manifest: dict[str, object]) -> dict[str, dict[str, object]]:
    """A manifest's ``references`` (role -> {"sha256", "size", ...}), every one checked to name a sha256; {} for a
    bundle written before references existed. Callers walk them by role generically, never by a role's name."""
    refs = manifest.get("references") or {}
    if not isinstance(refs, dict):
        raise ValueError("the manifest's references are not an object")
    out: dict[str, dict[str, object]] = {}
    for role, ref in refs.items():
        if not isinstance(ref, dict) or not isinstance(ref.get("sha256"), str) or not SHA256_HEX.fullmatch(ref["sha256"]):
            raise ValueError(f"the manifest's reference {role!r} names no sha256")
        out[str(role)] = ref
    return out


def content_relative(sha256: str) -> str:
    """The store-relative name of content addressed by ``sha256`` (refused unless 64 lowercase hex digits)."""
    if not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
    return f"{CONTENT_DIR}/{sha256}"


def bundle_job_id(folder: str) -> str | None:
    """The job id in a bundle folder's name, also for the temporary ``.<name>.tmp-<hex>`` folder that
    ``save_bundle`` renames into place; None for a legacy ``v<N>`` folder."""
    name = folder.lstrip(".").split(".tmp-", 1)[0]
    return name[len(BUNDLE_PREFIX):] if name.startswith(BUNDLE_PREFIX) else None


def arrays_to_bytes(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def bytes_to_arrays(data: bytes) -> Arrays:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
