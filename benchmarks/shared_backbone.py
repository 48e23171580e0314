"""What a version costs once the frozen backbone is shared (docs/guides/shared-backbone.md), through HTTP.

    python -m benchmarks.shared_backbone memory [--classifiers 6] [--versions 5]
    python -m benchmarks.shared_backbone new-class [--repeats 3]

``memory``: ``engram serve`` (embedded SQLite and worker, one serving process) on a fresh data folder; creates
``--classifiers`` photo classifiers (3x32x32 uploads, the default pretrained frozen backbone, the default
``analytic`` head), teaches each ``--versions`` versions (two CIFAR-10 classes first, then one new class a
version, 12 photos a class), and after each version has been promoted predicts with every version of that
classifier so far (pinned, so the serving process holds them all). It prints the serving process's RSS before
and after each version and what each added, per classifier and in all, and each version's own files on disk
beside the one shared backbone graph. ``ENGRAM_SHARED_BACKBONE=0`` in the environment gives the layout from
before (a whole graph per version) for comparison. ``--distinct-photos``: classifier i learns the photos after the
first 12 i of each class, so that with ``ENGRAM_INT8_BACKBONE=1`` each first job has its own calibration photos
(``ENGRAM_INT8_CALIBRATION=classifier``: one int8 graph, and one serving session, per classifier; the default,
``deployment``: one for them all). The int8 sessions the serving process built are counted from its log.

``new-class``: one vector classifier (8x8 digits as 64-value vectors, default ``class_models``) and one photo
classifier (CIFAR-10, default ``analytic``) each learn a first version of two classes (not timed: the backbone
is exported and stored then); then each new class of 12 samples is timed from the learn request to (a) the job
read as ``promoted`` and (b) the first prediction answered by the new version, with the job's stage times
(``seconds`` in its report: queued, load, train, gate, export, save).

The load generator is this process, on the same machine; timings include the client's polling (every 5 ms).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sklearn.datasets import load_digits

from benchmarks.serve_bench import free_port, stop, wait_ready

ADMIN = "bench-admin-key"
CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-mini"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PHOTO = {"kind": "image", "channels": 3, "height": 32, "width": 32}


@contextlib.contextmanager
def server(prefix: str) -> Iterator[tuple[httpx.Client, subprocess.Popen[bytes], Path]]:
    """``engram serve`` on a fresh data folder: (an admin client, the serving process, the data folder)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
        data = Path(tmp) / "data"
        with open(Path(tmp) / "serve.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data),
                                     "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_ready(url, proc, "/readyz")
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600) as c:
                    yield c, proc, data
            finally:
                stop(proc)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def photo_samples(classes: tuple[str, ...], n: int = 12, offset: int = 0) -> list[dict[str, str]]:
    return [{"label": c, "image_b64": base64.b64encode(p.read_bytes()).decode()}
            for c in classes for p in sorted((CIFAR / "train" / c).iterdir())[offset : offset + n]]  # fmt: skip


def photo_inputs(n: int = 4) -> list[dict[str, str]]:
    return [{"image_b64": base64.b64encode(p.read_bytes()).decode()}
            for p in sorted((CIFAR / "test" / "airplane").iterdir())[:n]]  # fmt: skip


def learn(c: httpx.Client, name: str, samples: list[dict[str, Any]], task: str) -> tuple[dict[str, Any], float]:
    """Learn and wait for the job's end (polled every 5 ms); the job and the seconds to its end."""
    t0 = time.perf_counter()
    r = c.post(f"/v1/classifiers/{name}/learn", json={"task": task, "samples": samples})
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("promoted", "passed", "rejected", "failed", "cancelled"):
            return job, time.perf_counter() - t0
        time.sleep(0.005)


def predict(c: httpx.Client, name: str, inputs: list[dict[str, Any]], version: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": inputs}
    if version is not None:
        body["version"] = version
    r = c.post(f"/v1/classifiers/{name}/predict", json=body)
    r.raise_for_status()
    out: dict[str, Any] = r.json()
    return out


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def memory(classifiers: int, versions: int, distinct: bool = False) -> None:
    mode = "whole graph per version" if os.environ.get("ENGRAM_SHARED_BACKBONE") == "0" else "shared backbone"
    print(f"# serving-process RSS, {classifiers} photo classifiers x {versions} versions ({mode})")
    with server("engram-memory-") as (c, proc, data):
        start = rss_mb(proc.pid)
        print(f"serving process at start: {start:.0f} MB")
        print(f"{'classifier':<12}{'version':>8}{'RSS before':>12}{'RSS after':>11}{'added':>9}{'own files MB':>14}")
        per_classifier: list[float] = []
        inputs = photo_inputs()
        for i in range(classifiers):
            name = f"photos{i}"
            c.post("/v1/classifiers", json={"name": name, "input": PHOTO}).raise_for_status()
            before_clf = rss_mb(proc.pid)
            for v in range(1, versions + 1):
                classes = CLASSES[:2] if v == 1 else (CLASSES[v],)
                before = rss_mb(proc.pid)
                job, _ = learn(c, name, photo_samples(classes, offset=12 * i if distinct else 0), f"t{v}")
                if job["status"] == "rejected":  # 12 photos a class leave the gate 2 held out a class: the benchmark
                    # measures what versions cost to serve, so an admin promotes a rejected one (said in the output)
                    c.post(f"/v1/classifiers/{name}/versions/{job['version']}/promote",
                           json={"force": True, "reason": "memory benchmark"}).raise_for_status()  # fmt: skip
                    print(f"{name} version {v}: rejected by the gate (2 held-out photos a class), promoted with force")
                elif job["status"] != "promoted":
                    raise SystemExit(f"{name} version {v}: job {job['status']}: {job.get('error')}")
                for pinned in range(1, v + 1):  # the serving process now holds every version of the classifier
                    assert predict(c, name, inputs, pinned)["version"] == pinned
                assert predict(c, name, inputs)["version"] == v
                after = rss_mb(proc.pid)
                art = c.get(f"/v1/classifiers/{name}/versions/{v}").json()
                own = [p for p in (data / "artifacts" / "classifiers" / name).iterdir() if p.name == f"j-{art['job_id']}"]
                print(f"{name:<12}{v:>8}{before:>12.0f}{after:>11.0f}{after - before:>9.0f}{folder_mb(own[0]):>14.2f}")
            per_classifier.append(rss_mb(proc.pid) - before_clf)
        end = rss_mb(proc.pid)
        content = data / "artifacts" / "content" / "sha256"
        shared = sorted(content.iterdir()) if content.is_dir() else []
        print(f"per classifier (all its versions), MB: {', '.join(f'{x:.0f}' for x in per_classifier)}")
        print(f"serving process: {start:.0f} MB at start, {end:.0f} MB with {classifiers * versions} versions served "
              f"({(end - start) / (classifiers * versions):.1f} MB a version on average)")  # fmt: skip
        print(f"shared content in the store: {len(shared)} file(s), "
              f"{sum(p.stat().st_size for p in shared) / 1e6:.1f} MB")  # fmt: skip
        log = (data.parent / "serve.log").read_text(errors="replace")
        built = log.count("built the shared backbone")
        print(f"backbone sessions the serving process built (fp32 and int8 graphs): {built}")
        evicted = log.count("from the serving cache")
        print(f"versions evicted from the serving cache (ENGRAM_SERVING_CACHE_MB="
              f"{os.environ.get('ENGRAM_SERVING_CACHE_MB', 'default')}): {evicted}")  # fmt: skip


def new_class(repeats: int) -> None:
    digits = load_digits()
    print(f"# a new class of 12 samples: learn request -> promoted -> first prediction by the new version ({repeats} "
          "classes each)")  # fmt: skip
    with server("engram-newclass-") as (c, _proc, _data):
        vec = {"kind": "vector", "dim": 64}
        c.post("/v1/classifiers", json={"name": "vectors", "input": vec}).raise_for_status()
        c.post("/v1/classifiers", json={"name": "photos", "input": PHOTO}).raise_for_status()

        def digit(cls: int, n: int = 12) -> list[dict[str, Any]]:
            rows = digits.data[digits.target == cls][:n] / 16
            return [{"label": str(cls), "vector": r.tolist()} for r in rows]

        cases: dict[str, tuple[Any, Any, list[dict[str, Any]]]] = {
            "vectors": (lambda: digit(0, 40) + digit(1, 40), digit, [{"vector": (digits.data[0] / 16).tolist()}]),
            "photos": (lambda: photo_samples(CLASSES[:2], 40), lambda k: photo_samples((CLASSES[k],)), photo_inputs(1)),
        }
        for name, (first, one_class, probe) in cases.items():
            job, seconds = learn(c, name, first(), "t1")
            print(f"{name}: first version {job['status']} in {seconds:.2f} s (not counted: {job['seconds']})")
            for k in range(2, 2 + repeats):
                t0 = time.perf_counter()
                r = c.post(f"/v1/classifiers/{name}/learn", json={"task": f"t{k}", "samples": one_class(k)})
                r.raise_for_status()
                job_id = r.json()["job_id"]
                while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] not in ("promoted", "passed", "rejected",
                                                                                      "failed", "cancelled"):  # fmt: skip
                    time.sleep(0.005)
                promoted = time.perf_counter() - t0
                served = None
                if job["status"] == "promoted":
                    while predict(c, name, probe)["version"] != job["version"]:
                        time.sleep(0.005)
                    served = time.perf_counter() - t0
                stages = ", ".join(f"{s} {v:.3f}" for s, v in job["seconds"].items())
                print(f"{name} class {k}: {job['status']} in {promoted:.3f} s, served by version {job['version']} at "
                      f"{served if served is None else round(served, 3)} s  [{stages}]")  # fmt: skip
                if job["status"] == "rejected":  # the gate's reasons, as the report gives them
                    report = c.get(f"/v1/classifiers/{name}/versions/{job['version']}").json().get("report") or {}
                    for why in report.get("failures", []):
                        print(f"    rejected: {why}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--classifiers", type=int, default=6)
    m.add_argument("--versions", type=int, default=5)
    m.add_argument("--distinct-photos", action="store_true",
                   help="each classifier learns other photos of the classes (so, with ENGRAM_INT8_BACKBONE=1 and "
                        "ENGRAM_INT8_CALIBRATION=classifier, each calibrates its own int8 graph)")  # fmt: skip
    n = sub.add_parser("new-class")
    n.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not (CIFAR / "train").is_dir():
        raise SystemExit(f"the cifar10-mini photos are not at {CIFAR}")
    if args.what == "memory":
        memory(args.classifiers, args.versions, args.distinct_photos)
    else:
        new_class(args.repeats)


if __name__ == "__main__":
    main()
