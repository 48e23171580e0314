"""A tiny predict's latency while another client sends the heaviest allowed image request to the same classifier.

    python -m benchmarks.decode_isolation [--seconds 20] [--code PATH] [--heavy-images 16] [--side 4000]

Starts ``engram serve`` on a fresh data folder, teaches an 8x8 grey image classifier two classes (seconds), then:

1. alone: one client sends one-image predicts back to back for ``--seconds``;
2. contended: the same, while a second client sends, back to back, the heaviest predict the default limits allow:
   ``--heavy-images`` PNGs of ``--side`` x ``--side`` pixels (16 x 4000 x 4000 = 256 MP: ENGRAM_MAX_REQUEST_PIXELS,
   each at ENGRAM_MAX_IMAGE_PIXELS), all zeros so the upload is small and the cost is decoding.

Prints the tiny predict's p50 / p99 / max in both phases, the heavy requests' count and latency, and the
server's peak resident memory. ``--code PATH`` runs the server from another checkout (its ``service`` package
first on PYTHONPATH), e.g. the code before issue 30, where a version's requests decoded in its one batch thread:

    git worktree add /tmp/engram-main main   # or any checkout of the code to compare
    python -m benchmarks.decode_isolation --code /tmp/engram-main

Numbers, not pass/fail; run it on a quiet machine (``nice`` it on a shared one).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.serve_bench import ADMIN, free_port, stop, wait_ready

HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def png_b64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def teach(c: httpx.Client) -> None:
    r = c.post("/v1/classifiers", headers=HEADERS, json={"name": "iso", "backbone": "mlp",
               "input": {"kind": "image", "channels": 1, "height": 8, "width": 8}})  # fmt: skip
    r.raise_for_status()
    samples = [{"label": "eye", "image_b64": png_b64(np.eye(8) * 255)}] * 10
    samples += [{"label": "flat", "image_b64": png_b64(np.full((8, 8), 128))}] * 10
    r = c.post("/v1/classifiers/iso/learn", headers=HEADERS,
               json={"task": "t", "strategy": "naive", "samples": samples, "options": {"iterations": 50}})  # fmt: skip
    r.raise_for_status()
    job = r.json()["job_id"]
    while (status := c.get(f"/v1/jobs/{job}", headers=HEADERS).json()["status"]) not in ("promoted", "rejected", "failed"):
        time.sleep(0.3)
    if status != "promoted":
        raise RuntimeError(f"the classifier was not promoted: {status}")


def tiny_latencies(url: str, seconds: float, stop_flag: threading.Event | None = None) -> list[float]:
    body = {"inputs": [{"image_b64": png_b64(np.eye(8) * 255)}]}
    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            c.post("/v1/classifiers/iso/predict", json=body, headers=HEADERS).raise_for_status()
            out.append(time.perf_counter() - t0)
    return out


def summary(name: str, lat: list[float]) -> str:
    ms = np.asarray(lat) * 1000
    return (f"{name:<28} n={len(ms):5d}  p50 {np.percentile(ms, 50):8.1f} ms  p99 {np.percentile(ms, 99):8.1f} ms  "
            f"max {ms.max():8.1f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--code", type=Path, default=None, help="run the server from this checkout")
    parser.add_argument("--heavy-images", type=int, default=16)
    parser.add_argument("--side", type=int, default=4000, help="each heavy image is side x side pixels")
    args = parser.parse_args()
    env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
    cwd = None
    if args.code is not None:
        code = args.code.resolve()
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cwd = str(code)
    heavy = {"inputs": [{"image_b64": png_b64(np.zeros((args.side, args.side)))}] * args.heavy_images}
    print(f"server code: {args.code or 'this checkout'}; heavy request: {args.heavy_images} PNGs of "
          f"{args.side}x{args.side} ({args.heavy_images * args.side**2 / 1e6:.0f} MP); {os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="engram-isolation-") as tmp, open(Path(tmp) / "serve.log", "wb") as log:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", f"{tmp}/data",
                                 "--port", str(port)], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_ready(url, proc, "/readyz")
            with httpx.Client(base_url=url, timeout=600) as c:
                teach(c)
            tiny_latencies(url, 2.0)  # warm
            alone = tiny_latencies(url, args.seconds)
            stop_flag, heavy_lat, statuses = threading.Event(), [], []

            def send_heavy() -> None:
                with httpx.Client(base_url=url, timeout=600) as c:
                    while not stop_flag.is_set():
                        t0 = time.perf_counter()
                        r = c.post("/v1/classifiers/iso/predict", json=heavy, headers=HEADERS)
                        heavy_lat.append(time.perf_counter() - t0)
                        statuses.append(r.status_code)

            thread = threading.Thread(target=send_heavy, daemon=True)
            thread.start()
            time.sleep(1.0)  # the first heavy request is decoding
            contended = tiny_latencies(url, args.seconds)
            stop_flag.set()
            thread.join()
            print(summary("tiny predict, alone", alone))
            print(summary("tiny predict, beside heavy", contended))
            print(summary(f"heavy predict (status {sorted(set(statuses))})", heavy_lat))
            print(f"server peak resident memory: {peak_rss_mb(proc.pid):.0f} MB")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
