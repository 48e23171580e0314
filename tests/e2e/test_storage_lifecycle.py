"""A classifier's life after its versions, through real servers and the ``engram`` command (issue 31, items 2-5):
prune by a retention policy (a dry run first), delete a classifier, export and import it, back up and restore the
whole deployment, the store's bytes per classifier in /metrics, on SQLite with the file store and on PostgreSQL with
the S3 store (moto's server).

Content references are made explicit here: after the versions are trained, the test adds references (roles
``test/...``) to their manifests, with the content put in the store by sha256, as a version that references
evaluation samples or a shared backbone has them: a pruned version's content that a kept version (of any
classifier) references stays; content that only pruned or deleted versions referenced goes.

Cost on 2 busy cores: about 2-3 minutes per deployment (three server starts, five tiny vector jobs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.storage.base import ArtifactStore
from service.storage.files import FileArtifactStore
from service.storage.s3 import S3ArtifactStore
from tests.conftest import throwaway_pg
from tests.e2e.conftest import KEYS, Server, auth, start_server, stop_server, wait_job
from tests.e2e.support import PROBE, blobs, create, learn, problem
from tests.s3_server import moto_s3, new_bucket

pytestmark = pytest.mark.timeout(900)
QUICK = {"iterations": 30}
TRAINS_A_WHILE = {"iterations": 4000}  # long enough to try a deletion while it is queued or running
TASKS = ({"a": 0.0, "b": 3.0}, {"c": -3.0, "d": 6.0}, {"e": 9.0, "f": -6.0})


@dataclass
class Deployment:
    """One deployment's data folder and settings (database, store); servers and CLI commands run with them."""

    data_dir: Path
    env: dict[str, str]
    s3: dict[str, str] | None = None
    bucket: str | None = None
    log_dir: Path = field(default_factory=Path)

    def store(self) -> ArtifactStore:
        """The deployment's store, as this test process sees it (its own cache for S3)."""
        if self.s3 is None:
            return FileArtifactStore(self.data_dir / "artifacts")
        client = boto3.client("s3", endpoint_url=self.s3["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
        assert self.bucket is not None
        return S3ArtifactStore(self.bucket, "engram", self.data_dir.parent / f"test-cache-{self.bucket}", client)

    def engram(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, "ENGRAM_DATA_DIR": str(self.data_dir), "COLUMNS": "200"}
        return subprocess.run([sys.executable, "-m", "service.cli.main", *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False)  # fmt: skip

    def serve(self) -> Server:
        return start_server(self.data_dir, {**self.env, "OMP_NUM_THREADS": "1"})


@pytest.fixture(params=["sqlite-files", "postgresql-s3"])
def deployments(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Deployment, Deployment]]:
    """Two empty deployments of one kind: the first trains, prunes, deletes, exports; the second restores."""
    with contextlib.ExitStack() as stack:
        pair = []
        s3 = stack.enter_context(moto_s3(tmp_path)) if request.param == "postgresql-s3" else None
        for side in ("a", "b"):
            env: dict[str, str] = {}
            bucket = None
            if s3 is not None:
                bucket = new_bucket(s3)
                env = {**s3, "ENGRAM_DATABASE_URL": stack.enter_context(throwaway_pg(f"engram_life31{side}")),
                       "ENGRAM_ARTIFACTS_URL": f"s3://{bucket}/engram"}  # fmt: skip
            (tmp_path / side).mkdir()
            pair.append(Deployment(tmp_path / side / "data", env, s3, bucket, tmp_path))
        yield pair[0], pair[1]


def artifact(c: httpx.Client, name: str, number: int) -> str:
    job = c.get(f"/v1/classifiers/{name}/versions/{number}", headers=auth("learn")).json()["job_id"]
    return f"classifiers/{name}/j-{job}"


def answers(c: httpx.Client, name: str) -> dict[str, Any]:
    r = c.post(f"/v1/classifiers/{name}/predict", json={**PROBE, "top_k": 3}, headers=auth("predict"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def served(c: httpx.Client, name: str) -> dict[str, Any]:
    """The classifier's answers once this server serves it (it follows pointers written by another process)."""
    import time

    deadline = time.monotonic() + 60
    while True:
        r = c.post(f"/v1/classifiers/{name}/predict", json={**PROBE, "top_k": 3}, headers=auth("predict"))
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.3)


def stamp(dep: Deployment, relative: str, refs: dict[str, dict[str, Any]]) -> None:
    """Add ``refs`` to a version's manifest references (the server is stopped; its caches go with it)."""
    if dep.s3 is None:
        path = dep.data_dir / "artifacts" / relative / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest.setdefault("references", {}).update(refs)
        path.write_text(json.dumps(manifest))
        return
    s3 = dep.store().s3  # type: ignore[attr-defined]
    key = f"engram/{relative}"
    manifest = json.loads(s3.get_object(Bucket=dep.bucket, Key=f"{key}/manifest.json")["Body"].read())
    manifest.setdefault("references", {}).update(refs)
    data = json.dumps(manifest).encode()
    s3.put_object(Bucket=dep.bucket, Key=f"{key}/manifest.json", Body=data)
    marker = json.loads(s3.get_object(Bucket=dep.bucket, Key=f"{key}/.complete")["Body"].read())
    marker["files"]["manifest.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    s3.put_object(Bucket=dep.bucket, Key=f"{key}/.complete", Body=json.dumps(marker).encode())
    shutil.rmtree(dep.data_dir / "artifacts" / relative, ignore_errors=True)  # the server's cached copy


def damage(dep: Deployment, relative: str) -> None:
    """Lose one file of a published bundle, as a disk or a bucket can."""
    if dep.s3 is None:
        (dep.data_dir / "artifacts" / relative / "model.safetensors").unlink()
        return
    dep.store().s3.delete_object(Bucket=dep.bucket, Key=f"engram/{relative}/model.safetensors")  # type: ignore[attr-defined]
    shutil.rmtree(dep.data_dir / "artifacts" / relative, ignore_errors=True)


def staged(dep: Deployment, job_id: str) -> bool:
    """Whether the job's staged arrays are still in the store."""
    if dep.s3 is None:
        return (dep.data_dir / "artifacts" / "jobs" / job_id).exists()
    listed = dep.store().s3.list_objects_v2(Bucket=dep.bucket, Prefix=f"engram/jobs/{job_id}/")  # type: ignore[attr-defined]
    return bool(listed.get("Contents"))


def store_bytes(c: httpx.Client) -> dict[tuple[str, str], float]:
    """``engram_store_bytes`` from /metrics: (classifier, part) -> bytes."""
    families = text_string_to_metric_families(c.get("/metrics").text)
    return {(s.labels["classifier"], s.labels["part"]): s.value for f in families if f.name == "engram_store_bytes"
            for s in f.samples}  # fmt: skip


def referenced_bytes(store: ArtifactStore, bundles: list[str]) -> int:
    """The bytes of the content these bundles' manifests reference, each sha256 once."""
    sizes: dict[str, int] = {}
    for relative in bundles:
        for ref in (store.read_manifest(relative).get("references") or {}).values():  # type: ignore[attr-defined]
            sizes[str(ref["sha256"])] = int(ref.get("size") or 0)
    return sum(sizes.values())


def content_ref(data: bytes, store: ArtifactStore) -> dict[str, Any]:
    return {"sha256": store.put_content(data), "size": len(data), "kind": "test-blob"}


def test_prune_delete_export_import_backup_restore(deployments: tuple[Deployment, Deployment]) -> None:
    a, b = deployments
    work = a.data_dir.parent.parent
    srv = a.serve()
    try:
        c = srv.client()
        create(c, "pr", gate={"tolerance": 1, "new_task_floor": 0})  # naive forgets; tolerance 1 lets every version through the gate
        r = c.put("/v1/classifiers/pr/retention", json={"keep_ancestors": 1, "keep_days": 0}, headers=auth("admin"))
        assert r.status_code == 200 and r.json() == {"classifier": "pr", "keep_ancestors": 1, "keep_days": 0.0,
                                                      "own": True}, r.text  # fmt: skip
        r = c.put("/v1/classifiers/pr/retention", json={"keep_ancestors": -1}, headers=auth("admin"))
        problem(r, 422, "keep_ancestors")
        for k, labels in enumerate(TASKS):
            job = wait_job(c, learn(c, "pr", {"task": f"t{k}", "strategy": "naive", "samples": blobs(labels, seed=k),
                                              "options": QUICK}))  # fmt: skip
            assert job["status"] == "promoted" and job["version"] == k + 1, job
        create(c, "other", gate={"tolerance": 1, "new_task_floor": 0})
        job = wait_job(c, learn(c, "other", {"task": "t0", "strategy": "naive", "samples": blobs(TASKS[0], seed=9),
                                             "options": QUICK}))  # fmt: skip
        assert job["status"] == "promoted", job
        bundles = {(n, v): artifact(c, n, v) for n, v in (("pr", 1), ("pr", 2), ("pr", 3), ("other", 1))}
    finally:
        stop_server(srv)

    # Content stored once and referenced by several versions, of one classifier and of two.
    store = a.store()
    shared, only_v1, cross = (content_ref(f"{what}-{os.urandom(8).hex()}".encode() * 1000, store)
                              for what in ("shared", "only-v1", "cross"))  # fmt: skip
    stamp(a, bundles[("pr", 1)], {"test/shared": shared, "test/only-v1": only_v1, "test/cross": cross})
    stamp(a, bundles[("pr", 3)], {"test/shared": shared})
    stamp(a, bundles[("other", 1)], {"test/cross": cross})

    srv = a.serve()
    try:
        c = srv.client()
        before = {"pr": answers(c, "pr"), "other": answers(c, "other")}

        # A dry run says what a prune would do and changes nothing.
        r = c.post("/v1/classifiers/pr/prune", params={"dry_run": "true"}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        plan = r.json()
        assert plan["dry_run"] and [p["version"] for p in plan["pruned"]] == [1], plan
        assert {k["version"]: k["reason"].split(" ")[0] for k in plan["kept"]} == {2: "ancestor", 3: "active"}
        assert plan["content"]["removed"] == [only_v1["sha256"]] and plan["content"]["bytes"] == only_v1["size"]
        assert c.get("/v1/classifiers/pr/versions/1", headers=auth("learn")).json()["status"] == "retired"
        assert store.bundle_bytes(bundles[("pr", 1)]) > 0 and only_v1["sha256"] in store.list_content()
        problem(c.post("/v1/classifiers/pr/prune", headers=auth("learn")), 403)

        # The prune itself, from the CLI.
        out = a_cli(srv, "versions", "prune", "pr")
        assert out.returncode == 0 and "pruned 1 version(s)" in out.stdout, out.stdout + out.stderr
        assert c.get("/v1/classifiers/pr/versions/1", headers=auth("learn")).json()["status"] == "pruned"
        assert store.bundle_bytes(bundles[("pr", 1)]) == 0 and store.bundle_bytes(bundles[("pr", 2)]) > 0
        left = set(store.list_content())
        assert shared["sha256"] in left and cross["sha256"] in left, "content a kept version references went"
        assert only_v1["sha256"] not in left, "content only the pruned version referenced stayed"
        audit = c.get("/v1/classifiers/pr/audit", headers=auth("learn")).json()
        assert audit[-1]["action"] == "prune" and audit[-1]["to_version"] == 1 and audit[-1]["actor"].startswith("admin:")
        events = c.get("/v1/lifecycle", headers=auth("admin")).json()
        assert events[0]["action"] == "prune" and events[0]["detail"]["versions"] == [1]
        r = c.post("/v1/classifiers/pr/rollback", json={"to_version": 1}, headers=auth("admin"))
        problem(r, 410, "pruned")
        problem(c.post("/v1/classifiers/pr/predict", json={**PROBE, "version": 1}, headers=auth("predict")), 410)
        assert answers(c, "pr") == before["pr"]  # the active version serves on

        # Sizes: /v1/storage, /metrics and the dashboard.
        usage = c.get("/v1/storage", headers=auth("learn")).json()
        # Each kept version's references (the test's blobs and what the jobs stored: evaluation samples...),
        # each piece of content counted once per classifier.
        kept_content = {name: referenced_bytes(store, [bundles[(name, v)] for v in kept])
                        for name, kept in (("pr", (2, 3)), ("other", (1,)))}  # fmt: skip
        assert kept_content["pr"] >= shared["size"] and kept_content["other"] >= cross["size"]
        assert usage["pr"]["count"] == 2 and usage["pr"]["content"] == kept_content["pr"], usage
        assert usage["other"]["content"] == kept_content["other"] and usage["other"]["versions"] > 0
        sizes = store_bytes(c)
        assert sizes[("pr", "versions")] == usage["pr"]["versions"] and sizes[("pr", "content")] == kept_content["pr"]
        page = c.get("/ui/classifiers/pr").text
        assert f'data-bytes="{usage["pr"]["total"]}"' in page and 'id="delete"' in page

        # A deletion is refused while a job of the classifier is live.
        job_id = learn(c, "other", {"task": "t1", "strategy": "naive", "samples": blobs(TASKS[1], seed=5),
                                    "options": TRAINS_A_WHILE})  # fmt: skip
        problem(c.delete("/v1/classifiers/other", headers=auth("admin")), 409, "job")
        assert c.get("/v1/classifiers/other", headers=auth("learn")).status_code == 200
        # and content is not collected while a job may be writing a version that references it
        r = c.post("/v1/classifiers/pr/prune", params={"dry_run": "true"}, headers=auth("admin"))
        assert r.status_code == 200 and "job" in r.json()["content"]["deferred"], r.text
        assert c.post(f"/v1/jobs/{job_id}/cancel", headers=auth("learn")).status_code == 200
        assert wait_job(c, job_id)["status"] == "cancelled"

        # Archives: one classifier, and everything.
        out = a.engram("export", "pr", str(work / "pr.tar"))
        assert out.returncode == 0, out.stdout + out.stderr
        out = a.engram("backup", str(work / "all.tar"))
        assert out.returncode == 0 and "other, pr" in out.stdout, out.stdout + out.stderr
        # An export that fails midway (a bundle lost from the store) leaves no archive behind, not even part of one.
        damage(a, bundles[("other", 1)])
        out = a.engram("backup", str(work / "failed.tar"))
        assert out.returncode == 2 and "refused" in out.stderr, out.stdout + out.stderr
        assert not (work / "failed.tar").exists() and not list(work.glob(".failed.tar*"))

        # Delete, through the CLI: rows, bundles, staged arrays and the content no one else references go.
        out = a_cli(srv, "classifiers", "delete", "other")
        assert out.returncode != 0 and "--yes" in out.stderr + out.stdout
        out = a_cli(srv, "classifiers", "delete", "other", "--yes", "other")
        assert out.returncode == 0, out.stdout + out.stderr
        problem(c.get("/v1/classifiers/other", headers=auth("learn")), 404)
        problem(c.post("/v1/classifiers/other/predict", json=PROBE, headers=auth("predict")), 404)
        assert store.bundle_bytes(bundles[("other", 1)]) == 0 and not staged(a, job_id)
        left = set(store.list_content())
        assert cross["sha256"] not in left and shared["sha256"] in left
        assert c.get("/v1/lifecycle", headers=auth("admin")).json()[0]["action"] == "delete"
        assert {k[0] for k in store_bytes(c)} == {"pr"}
    finally:
        stop_server(srv)

    # A half-written archive (cut short) and a corrupt one restore nothing.
    whole = (work / "all.tar").read_bytes()
    (work / "half.tar").write_bytes(whole[: len(whole) // 2])
    corrupt = bytearray(whole)
    at = whole.index(b'"network"')  # inside a classifier.json member: the tar stays readable, its sha256 does not
    corrupt[at + 2] ^= 0x01
    (work / "corrupt.tar").write_bytes(bytes(corrupt))
    srv_b = b.serve()
    try:
        c = srv_b.client()
        for bad, words in (("half.tar", "nothing was restored"), ("corrupt.tar", "does not match")):
            out = b.engram("restore", str(work / bad))
            assert out.returncode == 2 and words in out.stderr, out.stdout + out.stderr
            assert c.get("/v1/classifiers", headers=auth("learn")).json() == []
            assert b.store().list_content() == [] and b.store().bundle_folders() == []

        out = b.engram("restore", str(work / "all.tar"))
        assert out.returncode == 0, out.stdout + out.stderr
        assert served(c, "pr") == before["pr"] and served(c, "other") == before["other"]  # exactly as before
        assert c.get("/v1/classifiers/pr/versions/1", headers=auth("learn")).json()["status"] == "pruned"
        problem(c.post("/v1/classifiers/pr/rollback", json={"to_version": 1}, headers=auth("admin")), 410, "pruned")
        assert [e["action"] for e in c.get("/v1/lifecycle", headers=auth("admin")).json()][:2] == ["restore"] * 2

        out = b.engram("import", str(work / "pr.tar"))
        assert out.returncode == 2 and "already exists" in out.stderr, out.stdout + out.stderr
        out = b.engram("import", str(work / "pr.tar"), "--as", "pr-copy")
        assert out.returncode == 0, out.stdout + out.stderr
        copy = served(c, "pr-copy")
        assert {**copy, "classifier": "pr"} == before["pr"]
        audit = c.get("/v1/classifiers/pr-copy/audit", headers=auth("learn")).json()
        assert [a["action"] for a in audit][-1] == "prune" and len(audit) >= 4

        # The dashboard's delete: an admin key and the name typed again.
        form = {"key": KEYS["admin"], "confirm": "pr"}
        r = c.post("/ui/classifiers/pr-copy/delete", data=form, follow_redirects=False)
        assert r.status_code == 303 and "deletion%20refused" in r.headers["location"], r.headers
        r = c.post("/ui/classifiers/pr-copy/delete", data={**form, "key": KEYS["learn"], "confirm": "pr-copy"},
                   follow_redirects=False)  # fmt: skip
        assert r.status_code == 303 and "deletion%20refused" in r.headers["location"], r.headers
        r = c.post("/ui/classifiers/pr-copy/delete", data={**form, "confirm": "pr-copy"}, follow_redirects=True)
        assert r.status_code == 200 and "deleted pr-copy" in r.text
        problem(c.get("/v1/classifiers/pr-copy", headers=auth("learn")), 404)
        assert served(c, "pr") == before["pr"]  # the classifier it was copied from is untouched
    finally:
        stop_server(srv_b)


def a_cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """The client side of ``engram`` against ``srv`` with the admin key."""
    env = {**os.environ, "ENGRAM_URL": srv.url, "ENGRAM_KEY": KEYS["admin"], "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "service.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
