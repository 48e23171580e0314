"""Pretrained backbones at classifier creation, over HTTP: weights are checked before the classifier exists.

A missing file, a file whose tensors do not fit and a download on a host that may not download each get
a 422 problem+json naming what is wrong, and no classifier; good weights get 201. CPU cost: one server
and seven weight checks in the server's checker child (it imports torch and timm once), about 20-40 s on 2
cores.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from model_core.networks.weights import package_weights_file
from tests.e2e.conftest import Server, auth, start_server, stop_server

LITE0 = "timm/efficientnet_lite0"
RGB = {"kind": "image", "channels": 3, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("backbones")
    (root / "weights").mkdir()
    s = start_server(root / "data", {"ENGRAM_WEIGHTS_CACHE_DIR": str(root / "cache"), "ENGRAM_ALLOW_DOWNLOADS": "false",
                                     "ENGRAM_WEIGHTS_DIR": str(root / "weights")})  # fmt: skip
    yield s
    stop_server(s)


def create(srv: Server, name: str, backbone: object, inp: dict[str, object] = RGB) -> tuple[int, dict[str, object]]:
    # The first pretrained check starts the server's checker child (torch, timm): allow a busy machine.
    r = srv.client().post("/v1/classifiers", headers=auth("admin"), json={"name": name, "input": inp, "backbone": backbone},
                          timeout=300)  # fmt: skip
    return r.status_code, r.json()


def refused(srv: Server, name: str, backbone: object, *needles: str, inp: dict[str, object] = RGB) -> None:
    status, body = create(srv, name, backbone, inp)
    assert status == 422, body
    detail = str(body["detail"])
    assert all(n in detail for n in needles), detail
    assert srv.client().get(f"/v1/classifiers/{name}", headers=auth("admin")).status_code == 404


def weights_dir(srv: Server) -> Path:
    return srv.data_dir.parent / "weights"


def test_bad_weights_are_refused_at_creation_with_what_is_wrong(srv: Server) -> None:
    refused(srv, "missing", {"name": LITE0, "weights": "file", "file": "nope.pt"}, "nope.pt", "has no file")
    tensors = torch.load(package_weights_file(LITE0), weights_only=True)
    tensors["_blocks.3._project_conv.weight"] = torch.zeros(5, 5, 1, 1)
    torch.save(tensors, weights_dir(srv) / "reshaped.pt")
    refused(srv, "reshaped", {"name": LITE0, "weights": "file", "file": "reshaped.pt"},
            "'_blocks.3._project_conv.weight'", "[5, 5, 1, 1]", "[40, 144, 1, 1]")  # fmt: skip
    (weights_dir(srv) / "junk.safetensors").write_bytes(b"\x00" * 64)
    refused(srv, "junk", {"name": LITE0, "weights": "file", "file": "junk.safetensors"}, "junk.safetensors")
    refused(srv, "offline", "timm/resnet18", "downloads are off")
    refused(srv, "unknown", {"name": "timm/no_such_net_v9", "weights": "none"}, "timm has no model")
    refused(srv, "vec", {"name": LITE0}, "image input", inp={"kind": "vector", "dim": 4})  # checked before any weights are touched


def test_the_cli_sends_the_backbone_object_and_shows_the_refusal(srv: Server, tmp_path: Path) -> None:
    from tests.e2e.test_cli_client import engram

    out = engram(srv, "classifiers", "create", "cli-bad", "--image", "3x32x32", "--backbone", LITE0,
                 "--weights-file", str(tmp_path / "gone.safetensors"), "--resolution", "128")  # fmt: skip
    assert out.returncode == 2 and "gone.safetensors" in out.stdout + out.stderr, out.stdout + out.stderr
    out = engram(srv, "classifiers", "create", "cli-ok", "--image", "3x32x32", "--backbone", LITE0, "--train", "last")
    assert out.returncode == 0 and f"{LITE0} backbone" in out.stdout, out.stdout + out.stderr


def test_a_weights_file_outside_the_weights_directory_is_refused_alike(srv: Server, tmp_path: Path) -> None:
    """Issue 30: a backbone file could name any path (../, ~, /etc/passwd) and the answer said whether it existed
    and showed its first byte. Now any path outside the weights directory gets the same answer, existing or not."""
    (tmp_path / "outside.pt").write_bytes(b"E" * 64)
    (weights_dir(srv) / "escape").symlink_to(tmp_path / "outside.pt")
    outside = "backbone: weights file NAME is not inside the server's weights directory; name a file there by its path relative to it"
    names = {"/etc/passwd": outside, "/etc/no-such-file": outside, "../data/engram.db": outside, "../../no/such": outside,
             str(tmp_path / "outside.pt"): outside, "escape": outside,
             # "~" is a directory name like any other, inside the weights directory: never the server's home
             "~/.bashrc": "backbone: the server's weights directory has no file NAME",
             "~root/.profile": "backbone: the server's weights directory has no file NAME"}  # fmt: skip
    for i, (name, expected) in enumerate(names.items()):
        status, body = create(srv, f"escape-{i}", {"name": LITE0, "weights": "file", "file": name})
        assert status == 422, body
        assert str(body["detail"]).replace(repr(name), "NAME") == expected, body
        assert srv.client().get(f"/v1/classifiers/escape-{i}", headers=auth("admin")).status_code == 404


def test_good_weights_are_checked_and_recorded(srv: Server) -> None:
    packaged = package_weights_file(LITE0)
    shutil.copyfile(packaged, weights_dir(srv) / packaged.name)
    status, body = create(srv, "lite0", {"name": LITE0, "weights": "file", "file": packaged.name, "resolution": 128})
    assert status == 201, body
    assert body["backbone"] == LITE0
    status, body = create(srv, "lite0-default", LITE0)
    assert status == 201, body
