"""Learning speed: time from a learn request to a promoted version, per digits task, and where it goes.

    python -m benchmarks.learn_speed [--tasks 3] [--strategy generative_replay] [--backbone mlp] [--json FILE]

Starts ``engram serve`` (embedded worker, CPU unless ENGRAM_DEVICE says otherwise) on a fresh data folder,
creates an 8x8 digits classifier (MLP, as in ``benchmarks.continual``) and teaches it digit pairs (0-1, 2-3, ...) over HTTP, one job at a time.
For each job it prints the wall time from POST .../learn to the version being promoted and served, split
into: the API accepting the request (decoding, checking and staging every sample), the job waiting in the
queue (the worker polls every ENGRAM_WORKER_POLL_SECONDS), and the worker's run with its own stage times:
load, train (split into the classifier's steps, the generator's steps and importance estimates), gate
(evaluating parent and candidate on every task), export (ONNX + parity) and save.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sklearn.datasets import load_digits

from benchmarks.serve_bench import ADMIN, digit_png, free_port, stop, wait_ready

DIGITS = {"kind": "image", "channels": 1, "height": 8, "width": 8}


def main() -> None:
    parser = argparse.ArgumentParser(description="Engram learn-to-promoted timing (see module docstring)")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--strategy", default="generative_replay")
    parser.add_argument("--backbone", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    d = load_digits()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="engram-learn-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--data-dir", f"{tmp}/data",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_ready(url, proc, "/readyz")
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600) as c:
                c.post("/v1/classifiers", json={"name": "digits", "backbone": args.backbone, "input": DIGITS},
                       ).raise_for_status()  # fmt: skip
                for t in range(args.tasks):
                    pair = (2 * t, 2 * t + 1)
                    samples = [{"label": str(y), "image_b64": digit_png(x, DIGITS)}
                               for x, y in zip(d.images, d.target, strict=True) if y in pair]  # fmt: skip
                    body = {"task": f"digits-{pair[0]}-{pair[1]}", "strategy": args.strategy, "samples": samples}
                    start = time.perf_counter()
                    r = c.post("/v1/classifiers/digits/learn", json=body)
                    r.raise_for_status()
                    accepted = time.perf_counter() - start  # the API decoded, checked and staged every sample
                    job = r.json()
                    while job["status"] not in ("promoted", "rejected", "failed", "cancelled", "passed"):
                        time.sleep(0.05)
                        job = c.get(f"/v1/jobs/{job['job_id']}").json()
                    promoted = time.perf_counter() - start
                    probe = {"inputs": [{"image_b64": digit_png(d.images[0], DIGITS)}]}
                    while job["status"] == "promoted" and (
                        c.post("/v1/classifiers/digits/predict", json=probe).json()["version"] != job["version"]
                    ):
                        time.sleep(0.02)
                    served = time.perf_counter() - start
                    stamp = {k: dt.datetime.fromisoformat(job[k]) for k in ("created_at", "started_at", "finished_at")}
                    queued = (stamp["started_at"] - stamp["created_at"]).total_seconds()
                    ran = (stamp["finished_at"] - stamp["started_at"]).total_seconds()
                    row = {"task": body["task"], "status": job["status"], "samples": len(samples),
                           "request_to_promoted_s": round(promoted, 2), "request_to_served_s": round(served, 2),
                           "accepted_s": round(accepted, 2), "queued_s": round(queued, 2), "worker_s": round(ran, 2),
                           "stages_s": job["seconds"]}  # fmt: skip
                    rows.append(row)
                    stages = ", ".join(f"{k} {v:.2f}" for k, v in job["seconds"].items())
                    print(f"{row['task']}: {job['status']} in {promoted:.2f} s (served at {served:.2f} s): "
                          f"API accepted {accepted:.2f}, queued {queued:.2f}, worker {ran:.2f} ({stages})")  # fmt: skip
                    if job["status"] != "promoted":
                        report = job.get("report") or {}
                        print(f"  {job.get('error') or report.get('explanation') or report.get('tasks')}")
        finally:
            stop(proc)
            log.close()
    if args.json:
        args.json.write_text(
            json.dumps({"strategy": args.strategy, "backbone": args.backbone, "tasks": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
