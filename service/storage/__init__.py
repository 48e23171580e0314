"""Artifact stores: version bundles and staged job arrays (``base``: the protocol and layout; ``files``: a
shared filesystem path; ``s3``: an S3-API object store with a local cache)."""

from __future__ import annotations

from pathlib import Path

from service.storage.base import ArtifactStore
from service.storage.files import FileArtifactStore

__all__ = ["open_store"]


def open_store(root: Path, url: str | None = None) -> ArtifactStore:
    """The filesystem store at ``root``, or with ``url`` (``s3://bucket/prefix``, ENGRAM_ARTIFACTS_URL) the
    S3-API store, which then uses ``root`` as this host's cache of bundle folders."""
    if url:
        from service.storage.s3 import S3ArtifactStore  # boto3 is imported only when an S3 store is chosen

        return S3ArtifactStore.from_url(url, root)
    return FileArtifactStore(root)
