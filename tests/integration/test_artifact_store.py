"""The artifact-store protocol, held to the same tests on the filesystem and on S3 (moto's server mode on a
loopback port, a real S3 HTTP endpoint). Each test opens a second store on the same backing storage, with a
cache of its own for S3, as another host would.

Cost: a moto server start (about 2 s) and a few hundred small requests; seconds in all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.storage import open_store
from service.storage.base import ArtifactStore
from tests.s3_server import new_bucket

Opener = Callable[[], ArtifactStore]
FILES = {"manifest.json": b'{"labels": ["a"]}', "model.onnx": os.urandom(300_000), "eval.npz": b"\x00" * 10}


@pytest.fixture(params=["file", "s3"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A function opening another store on the same storage, as another host would."""
    if request.param == "file":
        return lambda: open_store(tmp_path / "shared")
    url = f"s3://{new_bucket(request.getfixturevalue('s3_env'))}/some/prefix"
    return lambda: open_store(tmp_path / f"cache-{uuid.uuid4().hex[:6]}", url)


def write_bundle(store: ArtifactStore, classifier: str, job_id: str, files: dict[str, bytes] = FILES) -> str:
    """What the worker does: write the bundle folder atomically (as save_bundle does), then publish it."""
    folder = store.bundle_dir(classifier, job_id)
    if folder.exists():
        raise FileExistsError(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    tmp.rename(folder)
    store.publish(folder)
    return store.relative(folder)


def readable(store: ArtifactStore, relative: str) -> bool:
    """The filesystem store names a folder without checking it; the S3 store refuses a missing bundle."""
    try:
        return (store.path(relative) / "manifest.json").is_file()
    except FileNotFoundError:
        return False


def test_a_published_bundle_reads_the_same_from_another_store(opener: Opener) -> None:
    a, b = opener(), opener()
    relative = write_bundle(a, "pets", "job1")
    assert relative == "classifiers/pets/j-job1"
    folder = b.path(relative)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == FILES
    assert b.path(relative) == folder  # the second read is the same local folder
    assert b.relative(folder) == relative


def test_versions_are_immutable(opener: Opener) -> None:
    a = opener()
    relative = write_bundle(a, "pets", "job1")
    with pytest.raises(FileExistsError):
        write_bundle(opener(), "pets", "job1", {**FILES, "model.onnx": b"something else"})
    assert (opener().path(relative) / "model.onnx").read_bytes() == FILES["model.onnx"]


def test_bundle_folders_and_remove(opener: Opener) -> None:
    a = opener()
    kept, orphan = write_bundle(a, "pets", "job1"), write_bundle(a, "pets", "job2")
    write_bundle(a, "birds", "job3")
    b = opener()
    assert b.bundle_folders() == [("classifiers/birds/j-job3", "job3"), (kept, "job1"), (orphan, "job2")]
    b.remove(orphan)
    c = opener()
    assert [name for name, _ in c.bundle_folders()] == ["classifiers/birds/j-job3", kept]
    assert not readable(c, orphan) and readable(c, kept)
    assert (c.path(kept) / "manifest.json").read_bytes() == FILES["manifest.json"]


def test_staged_arrays_round_trip_and_are_deleted(opener: Opener) -> None:
    a, b = opener(), opener()
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "label": np.array(["a", "b", "a"])}
    a.write_arrays("job9", "train", arrays)
    a.write_arrays("job9", "eval", {"x": np.zeros((1, 4), np.float32)})
    got = b.read_arrays("job9", "train")
    assert got is not None and set(got) == {"x", "label"}
    assert np.array_equal(got["x"], arrays["x"]) and list(got["label"]) == ["a", "b", "a"]
    assert b.read_arrays("job9", "missing") is None and b.read_arrays("other-job", "train") is None
    b.delete_job("job9")
    assert a.read_arrays("job9", "train") is None and a.read_arrays("job9", "eval") is None


def test_names_cannot_escape_the_store(opener: Opener) -> None:
    with pytest.raises(ValueError, match="escapes"):
        opener().path("../outside")


def test_s3_half_uploaded_bundle_is_never_served(s3_env: dict[str, str], tmp_path: Path) -> None:
    """A publisher killed midway leaves files without the .complete marker: no host serves them, the sweep
    lists them, and the job's next attempt publishes over them."""
    import boto3

    bucket = new_bucket(s3_env)
    store = open_store(tmp_path / "a", f"s3://{bucket}/p")
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"])
    s3.put_object(Bucket=bucket, Key="p/classifiers/pets/j-job1/model.onnx", Body=b"half")
    other = open_store(tmp_path / "b", f"s3://{bucket}/p")
    with pytest.raises(FileNotFoundError, match="not complete"):
        other.path("classifiers/pets/j-job1")
    assert other.bundle_folders() == [("classifiers/pets/j-job1", "job1")]
    relative = write_bundle(store, "pets", "job1")
    assert (open_store(tmp_path / "c", f"s3://{bucket}/p").path(relative) / "model.onnx").read_bytes() == FILES[
        "model.onnx"
    ]
    # a corrupted object is caught by the marker's checksums, and nothing is left in the cache
    s3.put_object(Bucket=bucket, Key="p/classifiers/pets/j-job1/eval.npz", Body=b"\x01" * 10)
    with pytest.raises(OSError, match="does not match"):
        open_store(tmp_path / "d", f"s3://{bucket}/p").path(relative)
    assert not (tmp_path / "d" / relative).exists()
    assert [p.name for p in (tmp_path / "d" / "classifiers" / "pets").iterdir()] == []


def test_s3_url_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_store(tmp_path, "s3:/no-bucket")


def test_content_is_stored_once_by_sha256_and_read_back_checked_from_another_store(opener: Opener) -> None:
    import hashlib

    a, b = opener(), opener()
    data = os.urandom(200_000)
    sha = a.put_content(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert a.put_content(data) == sha  # a second put of the same bytes is a no-op, not an error
    assert b.content_path(sha).read_bytes() == data  # another host reads it (S3: downloaded once, checked)
    assert b.content_path(sha) == b.content_path(sha)
    relative = write_bundle(a, "pets", "job9")  # bundles and the orphan sweep's listing never see the content
    assert [r for r, _ in b.bundle_folders()] == [relative]
    with pytest.raises(FileNotFoundError):
        b.content_path("0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        b.content_path("../../etc/passwd")


def test_content_that_does_not_match_its_sha256_is_refused_by_the_s3_store(s3_env: dict[str, str], tmp_path: Path) -> None:
    import boto3

    bucket = new_bucket(s3_env)
    store = open_store(tmp_path / "a", f"s3://{bucket}/p")
    sha = store.put_content(b"the backbone")
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name=s3_env["AWS_REGION"],
                 aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
                 ).put_object(Bucket=bucket, Key=f"p/content/sha256/{sha}", Body=b"something else")  # fmt: skip
    with pytest.raises(OSError, match="does not match"):
        open_store(tmp_path / "b", f"s3://{bucket}/p").content_path(sha)
    assert not list((tmp_path / "b" / "content" / "sha256").iterdir())  # nothing half-checked is left to read
