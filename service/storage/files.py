"""The artifact store: immutable version bundles and per-job staging files under one root folder.

    <root>/classifiers/<name>/j-<job>/  a model_core bundle (+ model.onnx, eval sets); never modified.
                                        Named by the job that trained it, not by its version number: the
                                        number is given when the row is committed, after the bundle is in
                                        place, so a worker that dies in between leaves a folder no later job
                                        can collide with, and the worker's start sweeps it (``orphans``).
                                        (Older stores have ``v<N>`` folders; the rows name them.)
    <root>/jobs/<job id>/train.npz      the job's training samples (preprocessed arrays, not uploads);
                                        deleted when the job ends if its retention is "discard"
    <root>/jobs/<job id>/eval.npz       the job's evaluation samples, copied into the version's bundle

Every write goes to a temporary name, is fsynced, and is renamed into place. Callers see the small
``ArtifactStore`` protocol; ``FileArtifactStore`` implements it on a path that every host mounts (a shared
volume). An object store would implement the same six methods, staging bundles in a local cache.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

import numpy as np

Arrays = dict[str, np.ndarray]


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

    def write_arrays(self, job_id: str, name: str, arrays: Arrays) -> None: ...

    def read_arrays(self, job_id: str, name: str) -> Arrays | None: ...

    def delete_job(self, job_id: str) -> None:
        """Remove everything staged for a job (its training samples)."""
        ...


def open_store(root: Path, url: str | None = None) -> ArtifactStore:
    """The filesystem store at ``root``, or with ``url`` (``s3://bucket/prefix``, ENGRAM_ARTIFACTS_URL) the
    S3-API store, which then uses ``root`` as this host's cache of bundle folders."""
    if url:
        from service.storage.s3 import S3ArtifactStore  # boto3 is imported only when an S3 store is chosen

        return S3ArtifactStore.from_url(url, root)
    return FileArtifactStore(root)


class FileArtifactStore:
    """The artifact store on a filesystem path, shared by every host in multi-host deployments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "classifiers").mkdir(parents=True, exist_ok=True)
        (root / "jobs").mkdir(parents=True, exist_ok=True)

    def bundle_dir(self, classifier: str, job_id: str) -> Path:
        return self.root / "classifiers" / classifier / f"{BUNDLE_PREFIX}{job_id}"

    def bundle_folders(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for clf in sorted(p for p in (self.root / "classifiers").iterdir() if p.is_dir()):
            for folder in sorted(p for p in clf.iterdir() if p.is_dir()):
                out.append((self.relative(folder), bundle_job_id(folder.name)))
        return out

    def remove(self, relative: str) -> None:
        shutil.rmtree(self.path(relative), ignore_errors=True)

    def publish(self, folder: Path) -> None:
        """Nothing to do: ``save_bundle`` renamed the folder into place on the shared path, atomically."""

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def path(self, relative: str) -> Path:
        p = (self.root / relative).resolve()
        if self.root not in p.parents:
            raise ValueError("artifact path escapes the store")
        return p

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def write_arrays(self, job_id: str, name: str, arrays: Arrays) -> None:
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{name}.npz", arrays_to_bytes(arrays))

    def read_arrays(self, job_id: str, name: str) -> Arrays | None:
        path = self.job_dir(job_id) / f"{name}.npz"
        if not path.exists():
            return None
        return bytes_to_arrays(path.read_bytes())

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


BUNDLE_PREFIX = "j-"


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


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
