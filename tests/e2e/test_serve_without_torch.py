"""The API serves with torch absent, as an install of the `serve` extra (no torch, torchvision or timm) runs it.

A version is written beforehand by a normal server and its worker; then ``engram serve --no-worker`` starts on
the same data in an interpreter where importing torch, torchvision or timm fails (a ``sys.meta_path`` finder
installed by a ``sitecustomize`` on PYTHONPATH, so every child process it starts is blocked too) and serves
predictions, creates a photo classifier on the packaged backbone and queues its learning job. Every attempt to
import a blocked module is written down with its stack, so an import swallowed by a ``try`` fails the test too.

Cost: two server starts and one 50-step MLP job on 8x8 digits (about 20 s on 2 cores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.e2e.conftest import Server, auth, png_b64, start_server, stop_server, wait_job

pytestmark = pytest.mark.timeout(300)

BLOCKED = ("torch", "torchvision", "timm")
# Raises as an absent package would, and writes down who asked. A probe through importlib.util.find_spec
# (how the CLI and the backbone check ask whether torch is installed, without importing it) is not an import.
SITECUSTOMIZE = """
import sys, traceback
from importlib.abc import MetaPathFinder

class _Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in {blocked!r}:
            return None
        stack = traceback.extract_stack()
        if not any(f.name == "find_spec" and f.filename.endswith(("importlib/util.py", "importlib.util>")) for f in stack):
            with open({log!r}, "a") as out:
                out.write(f"import of {{name}} (pid {{__import__('os').getpid()}}):\\n" + "".join(traceback.format_list(stack)))
        raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: an install without torch)", name=name)

sys.meta_path.insert(0, _Absent())
"""

DIGITS = {"kind": "image", "channels": 1, "height": 8, "width": 8}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """A data dir holding classifier 'digits' (v1, 8x8 digits 0-2, learned by a normal server's worker),
    20 held-out digits as base64 PNGs and the labels that server predicted for them."""
    data = tmp_path_factory.mktemp("no-torch") / "data"
    srv = start_server(data)
    try:
        c = srv.client()
        d = load_digits()
        x, y = d.images[d.target < 3], d.target[d.target < 3]
        r = c.post("/v1/classifiers", headers=auth("admin"), json={"name": "digits", "input": DIGITS, "backbone": "mlp"})
        assert r.status_code == 201, r.text
        body = {"task": "t", "strategy": "naive", "options": {"iterations": 50},
                "samples": [{"label": str(int(t)), "image_b64": png_b64(img)} for img, t in zip(x[:90], y[:90], strict=True)]}  # fmt: skip
        r = c.post("/v1/classifiers/digits/learn", json=body, headers=auth("learn"))
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["status"] == "promoted"
        probes = [png_b64(img) for img in x[90:110]]
        r = c.post("/v1/classifiers/digits/predict", headers=auth("predict"),
                   json={"inputs": [{"image_b64": p} for p in probes]})  # fmt: skip
        assert r.status_code == 200, r.text
        labels = [p["label"] for p in r.json()["predictions"]]
    finally:
        stop_server(srv)
    return data, probes, labels


@pytest.fixture(scope="module")
def no_torch(written: tuple[Path, list[str], list[str]]) -> Iterator[tuple[Server, Path]]:
    """The API alone (--no-worker) on the written data, in interpreters that cannot import torch; and the file
    that lists every attempt to import it."""
    data = written[0]
    site, log = data.parent / "site", data.parent / "torch-imports.log"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED, log=str(log)))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    srv = start_server(data, {"PYTHONPATH": path}, "--no-worker")
    yield srv, log
    stop_server(srv)


def test_the_blocker_blocks(tmp_path: Path) -> None:
    """The finder does make torch unimportable (else the tests below could not fail)."""
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED, log=str(tmp_path / "log")))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "blocked: an install without torch" in proc.stderr
    assert "import of torch" in (tmp_path / "log").read_text()


def test_the_api_serves_a_written_version_without_torch(
    no_torch: tuple[Server, Path], written: tuple[Path, list[str], list[str]]
) -> None:
    srv, log = no_torch
    _, probes, labels = written
    c = srv.client()
    r = c.post("/v1/classifiers/digits/predict", headers=auth("predict"), json={"inputs": [{"image_b64": p} for p in probes]})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    assert [p["label"] for p in r.json()["predictions"]] == labels  # the same answers as the full install's
    assert c.get("/v1/classifiers/digits", headers=auth("admin")).status_code == 200
    assert c.get("/metrics").status_code == 200
    assert not log.exists(), log.read_text()[-4000:]


def test_the_api_creates_a_photo_classifier_and_queues_its_job_without_torch(no_torch: tuple[Server, Path]) -> None:
    srv, log = no_torch
    c = srv.client()
    r = c.post("/v1/classifiers", headers=auth("admin"),
               json={"name": "photos", "input": {"kind": "image", "channels": 3, "height": 32, "width": 32}})  # fmt: skip
    assert r.status_code == 201, r.text
    assert "timm/efficientnet_lite0" in r.json()["backbone"], r.json()  # recorded from the package, no torch
    rng = np.random.default_rng(0)
    samples = [{"label": lab, "image_b64": png_b64(rng.uniform(0, 16, (8, 8)))} for lab in ("a", "b") for _ in range(3)]
    r = c.post("/v1/classifiers/photos/learn", headers=auth("learn"), json={"task": "t", "samples": samples})
    assert r.status_code == 202, r.text  # queued for a worker that has torch
    # A backbone that only building it can check is refused, naming why, instead of a crashed child.
    r = c.post("/v1/classifiers", headers=auth("admin"), json={"name": "resnet", "backbone": "torchvision/resnet18",
               "input": {"kind": "image", "channels": 3, "height": 32, "width": 32}})  # fmt: skip
    assert r.status_code == 422, r.text
    assert "torch" in r.json()["detail"] and "serve" in r.json()["detail"]
    assert not log.exists(), log.read_text()[-4000:]
