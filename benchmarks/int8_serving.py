"""int8 against fp32 photo backbone through the service, in one run: serving req/s and latency at a concurrency,
and a job's time per 1,000 photos.

    python -m benchmarks.int8_serving                      # c=32, 10 s a round, 2 rounds of each, 4 classes
    python -m benchmarks.int8_serving --level 32 --seconds 20 --rounds 3 --per-class 100

Starts ``engram serve`` (embedded SQLite and worker) with ``ENGRAM_INT8_BACKBONE=1`` on a fresh data folder,
creates a photo classifier with the default backbone (EfficientNet-Lite0, frozen, 224 px in the graph) on
32x32 cifar10-mini photos and teaches it ``--classes`` classes of ``--per-class`` photos in one job: the job
quantizes the backbone (calibrated on its photos), learns from the int8 features and checks int8 against fp32
on the gate's held-out photos (the report's ``int8`` section, printed). The same data folder is then served
with ``ENGRAM_INT8_BACKBONE=1`` and ``=0`` in turn (``--rounds`` times each, alternating, so that a loaded
machine's drift hits both alike): POST /v1/classifiers/NAME/predict, one photo per request, closed loop at
``--level`` connections for ``--seconds`` after a warm-up; the graph each round served is read from the
server's log. A version whose check kept fp32 serves fp32 in both: the benchmark says so, and
``--force`` (``ENGRAM_INT8_MAX_DISAGREEMENT=1``, ``ENGRAM_INT8_MAX_ACCURACY_DROP=1`` for the job) lets int8
serve anyway, to measure its speed alone.

Every job names the default photo strategy (``analytic``), so that no first job spends its time choosing one.
Learning: the same classes, ``--learn-per-class`` photos each (a job of 1,000 photos by default, so that a job's
fixed costs, its queueing and session loads, count as they do in a job that size), are then taught to two more
classifiers, one on a server with int8 on and one with it off (each a first job; the int8 one takes the graph the
first classifier's job quantized, as every classifier after the first does with ``ENGRAM_INT8_CALIBRATION``
"deployment", the default, and quantizes its own with "classifier"; the fp32 backbone's export is cached in the
data folder by then), then as many photos of as many
other classes, a second task, on the same server (the next job: a worker that has its sessions loaded, what every
job after a classifier's first costs in a deployment that keeps learning). Each job's seconds per stage are printed
per 1,000 photos sent, with the quantization itself apart (once per classifier).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serve_bench import ADMIN, artifact_dir, free_port, stop, wait_ready
from service.cli.loadgen import run_load
from service.domain.job_status import TERMINAL

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-mini"
PHOTO = {"kind": "image", "channels": 3, "height": 32, "width": 32}


@contextlib.contextmanager
def server(data_dir: Path, env: dict[str, str]) -> Iterator[tuple[httpx.Client, Path]]:
    """``engram serve`` on ``data_dir`` with ``env`` added; an admin client and the server's log file."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir.parent / f"serve-{port}.log"
    full = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}", **env}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data_dir),
                                 "--port", str(port)], env=full, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_ready(url, proc, "/readyz", timeout=300)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=1200) as c:
                yield c, log_path
        finally:
            stop(proc)


def photos(split: str, classes: list[str], n: int) -> list[tuple[str, Path]]:
    return [(c, p) for c in classes for p in sorted((CIFAR / split / c).iterdir())[:n]]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def learn(c: httpx.Client, name: str, classes: list[str], per_class: int, strategy: str = "analytic",
          task: str = "t1", create: bool = True) -> dict[str, Any]:  # fmt: skip
    """Teach ``classes`` (``per_class`` photos each) to ``name`` as ``task``, creating the classifier first."""
    if create:
        c.post("/v1/classifiers", json={"name": name, "input": PHOTO}).raise_for_status()
    samples = [{"label": lab, "image_b64": b64(p)} for lab, p in photos("train", classes, per_class)]
    job = c.post(f"/v1/classifiers/{name}/learn", json={"task": task, "samples": samples, "strategy": strategy}).json()
    while job["status"] not in TERMINAL:
        time.sleep(0.5)
        job = c.get(f"/v1/jobs/{job['job_id']}").json()
    if job["status"] != "promoted":
        raise SystemExit(f"the job for {name} ended {job['status']}: {job.get('error')}")
    return job  # type: ignore[no-any-return]


def served_graph(log: Path, refs: dict[str, Any]) -> str:
    """Which backbone the server built, from its log ("built the shared backbone <sha12>")."""
    built = re.findall(r"built the shared backbone ([0-9a-f]{12})", log.read_text(errors="replace"))
    names = {str(r["sha256"])[:12]: role for role, r in refs.items()}
    return ",".join(names.get(b, b) for b in built) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--level", type=int, default=32, help="concurrent connections")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per round")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each graph, alternating")
    parser.add_argument("--classes", type=int, default=4, help="cifar10-mini classes the classifier learns")
    parser.add_argument("--per-class", type=int, default=50, help="training photos a class (20%% held out)")
    parser.add_argument("--learn-per-class", type=int, default=250,
                        help="photos a class in the learning comparison's jobs (250 x 4 classes: a job of 1,000 photos)")
    parser.add_argument("--force", action="store_true", help="let int8 serve whatever its check found")
    parser.add_argument("--no-learning", action="store_true", help="skip the learning comparison")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not (CIFAR / "train").is_dir():
        raise SystemExit(f"no photos at {CIFAR} (see shared/data/README.md)")
    every = sorted(p.name for p in (CIFAR / "train").iterdir())
    classes, later = every[: args.classes], every[args.classes : 2 * args.classes]
    if len(later) < len(classes) and not args.no_learning:
        raise SystemExit(f"--classes {args.classes}: the learning comparison's second job needs as many more classes")
    force = {"ENGRAM_INT8_MAX_DISAGREEMENT": "1", "ENGRAM_INT8_MAX_ACCURACY_DROP": "1"} if args.force else {}
    out: dict[str, Any] = {"level": args.level, "rounds": [], "learning": {}}
    with tempfile.TemporaryDirectory(prefix="int8-serving-") as tmp:
        data = Path(tmp) / "data"
        with server(data, {"ENGRAM_INT8_BACKBONE": "1", **force}) as (c, _):
            job = learn(c, "photos", classes, args.per_class)
        int8 = (job.get("report") or {}).get("int8") or {}
        out["job"] = {"seconds": job.get("seconds"), "int8": {k: v for k, v in int8.items() if k != "per_task"}}
        print(f"job: {json.dumps(job.get('seconds'))}")
        print(f"int8 check: {int8.get('reason', 'no int8 section (the job learned from fp32)')}")
        refs = json.loads((artifact_dir(data, "photos", int(job["version"])) / "manifest.json").read_text())["references"]
        body = json.dumps({"inputs": [{"image_b64": b64(p)} for _, p in photos("test", classes, 1)[:1]]}).encode()
        print(f"{'round':<8}{'setting':<10}{'served':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for r in range(args.rounds):
            for setting in ("1", "0"):
                with server(data, {"ENGRAM_INT8_BACKBONE": setting}) as (c, log):
                    c.post("/v1/classifiers/photos/predict", content=body, headers={"Content-Type": "application/json"}).raise_for_status()
                    res = run_load(c.base_url.__str__().rstrip("/"), "/v1/classifiers/photos/predict", [body],
                                   args.level, args.seconds, args.warmup, {"Authorization": f"Bearer {ADMIN}"}).summary()  # fmt: skip
                    graph = served_graph(log, refs)
                row = {"round": r + 1, "int8_setting": setting == "1", "served": graph, **res}
                out["rounds"].append(row)
                print(f"{r + 1:<8}{'int8 on' if setting == '1' else 'int8 off':<10}{graph:<12}{res['rps']:>9.1f}"
                      f"{res['p50_ms']:>9.2f}{res['p99_ms']:>9.2f}{res['errors']:>8d}")  # fmt: skip
        on = [x for x in out["rounds"] if x["int8_setting"]]
        off = [x for x in out["rounds"] if not x["int8_setting"]]
        if on and off:
            ratio = sum(x["rps"] for x in on) / max(1e-9, sum(x["rps"] for x in off))
            p99 = (sum(x["p99_ms"] for x in on) / len(on), sum(x["p99_ms"] for x in off) / len(off))
            out["ratio"] = round(ratio, 3)
            print(f"int8/fp32 req/s at c={args.level}: {ratio:.2f}x (mean of {len(on)} rounds each); "
                  f"p99 {p99[0]:.1f} ms against {p99[1]:.1f} ms")
        if not args.no_learning:
            n = len(classes) * args.learn_per_class
            jobs = (("first", classes, "t1"), ("next", later, "t2"))
            for setting, name in (("1", "learn-int8"), ("0", "learn-fp32")):
                with server(data, {"ENGRAM_INT8_BACKBONE": setting, **force}) as (c, _):
                    for which, taught, task in jobs:
                        seconds = learn(c, name, taught, args.learn_per_class, task=task,
                                        create=which == "first").get("seconds") or {}  # fmt: skip
                        total = sum(v for k, v in seconds.items() if "." not in k and k != "queued")
                        quant = seconds.get("int8-quantize", 0.0)
                        per = {"job_s": round((total - quant) / n * 1000, 2), "quantize_s": quant,
                               "train_s": round(seconds.get("train", 0.0) / n * 1000, 2), "stages": seconds}  # fmt: skip
                        out["learning"].setdefault(which, {})[name] = per
                        print(f"{name}, {which} job: {per['job_s']} s per 1,000 photos without the quantization "
                              f"({quant} s, once per classifier); train stage {per['train_s']} s per 1,000; "
                              f"{json.dumps(seconds)}")  # fmt: skip
            for which, _, _ in jobs:
                a, b = (out["learning"][which][k]["job_s"] for k in ("learn-fp32", "learn-int8"))
                out["learning"][which]["ratio"] = round(a / max(b, 1e-9), 3)
                print(f"learning, {which} job ({'a fresh worker' if which == 'first' else 'the same worker, warm'}): "
                      f"int8 {b} s against fp32 {a} s per 1,000 photos ({a / max(b, 1e-9):.2f}x faster)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
