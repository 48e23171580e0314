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
``ArtifactStore`` protocol (here); ``service.storage.files.FileArtifactStore`` implements it on a path that
every host mounts (a shared volume), ``service.storage.s3.S3ArtifactStore`` on an S3-API object store with a
local cache. ``service.storage.open_store`` picks one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol

import numpy as np

Arrays = dict[str, np.ndarray]
BUNDLE_PREFIX = "j-"


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
