"""The artifact store: immutable version bundles and per-job staging files under one root folder.

    <root>/classifiers/<name>/v<N>/     a model_core bundle (+ model.onnx, eval sets); never modified
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
    def version_dir(self, classifier: str, number: int) -> Path:
        """Where a new version's bundle is written (it must not exist yet)."""
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


def open_store(root: Path) -> ArtifactStore:
    return FileArtifactStore(root)


class FileArtifactStore:
    """The artifact store on a filesystem path, shared by every host in multi-host deployments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "classifiers").mkdir(parents=True, exist_ok=True)
        (root / "jobs").mkdir(parents=True, exist_ok=True)

    def version_dir(self, classifier: str, number: int) -> Path:
        return self.root / "classifiers" / classifier / f"v{number}"

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
