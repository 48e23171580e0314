"""Photos through the CLI with every default: a 3x32x32 classifier gets the pretrained frozen backbone, learns two
tasks of real CIFAR-10 photos from ImageFolder directories with generative replay and no data kept, promotes
both, and classifies held-out photos of all four classes."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Server, start_server, stop_server
from tests.e2e.support import engram

pytestmark = pytest.mark.timeout(900)
CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-mini"
TASKS = (("airplane", "automobile"), ("bird", "cat"))
TRAIN, TEST = 40, 25  # photos per class


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (CIFAR / "train").is_dir():
        pytest.skip(f"the cifar10-mini photos are not at {CIFAR}; this test needs them (see shared/data/README.md)")
    s = start_server(tmp_path_factory.mktemp("photos") / "data")
    yield s
    stop_server(s)


def folder(root: Path, split: str, classes: tuple[str, ...], n: int) -> Path:
    """An ImageFolder tree of links to the first ``n`` photos of each class."""
    for c in classes:
        (root / c).mkdir(parents=True)
        for photo in sorted((CIFAR / split / c).iterdir())[:n]:
            (root / c / photo.name).symlink_to(photo)
    return root


def test_two_photo_tasks_through_the_cli_with_defaults(srv: Server, tmp_path: Path) -> None:
    out = engram(srv, "classifiers", "create", "photos", "--image", "3x32x32")
    assert out.returncode == 0 and "timm/efficientnet_lite0" in out.stdout, out.stdout + out.stderr
    for i, classes in enumerate(TASKS, start=1):
        train = folder(tmp_path / f"t{i}", "train", classes, TRAIN)
        out = engram(srv, "learn", "photos", str(train), "--task", f"t{i}", "--retention", "discard", role="learn")
        assert out.returncode == 0 and f"promoted, version {i}" in out.stdout, out.stdout + out.stderr
    held_out = folder(tmp_path / "test", "test", tuple(c for pair in TASKS for c in pair), TEST)
    files = sorted(str(p) for p in held_out.rglob("*.jpg"))
    deadline = time.monotonic() + 60  # the server follows the worker's promotion on its next sync
    while "(version 2)" not in (out := engram(srv, "predict", "photos", files[0], role="predict")).stdout:
        assert time.monotonic() < deadline, out.stdout + out.stderr
        time.sleep(0.5)
    out = engram(srv, "predict", "photos", *files, role="predict")
    assert out.returncode == 0 and "(version 2)" in out.stdout, out.stdout + out.stderr
    answers = dict(re.findall(r"^(\S+\.jpg): (\S+) ", out.stdout, flags=re.MULTILINE))
    assert len(answers) == len(files)
    accuracy = sum(Path(f).parent.name == label for f, label in answers.items()) / len(files)
    print(f"\nheld-out accuracy over 4 photo classes after 2 tasks: {accuracy:.3f} on {len(files)} photos")
    assert accuracy >= 0.7, accuracy
