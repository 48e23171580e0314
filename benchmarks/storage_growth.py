"""Bytes a classifier's versions take in the artifact store, per version and in all, by layout.

    python -m benchmarks.storage_growth photos [--tasks 5] [--size 128] [--per-class 100] [--holdout 0.2] [--layouts all]
    python -m benchmarks.storage_growth generated [--tasks 50]

Each stream is taught once per layout, in this process (the application services on SQLite stage each learn
request, a ``JobRunner`` runs it as the worker does; every version passes the gate, so each trains from the
last), and the store is measured after every version:

- ``whole graphs``: the layout before shared backbones and shared content (every version's ``model.onnx``
  holds the backbone, its ``eval.npz`` every task's samples as float32, its ``state.pt`` the whole state);
- ``shared backbone``: the backbone's graph stored once (``ENGRAM_SHARED_BACKBONE``), the rest as above;
- ``shared content``: the default: also each task's evaluation samples once (images as their 8-bit pixels) and
  the strategy's large state tensors as content (``ENGRAM_SHARED_CONTENT``; docs/architecture/storage.md).

``photos``: cifar10-mini, ``--tasks`` tasks of two classes, ``--per-class`` photos a class (``--holdout`` of them
held out for the gate: the gate's default a fifth; 0.6 of 100 gives the 120 evaluation photos a task of the
photo classifier issue 31 measured), uploaded as JPEG to a ``3x<size>x<size>`` classifier with every default (the pretrained frozen
EfficientNet-Lite0, the analytic head). ``generated``: ``--tasks`` tasks of two classes of generated
1x16x16 images (a seeded template per class plus noise, 30 a class), on the pixels as features (``identity``)
with the analytic head on 256 random features: only the whole-graph layout is left out (no backbone to share).

Bytes are what the store holds for the classifier: its version folders and the content they reference (the
staged training arrays under ``jobs/`` and local caches are not counted).
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-mini"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
LAYOUTS = {  # name -> (shared backbone, shared content)
    "whole graphs": (False, False),
    "shared backbone": (True, False),
    "shared content": (True, True),
}
Samples = list[dict[str, Any]]


@dataclass
class Sizes:
    """The store's bytes after each version: own folder files by name, content by kind (counted once)."""

    per_version: list[dict[str, int]] = field(default_factory=list)  # what each version added, by kind
    totals: list[int] = field(default_factory=list)  # the classifier's bytes after each version


def measure(artifacts: Path, seen: set[str], folder: Path) -> dict[str, int]:
    """What the version in ``folder`` added: its own files, and the content it references not stored before."""
    import json

    added: dict[str, int] = {}
    for f in sorted(folder.iterdir()):
        added[f.name] = added.get(f.name, 0) + f.stat().st_size
    manifest = json.loads((folder / "manifest.json").read_text())
    for ref in (manifest.get("references") or {}).values():
        if ref["sha256"] in seen:
            continue
        seen.add(ref["sha256"])
        kind = f"content: {ref['kind']}"
        added[kind] = added.get(kind, 0) + (artifacts / "content" / "sha256" / ref["sha256"]).stat().st_size
    return added


def teach(layout: str, stream: list[tuple[str, Samples]], network: dict[str, Any], params: dict[str, Any],
          features: OrderedDict[str, Any], holdout: float = 0.2) -> Sizes:  # fmt: skip
    """One stream through the job code in ``layout``, on a fresh data folder; the sizes after each version."""
    from service.application.services import EngramService
    from service.domain.commands import Learn, NewClassifier
    from service.inference.sessions import ServingState
    from service.jobs.training import JobRunner
    from service.persistence.migrations import upgrade
    from service.persistence.models import Version, make_engine, make_sessionmaker
    from service.settings import Settings
    from service.storage import open_store

    backbone, content = LAYOUTS[layout]
    sizes = Sizes()
    with tempfile.TemporaryDirectory(prefix="engram-storage-") as tmp:
        settings = Settings(data_dir=Path(tmp), shared_backbone=backbone, shared_content=content)  # type: ignore[call-arg]
        upgrade(settings.db_url)
        sessions = make_sessionmaker(make_engine(settings.db_url))
        store = open_store(settings.artifacts_path)
        service = EngramService(settings, sessions, store, ServingState())
        runner = JobRunner(sessions, store, "cpu", cache_dir=Path(tmp) / "cache", shared_backbone=backbone,
                           shared_content=content)  # fmt: skip
        runner.features = features  # the frozen features, computed once for every layout (same classifier id)
        service.classifiers.create_classifier(NewClassifier("c", network["input"], backbone=network.get("backbone"),
                                                            gate={"tolerance": 1.0, "new_task_floor": 0.0, "holdout": holdout}))  # fmt: skip
        seen: set[str] = set()
        total = 0
        for task, samples in stream:
            t0 = time.perf_counter()
            job = service.learning.submit_learn("c", Learn(task, "analytic", samples, params=params))
            runner.run(job["job_id"])
            with sessions() as s:
                version = s.query(Version).filter_by(job_id=job["job_id"]).one_or_none()
                if version is None or version.status != "active":
                    raise RuntimeError(f"{task}: {service.learning.get_job(job['job_id'])}")
                artifact = version.artifact
            added = measure(settings.artifacts_path, seen, store.path(artifact))
            total += sum(added.values())
            sizes.per_version.append(added)
            sizes.totals.append(total)
            print(f"  {layout}: {task} in {time.perf_counter() - t0:.1f} s, {total / 1e6:.1f} MB in all", flush=True)
    return sizes


def jpeg_samples(classes: tuple[str, ...], n: int) -> Samples:
    return [{"label": c, "image_b64": base64.b64encode(p.read_bytes()).decode()}
            for c in classes for p in sorted((CIFAR / "train" / c).iterdir())[:n]]  # fmt: skip


def generated_samples(task: int, n: int = 30, seed: int = 0) -> Samples:
    """Two classes of 16x16 grey PNG images: a seeded template per class plus noise."""
    rng = np.random.default_rng(seed + task)
    out = []
    for c in range(2):
        template = rng.integers(0, 256, (16, 16))
        for _ in range(n):
            pixels = np.clip(template + rng.normal(0, 24, template.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "PNG")
            out.append({"label": f"t{task}-c{c}", "image_b64": base64.b64encode(buf.getvalue()).decode()})
    return out


def table(runs: dict[str, Sizes], show: Callable[[int], bool]) -> None:
    names = list(runs)
    print(f"{'version':>8}" + "".join(f"{n + ' added':>24}{'in all':>10}" for n in names))
    count = len(next(iter(runs.values())).totals)
    for i in range(count):
        if show(i + 1):
            print(f"{i + 1:>8}" + "".join(f"{sum(runs[n].per_version[i].values()) / 1e6:>21.1f} MB"
                                          f"{runs[n].totals[i] / 1e6:>7.1f} MB" for n in names))  # fmt: skip
    print("\nin all, by file or content kind (MB):")
    kinds = sorted({k for s in runs.values() for v in s.per_version for k in v})
    print(f"{'':>28}" + "".join(f"{n:>18}" for n in names))
    for k in kinds:
        print(f"{k:>28}" + "".join(f"{sum(v.get(k, 0) for v in runs[n].per_version) / 1e6:>18.2f}" for n in names))
    print(f"{'total':>28}" + "".join(f"{runs[n].totals[-1] / 1e6:>18.2f}" for n in names))
    last = names[-1]
    for n in names[:-1]:
        print(f"{last} / {n}: {runs[last].totals[-1] / runs[n].totals[-1]:.3f} of the bytes")
    if count >= 10:
        half = count // 2
        for n in names:
            t = runs[n].totals
            first, second = (t[half - 1] - t[0]) / (half - 1), (t[-1] - t[half - 1]) / (count - half)
            print(f"{n}: bytes a version added, versions 2-{half}: {first / 1e6:.2f} MB on average; "
                  f"{half + 1}-{count}: {second / 1e6:.2f} MB ({second / first:.2f}x; 1.00 is linear growth)")


def photos(tasks: int, size: int, per_class: int, holdout: float, layouts: list[str]) -> None:
    if not (CIFAR / "train").is_dir():
        raise SystemExit(f"the cifar10-mini photos are not at {CIFAR} (see shared/data/README.md)")
    print(f"# {tasks} tasks of 2 cifar10-mini classes, {per_class} photos a class ({holdout:.0%} held out for the gate), "
          f"3x{size}x{size}, the defaults")
    stream = [(f"t{i + 1}", jpeg_samples(CLASSES[2 * i : 2 * i + 2], per_class)) for i in range(tasks)]
    network = {"input": {"kind": "image", "channels": 3, "height": size, "width": size}}
    features: OrderedDict[str, Any] = OrderedDict()
    runs = {name: teach(name, stream, network, {}, features, holdout) for name in layouts}
    table(runs, lambda v: True)


def generated(tasks: int) -> None:
    print(f"# {tasks} tasks of 2 generated classes, 30 images a class, 1x16x16, analytic on 256 random features")
    stream = [(f"t{i + 1}", generated_samples(i)) for i in range(tasks)]
    network = {"input": {"kind": "image", "channels": 1, "height": 16, "width": 16}, "backbone": "identity"}
    features: OrderedDict[str, Any] = OrderedDict()
    runs = {name: teach(name, stream, network, {"width": 256}, features) for name in list(LAYOUTS)[1:]}
    table(runs, lambda v: v <= 5 or v % 5 == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:2]),  # with each stream's flags
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stream", required=True)
    p = sub.add_parser("photos", help="cifar10-mini photos, the default backbone and head")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--size", type=int, default=128, help="the classifier's image side, in pixels")
    p.add_argument("--per-class", type=int, default=100, help="photos a class")
    p.add_argument("--holdout", type=float, default=0.2, help="the share of each class held out for the gate")
    p.add_argument("--layouts", default="all", help=f"comma-separated, of: {', '.join(LAYOUTS)} (all: every one)")
    g = sub.add_parser("generated", help="generated images, many tasks")
    g.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    if args.stream == "photos":
        layouts = list(LAYOUTS) if args.layouts == "all" else [n.strip() for n in args.layouts.split(",")]
        unknown = [n for n in layouts if n not in LAYOUTS]
        if unknown:
            parser.error(f"--layouts: unknown {unknown}; choose among {', '.join(LAYOUTS)}")
        photos(args.tasks, args.size, args.per_class, args.holdout, layouts)
    else:
        generated(args.tasks)


if __name__ == "__main__":
    main()
