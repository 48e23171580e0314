"""The artifact store on an S3-API object store (AWS S3, MinIO, Ceph, moto...), with a local cache.

Selected by ``ENGRAM_ARTIFACTS_URL=s3://bucket/prefix``. Keys mirror the filesystem store's layout:

    <prefix>/classifiers/<name>/j-<job>/<file>       a bundle's files (manifest.json, weights, model.onnx...)
    <prefix>/classifiers/<name>/j-<job>/.complete    written last: the list of files, sizes and sha256
    <prefix>/jobs/<job id>/<name>.npz                staged training and evaluation arrays (one PUT each)
    <prefix>/content/sha256/<hex>                    content referenced by sha256 from versions' manifests
                                                     (a frozen backbone's graph), stored once; cached locally
                                                     under the same name once downloaded and checked

The worker and ONNX Runtime read bundles from local folders, so ``ENGRAM_ARTIFACTS_DIR`` (default
``<data dir>/artifacts``) becomes this host's cache: the worker writes a bundle there with
``save_bundle`` and ``publish`` uploads it; any host's ``path()`` downloads a published bundle once into
a temporary folder, checks every file against ``.complete``, and renames it into place. Bundles never
change once published, so the cache needs no invalidation.

Atomicity and immutability: an object PUT is atomic, and a bundle counts as published only once its
``.complete`` marker exists, written after every file (with ``If-None-Match: *``, so two publishers of
one bundle cannot both win). A publisher that dies midway leaves files without a marker: readers refuse
them (FileNotFoundError), ``bundle_folders`` lists them for the worker's orphan sweep, and a new attempt
overwrites them. Publishing over an existing marker raises FileExistsError.

Credentials, region and endpoint come from boto3's usual sources (``AWS_ACCESS_KEY_ID``,
``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for a non-AWS endpoint, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.exceptions import ClientError

from model_core.files import sha256_file
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

MARKER = ".complete"
_MISSING = ("404", "NoSuchKey", "NotFound")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


class S3ArtifactStore:
    """``service.storage.base.ArtifactStore`` on ``bucket``/``prefix``, caching bundle folders under ``cache``."""

    def __init__(self, bucket: str, prefix: str, cache: Path, client: Any = None) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cache = cache.resolve()
        (self.cache / "classifiers").mkdir(parents=True, exist_ok=True)
        if client is None:
            session = boto3.session.Session()
            client = session.client("s3", region_name=session.region_name or "us-east-1")
        self.s3 = client  # boto3 clients are thread-safe; the API's threads share this one

    @classmethod
    def from_url(cls, url: str, cache: Path) -> S3ArtifactStore:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"ENGRAM_ARTIFACTS_URL must look like s3://bucket/prefix, not {url!r}")
        return cls(parsed.netloc, parsed.path, cache)

    # --- names --------------------------------------------------------------------------------------

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _check(self, relative: str) -> str:
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError("artifact path escapes the store")
        return relative

    def bundle_dir(self, classifier: str, job_id: str) -> Path:
        return self.cache / "classifiers" / classifier / f"{BUNDLE_PREFIX}{job_id}"

    def relative(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.cache))

    # --- bundles ------------------------------------------------------------------------------------

    def publish(self, folder: Path) -> None:
        relative = self._check(self.relative(folder))
        if self._marker(relative) is not None:
            raise FileExistsError(f"bundle {relative} is already published; versions are immutable")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        listing = {}
        for f in files:
            name = f.relative_to(folder).as_posix()
            if name == MARKER:
                raise ValueError(f"a bundle may not hold a file named {MARKER}")
            with open(f, "rb") as body:
                self.s3.put_object(Bucket=self.bucket, Key=self._key(f"{relative}/{name}"), Body=body)
            listing[name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
        marker = json.dumps({"files": listing}, sort_keys=True).encode()
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(f"{relative}/{MARKER}"), Body=marker, IfNoneMatch="*")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in (
                "PreconditionFailed",
                "412",
                "ConditionalRequestConflict",
            ):
                raise FileExistsError(
                    f"bundle {relative} was published by another writer; versions are immutable"
                ) from None
            raise

    def _marker(self, relative: str) -> dict[str, Any] | None:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._key(f"{relative}/{MARKER}"))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        data: dict[str, Any] = json.loads(obj["Body"].read())
        return data

    def path(self, relative: str) -> Path:
        """The bundle's local folder, downloaded and checked on first use."""
        local = self.cache / self._check(relative)
        if local.is_dir():
            return local
        marker = self._marker(relative)
        if marker is None:
            raise FileNotFoundError(f"bundle {relative} is not in s3://{self.bucket}/{self.prefix} (or not complete)")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".{local.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for name, want in marker["files"].items():
                target = tmp / self._check(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, self._key(f"{relative}/{name}"), str(target))
                if target.stat().st_size != want["size"] or sha256_file(target) != want["sha256"]:
                    raise OSError(f"bundle {relative}: {name} does not match its .complete entry")
                with open(target, "rb") as f:
                    os.fsync(f.fileno())
            try:
                os.rename(tmp, local)
            except OSError:
                if not local.is_dir():  # not "another thread or process got there first"
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return local

    def bundle_folders(self) -> list[tuple[str, str | None]]:
        """Bundles in the bucket (published or half-uploaded) and in this host's cache (written, perhaps
        never published)."""
        names: set[str] = set()
        root = self._key("classifiers/")
        paginator = self.s3.get_paginator("list_objects_v2")
        for clf_page in paginator.paginate(Bucket=self.bucket, Prefix=root, Delimiter="/"):
            for clf in clf_page.get("CommonPrefixes", []):
                for page in paginator.paginate(Bucket=self.bucket, Prefix=clf["Prefix"], Delimiter="/"):
                    for folder in page.get("CommonPrefixes", []):
                        names.add("classifiers/" + folder["Prefix"][len(root) :].rstrip("/"))
        base = self.cache / "classifiers"
        for clf_dir in (p for p in base.iterdir() if p.is_dir()):
            names.update(self.relative(f) for f in clf_dir.iterdir() if f.is_dir())
        return [(n, bundle_job_id(n.rsplit("/", 1)[-1])) for n in sorted(names)]

    def remove(self, relative: str) -> None:
        """Delete a bundle everywhere: the marker first, so that it stops counting as published at once."""
        relative = self._check(relative)
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(f"{relative}/{MARKER}"))
        self._delete_prefix(self._key(relative) + "/")
        shutil.rmtree(self.cache / relative, ignore_errors=True)

    def _delete_prefix(self, prefix: str) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    # --- content addressed by sha256 ---------------------------------------------------------------

    def put_content(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        key = self._key(content_relative(digest))
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return digest  # stored before (by this or another worker): content never changes under its name
        except ClientError as exc:
            if not _missing(exc):
                raise
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as exc:  # another writer got there first, with the same bytes
            if str(exc.response.get("Error", {}).get("Code")) not in ("PreconditionFailed", "412",
                                                                       "ConditionalRequestConflict"):  # fmt: skip
                raise
        return digest

    def content_path(self, sha256: str) -> Path:
        """The content's local copy, downloaded and checked against its sha256 on first use."""
        relative = content_relative(sha256)
        local = self.cache / relative
        if local.is_file():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f".{local.name}.tmp-{uuid.uuid4().hex}"
        try:
            try:
                self.s3.download_file(self.bucket, self._key(relative), str(tmp))
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(f"content {sha256} is not in s3://{self.bucket}/{self.prefix}") from None
                raise
            if sha256_file(tmp) != sha256:
                raise OSError(f"content {sha256} downloaded from the store does not match its sha256")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def list_content(self) -> list[str]:
        prefix = self._key(CONTENT_DIR) + "/"
        names = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        return sorted(n for n in names if SHA256_HEX.fullmatch(n))

    def remove_content(self, sha256: str) -> None:
        relative = content_relative(sha256)
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(relative))
        (self.cache / relative).unlink(missing_ok=True)

    # --- a classifier's bundles, as a whole -------------------------------------------------------

    def remove_classifier(self, classifier: str) -> None:
        """Every bundle of ``classifier``: the markers first (so none counts as published any more), then the rest."""
        relative = self._check(f"classifiers/{classifier}")
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(relative) + "/"):
            markers = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Key"].endswith("/" + MARKER)]
            if markers:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": markers, "Quiet": True})
        self._delete_prefix(self._key(relative) + "/")
        shutil.rmtree(self.cache / relative, ignore_errors=True)

    def bundle_bytes(self, relative: str) -> int:
        marker = self._marker(self._check(relative))
        return sum(int(f["size"]) for f in marker["files"].values()) if marker else 0

    def read_manifest(self, relative: str) -> dict[str, Any]:
        local = self.cache / self._check(relative) / "manifest.json"
        if local.is_file():
            data: dict[str, Any] = json.loads(local.read_text())
            return data
        if self._marker(relative) is None:
            raise FileNotFoundError(f"bundle {relative} is not in s3://{self.bucket}/{self.prefix} (or not complete)")
        obj = self.s3.get_object(Bucket=self.bucket, Key=self._key(f"{relative}/manifest.json"))
        data = json.loads(obj["Body"].read())
        return data

    # --- staged job arrays --------------------------------------------------------------------------

    def _job_key(self, job_id: str, name: str) -> str:
        return self._key(f"jobs/{self._check(job_id)}/{self._check(name)}.npz")

    def write_arrays(self, job_id: str, name: str, arrays: Arrays) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._job_key(job_id, name), Body=arrays_to_bytes(arrays))

    def read_arrays(self, job_id: str, name: str) -> Arrays | None:
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._job_key(job_id, name))
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return bytes_to_arrays(obj["Body"].read())

    def delete_job(self, job_id: str) -> None:
        self._delete_prefix(self._key(f"jobs/{self._check(job_id)}/"))
