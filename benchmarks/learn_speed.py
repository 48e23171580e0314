"""Learning speed: time from a learn request to a promoted version, per digits task, and where it goes.

    python -m benchmarks.learn_speed [--tasks 3] [--strategy NAME] [--backbone cnn] [--size 8] [--json FILE]
    python -m benchmarks.learn_speed --photos ../shared/data/cifar10-mini   # 1,000 photos a task, pretrained default
    python -m benchmarks.learn_speed --photos ../shared/data/cifar10-mini --per-class 40 --tasks 1  # a small first job

Starts ``engram serve`` (embedded worker, CPU unless ENGRAM_DEVICE says otherwise) on a fresh data folder,
creates a classifier with the service's default backbone for its input (``--backbone`` overrides) and teaches
it class pairs over HTTP, one job at a time: digit pairs (0-1, 2-3, ...) as 8x8 PNGs declared ``--size``
pixels, or with ``--photos`` the cifar10-mini ImageFolder's classes in pairs (500 photos each, as JPEG files).
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
import time
from pathlib import Path
from typing import Any

from sklearn.datasets import load_digits

from benchmarks.serve_bench import digit_png, engram_server
from service.domain.job_status import TERMINAL

DIGITS = {"kind": "image", "channels": 1, "height": 8, "width": 8}
PHOTOS = {"kind": "image", "channels": 3, "height": 32, "width": 32}


def digit_tasks(size: int) -> list[tuple[str, list[dict[str, str]]]]:
    """Digit pairs as 8x8 PNGs (the service resizes them to the declared size)."""
    d = load_digits()
    return [(f"digits-{2 * t}-{2 * t + 1}", [{"label": str(y), "image_b64": digit_png(x, DIGITS)}
             for x, y in zip(d.images, d.target, strict=True) if y in (2 * t, 2 * t + 1)]) for t in range(5)]  # fmt: skip


def photo_tasks(root: Path, per_class: int | None = None) -> list[tuple[str, list[dict[str, str]]]]:
    """cifar10-mini's training photos, two classes a task (the first ``per_class`` of each, default all), read by
    the CLI client's folder reader."""
    import base64

    from service.client import read_image_folder

    by_class: dict[str, list[bytes]] = {}
    for label, blob in read_image_folder(root / "train"):
        by_class.setdefault(label, []).append(blob)
    names = sorted(by_class)
    return [(f"{a}-{b}", [{"label": name, "image_b64": base64.b64encode(blob).decode()}
                          for name in (a, b) for blob in by_class[name][:per_class]])
            for a, b in zip(names[0::2], names[1::2], strict=False)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="Engram learn-to-promoted timing (see module docstring)")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--strategy", help="default: the classifier's default (the request names none)")
    parser.add_argument("--backbone", help="default: the service's default for the input")
    parser.add_argument("--size", type=int, default=8, help="digits: the classifier's declared side in pixels")
    parser.add_argument("--photos", type=Path, help="a cifar10-mini root: learn its photo classes in pairs")
    parser.add_argument("--per-class", type=int, help="photos: the first N photos of each class (default all 500)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tasks = photo_tasks(args.photos, args.per_class) if args.photos else digit_tasks(args.size)
    shape = PHOTOS if args.photos else {**DIGITS, "height": args.size, "width": args.size}
    rows: list[dict[str, Any]] = []
    with engram_server("engram-learn-") as c:
        created = c.post("/v1/classifiers", json={"name": "digits", "input": shape,
                         **({"backbone": args.backbone} if args.backbone else {})})  # fmt: skip
        created.raise_for_status()
        backbone = created.json()["backbone"]
        print(f"classifier {shape}, backbone {backbone}, strategy {args.strategy or 'the default'}")
        for task, samples in tasks[: args.tasks]:
            body = {"task": task, "samples": samples, **({"strategy": args.strategy} if args.strategy else {})}
            start = time.perf_counter()
            r = c.post("/v1/classifiers/digits/learn", json=body)
            r.raise_for_status()
            accepted = time.perf_counter() - start  # the API decoded, checked and staged every sample
            job = r.json()
            while job["status"] not in TERMINAL:
                time.sleep(0.05)
                job = c.get(f"/v1/jobs/{job['job_id']}").json()
            promoted = time.perf_counter() - start
            probe = {"inputs": [{"image_b64": samples[0]["image_b64"]}]}
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
                   "stages_s": job["seconds"], "training": (job.get("report") or {}).get("training")}  # fmt: skip
            rows.append(row)
            stages = ", ".join(f"{k} {v:.2f}" for k, v in job["seconds"].items())
            training = row["training"] or {}
            stages += f"; {training.get('steps')} steps of {training.get('budget')}, {training.get('stopped')}"
            print(f"{row['task']}: {job['status']} in {promoted:.2f} s (served at {served:.2f} s): "
                  f"API accepted {accepted:.2f}, queued {queued:.2f}, worker {ran:.2f} ({stages})")  # fmt: skip
            if job["status"] != "promoted":
                report = job.get("report") or {}
                print(f"  {job.get('error') or report.get('explanation') or report.get('tasks')}")
    if args.json:
        args.json.write_text(
            json.dumps({"strategy": args.strategy, "backbone": backbone, "input": shape, "tasks": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
