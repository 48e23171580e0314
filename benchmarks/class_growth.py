"""What a classifier costs as its classes grow: per exemplar-free strategy (generative replay among them).

    python -m benchmarks.class_growth [--classes 1000] [--per-task 50] [--dim 64] [--per-class 20]
        [--strategies class_models,generative_replay,...] [--measure-every 200] [--requests 200] [--json FILE]
        [--iterations N] [--backbone identity] [--threads N]

Starts ``engram serve`` (embedded SQLite, one local worker, CPU) on a fresh data folder and teaches one
class-incremental classifier of ``dim``-value vectors per strategy a generated stream, over HTTP, one job
at a time: ``classes`` classes in tasks of ``per_task``, each class a Gaussian blob (mean drawn from
N(0, 3^2) per value, unit noise), ``per_class`` samples of it sent to learn (the gate holds out its 20%).
The gate runs as it always does, but with tolerance 1 and floor 0, so every task is promoted and the stream
goes on: this measures cost, not quality. Prints, per strategy and task: the worker's seconds to learn (the
``train`` stage) and to gate; and every ``measure_every`` classes: predict latency p50/p99 (one vector a
request) at 1 and 32 concurrent clients, and the version bundle's and its ONNX graph's size on disk.
``--iterations N`` fixes the optimiser steps of strategies that take them (a shorter run; the default budget
grows with the classes seen up to ``TrainConfig.max_iterations``). The strategies default to
``model_core.strategy_specs.default_candidates`` (those that refuse the classifier say so: ``analytic`` needs
``--backbone identity``, the vectors declared as features, as the banking77 stream sends them). ``--threads N``
starts the server with ``OMP_NUM_THREADS=N`` (torch's threads in its worker): on a shared machine, 1 keeps the
worker's small matrix operations from waiting on threads the other work holds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serve_bench import ADMIN, artifact_dir, free_port, stop, wait_ready
from model_core.strategy_specs import default_candidates
from service.domain.job_status import TERMINAL


def stream(classes: int, dim: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x (classes * per_class, dim), labels): Gaussian blobs, one a class."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, size=(classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def latency(url: str, name: str, x: np.ndarray, clients: int, requests: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of one-vector predict requests, ``clients`` at a time."""

    def one(c: httpx.Client, i: int) -> float:
        t = time.perf_counter()
        r = c.post(f"/v1/classifiers/{name}/predict", json={"inputs": [{"vector": x[i % len(x)].tolist()}]})
        r.raise_for_status()
        return (time.perf_counter() - t) * 1000

    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60,
                      limits=httpx.Limits(max_connections=clients)) as c:  # fmt: skip
        one(c, 0)  # warm: the session loads on the first request
        with ThreadPoolExecutor(clients) as pool:
            ms = list(pool.map(lambda i: one(c, i), range(requests)))
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def run(url: str, data: Path, strategy: str, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> list[dict[str, Any]]:
    name = f"growth-{strategy}".replace("_", "-")
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600)
    create: dict[str, Any] = {"name": name, "input": {"kind": "vector", "dim": args.dim},
                              "gate": {"tolerance": 1.0, "new_task_floor": 0.0}}  # fmt: skip
    if args.backbone:
        create["backbone"] = args.backbone
    r = c.post("/v1/classifiers", json=create)
    r.raise_for_status()
    rows = []
    for t, start in enumerate(range(0, args.classes, args.per_task), 1):
        keep = (y >= start) & (y < start + args.per_task)
        samples = [{"label": f"c{int(lab)}", "vector": v.tolist()} for v, lab in zip(x[keep], y[keep], strict=True)]
        r = c.post(f"/v1/classifiers/{name}/learn", json={"task": f"t{t}", "strategy": strategy,
                                                            "retention": "discard", "samples": samples,
                                                            **args.options})  # fmt: skip
        if r.status_code != 202:
            print(f"  {strategy}: refused: {r.json().get('detail')}", flush=True)
            return rows
        job = r.json()
        while job["status"] not in TERMINAL:
            time.sleep(0.3)
            job = c.get(f"/v1/jobs/{job['job_id']}").json()
        if job["status"] != "promoted":
            print(f"  {strategy} task {t}: {job['status']} {job.get('error') or job['report'].get('failures')}")
            return rows
        sec = job.get("seconds") or {}
        learnt = start + args.per_task
        row: dict[str, Any] = {"strategy": strategy, "classes": learnt, "learn_s": sec.get("train"),
                               "gate_s": sec.get("gate"), "export_s": sec.get("export"),
                               "worker_s": round(sum(v for k, v in sec.items() if "." not in k), 2),
                               "scored": ((job.get("report") or {}).get("suite") or {}).get("scored"),  # gate's samples
                               "seconds": sec}  # fmt: skip
        if learnt % args.measure_every == 0 or learnt >= args.classes:
            folder = artifact_dir(data, name, job["version"])
            # the whole graph, or the head on a frozen backbone (identity: the vectors are the features) stored once
            graph = next(f for f in (folder / "model.onnx", folder / "head.onnx") if f.exists())
            row.update(bundle_mb=round(size_mb(folder), 2), onnx_mb=round(graph.stat().st_size / 1e6, 2))
            for clients in (1, 32):
                p50, p99 = latency(url, name, x, clients, args.requests)
                row[f"p50_ms_{clients}"], row[f"p99_ms_{clients}"] = round(p50, 1), round(p99, 1)
        rows.append(row)
        print("  " + json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cost as classes grow (see module doc)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--strategies", default=",".join(default_candidates({})))
    parser.add_argument("--measure-every", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="predict requests per latency figure")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--iterations", type=int, help="fixed optimiser steps a task (default: the budget from the data)")
    parser.add_argument("--threads", type=int, help="torch threads of the server's worker (OMP_NUM_THREADS)")
    parser.add_argument("--backbone", help="create the classifiers with this backbone (default: the service's for "
                        "vectors, the MLP; 'identity': the vectors are features, which analytic needs)")
    args = parser.parse_args(argv)
    args.options = {"options": {"iterations": args.iterations}} if args.iterations else {}
    x, y = stream(args.classes, args.dim, args.per_class)
    print(f"stream: {args.classes} classes of {args.dim}-value Gaussian blobs, {args.per_class} samples a class, "
          f"tasks of {args.per_task}", flush=True)  # fmt: skip
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="engram-growth-") as tmp:
        port, data = free_port(), Path(tmp) / "data"
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
        if args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        with open(Path(tmp) / "serve.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data),
                                     "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_ready(url, proc, "/readyz")
                for strategy in args.strategies.split(","):
                    print(strategy, flush=True)
                    results += run(url, data, strategy, x, y, args)
                    if args.json:
                        args.json.write_text(json.dumps(results, indent=1))
            finally:
                stop(proc)
    print("\n| strategy | classes | learn s | gate s | worker s | p50/p99 ms, 1 client | p50/p99 ms, 32 clients "
          "| bundle MB | ONNX MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "bundle_mb" not in r:
            continue
        print(f"| {r['strategy']} | {r['classes']} | {r['learn_s']} | {r['gate_s']} | {r['worker_s']} | "
              f"{r['p50_ms_1']}/{r['p99_ms_1']} | {r['p50_ms_32']}/{r['p99_ms_32']} | {r['bundle_mb']} | {r['onnx_mb']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
