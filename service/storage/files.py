"""The artifact store on a filesystem path that every host mounts (the default; see ``service.storage.base``)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from model_core.files import sha256_file, write_atomic
from service.storage.base import (
    BUNDLE_PREFIX,
    CONTENT_DIR,
    SHA256_HEX,
    Arrays,
    arrays_to_bytes,
    bundle_job_id,
    bytes_to_arrays,
    content_relative,
)

MANIFEST = "manifest.json"


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

    def put_content(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / content_relative(digest)
        if not path.exists():  # same name, same bytes: a concurrent writer's rename is as good as ours
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
        return digest

    def content_path(self, sha256: str) -> Path:
        path = self.root / content_relative(sha256)
        if not path.is_file():
            raise FileNotFoundError(f"content {sha256} is not in the artifact store at {self.root}")
        return path

    def verify_content(self, sha256: str) -> bool:
        """Whether the stored content still hashes to its name (a check for operators and tests)."""
        return sha256_file(self.content_path(sha256)) == sha256

    def list_content(self) -> list[str]:
        folder = self.root / CONTENT_DIR
        return sorted(p.name for p in folder.iterdir() if p.is_file() and SHA256_HEX.fullmatch(p.name)) if folder.is_dir() else []

    def remove_content(self, sha256: str) -> None:
        (self.root / content_relative(sha256)).unlink(missing_ok=True)

    def remove_classifier(self, classifier: str) -> None:
        folder = self.path(f"classifiers/{classifier}")
        if folder.parent != self.root / "classifiers":
            raise ValueError(f"not a classifier's folder: {classifier!r}")
        shutil.rmtree(folder, ignore_errors=True)

    def bundle_bytes(self, relative: str) -> int:
        folder = self.path(relative)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0

    def read_manifest(self, relative: str) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.path(relative) / MANIFEST).read_text())
        return data

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
