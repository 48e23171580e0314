"""Serving speed: Engram against BentoML, TorchServe, a naive torch-eager Litestar endpoint and the
in-process limit.

    python -m benchmarks.serve_bench [--seconds 10] [--levels 1,8,32,64] [--models small,resnet18,pretrained]
                                     [--systems engram,naive,limit,bentoml,torchserve] [--engram-workers N]
                                     [--strategy naive]
                                     [--json FILE]

Engram's serving settings come from the environment as usual, e.g.
``ENGRAM_BATCH_MAX_WAIT_MS=2 python -m benchmarks.serve_bench --models small --systems engram``.

For each model it starts ``engram serve`` on a fresh data folder, creates the classifier and teaches it
digits 0-4 over HTTP (the version is real: trained, gated, exported and promoted by the service), then:

1. **engram**: POST /v1/classifiers/NAME/predict, one image per request (PNG, base64 JSON), through
   micro-batching and ONNX Runtime;
2. **naive**: ``benchmarks.naive_server`` on the same trained weights: the same request body, the same
   decoding, torch eager mode, one request per forward pass (what a user might write first);
3. **bentoml** and **torchserve** (``benchmarks.peers``, from the ``bench`` extra): BentoML 1.4 with
   adaptive batching on the version's ONNX file, and TorchServe 0.12 with batching on the same weights
   traced to TorchScript; the same body and decoding (see ``benchmarks.bento_service`` and
   ``benchmarks.torchserve_handler``);
4. **limit**: ONNX Runtime called in this process on batches of ``concurrency`` decoded rows, the same
   session options as Engram, no HTTP and no decoding. Its "req/s" is rows per second and its latency
   is the time of one batched run. ``limit-ort-defaults`` is the same with ONNX Runtime's default
   session options, to show Engram's options cost nothing.
5. **floor** (``--systems ...,floor``): ``GET /healthz`` on the same Engram server through the same load generator:
   one HTTP round trip with no body, no decoding and no model, the least any request over HTTP can cost here.

Each concurrency level runs closed-loop (every connection sends its next request when the previous answer
arrives) for ``--seconds`` after a warm-up. The load generator runs in this process and shares the machine
with the server, as a sidecar would; its cost is part of every HTTP figure, Engram's and naive's alike.

Models: ``small`` is the default model for 28x28 grayscale images (the ``cnn`` backbone); ``resnet18`` is
ResNet-18 on 64x64 RGB; ``pretrained`` is the pretrained default (timm EfficientNet-Lite0 with ImageNet
weights, frozen), on 64x64 RGB uploads. A new model is one line in ``MODELS``. Training is short (accuracy is not the point here), so the gate's new-task floor
is set to 0 for the benchmark classifiers.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

from benchmarks.peers import start_bentoml, start_torchserve, stop_torchserve
from service.cli.loadgen import LoadResult, run_load
from service.domain.job_status import TERMINAL

ADMIN = "bench-admin-key"


@dataclass(frozen=True)
class ModelCase:
    name: str
    input: dict[str, Any]
    backbone: str | dict[str, Any]  # as POST /v1/classifiers takes it
    iterations: int


MODELS = {
    "small": ModelCase("small", {"kind": "image", "channels": 1, "height": 28, "width": 28}, "cnn", 150),
    "resnet18": ModelCase("resnet18", {"kind": "image", "channels": 3, "height": 64, "width": 64}, "resnet18", 30),
    # the pretrained default: ImageNet EfficientNet-Lite0 from its registry package, frozen, at its 224 px
    "pretrained": ModelCase(
        "pretrained",
        {"kind": "image", "channels": 3, "height": 64, "width": 64},
        {"name": "timm/efficientnet_lite0"},
        30,
    ),
}
PEERS = ("bentoml", "torchserve")  # benchmarks.peers; installed with the bench extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            httpx.get(url + path, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout} s")


@contextlib.contextmanager
def engram_server(prefix: str) -> Iterator[httpx.Client]:
    """``engram serve`` (embedded SQLite and worker) on a fresh data folder and a free port, and an admin client
    to it; the server stops on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
        with open(Path(tmp) / "serve.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "service.cli.main", "serve", "--data-dir", f"{tmp}/data",
                                     "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_ready(url, proc, "/readyz")
                with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=600) as c:
                    yield c
            finally:
                stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def digit_png(image: np.ndarray, inp: dict[str, Any]) -> str:
    """An 8x8 digit scaled to an image input's size and mode (``inp``: channels, height, width), as a
    client would send it."""
    img = Image.fromarray(np.round(image * 255 / 16).astype(np.uint8))
    if img.size != (inp["width"], inp["height"]):
        img = img.resize((inp["width"], inp["height"]), Image.Resampling.BILINEAR)
    img = img.convert("L" if inp["channels"] == 1 else "RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def train(url: str, case: ModelCase, x: np.ndarray, y: np.ndarray, strategy: str = "naive") -> int:
    """Create the classifier and learn digits 0-4 through the API; returns the promoted version."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as c:
        r = c.post("/v1/classifiers", json={"name": case.name, "input": case.input, "backbone": case.backbone,
                                            "gate": {"new_task_floor": 0.0}})  # fmt: skip
        r.raise_for_status()
        keep = y < 5
        samples = [
            {"label": str(label), "image_b64": digit_png(img, case.input)}
            for img, label in zip(x[keep], y[keep], strict=True)
        ]
        body = {"task": "digits-0-4", "strategy": strategy, "samples": samples,
                "options": {"iterations": case.iterations, "batch_size": 32}}  # fmt: skip
        started = time.perf_counter()
        job = c.post(f"/v1/classifiers/{case.name}/learn", json=body).json()
        while job["status"] not in TERMINAL:
            time.sleep(0.5)
            job = c.get(f"/v1/jobs/{job['job_id']}").json()
        if job["status"] != "promoted":
            raise RuntimeError(f"training the {case.name} model ended {job['status']}: {job.get('error')}")
        print(f"  trained {case.name}: version {job['version']} in {time.perf_counter() - started:.1f} s")
        return int(job["version"])


def artifact_dir(data_dir: Path, name: str, version: int) -> Path:
    import sqlite3

    with sqlite3.connect(data_dir / "engram.db") as db:
        (artifact,) = db.execute(
            "SELECT v.artifact FROM versions v JOIN classifiers c ON c.id = v.classifier_id "
            "WHERE c.name = ? AND v.number = ?",
            (name, version),
        ).fetchone()
    return data_dir / "artifacts" / artifact


def limit_level(
    session: ort.InferenceSession, rows: np.ndarray, level: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """ONNX Runtime in this process on batches of ``level`` rows: the ceiling for any HTTP front end.
    ``rps`` is rows per second; the latencies are those of one batched run."""
    x = np.ascontiguousarray(np.resize(rows, (level, *rows.shape[1:])))
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        session.run(["logits"], {"input": x})
    result = LoadResult(level, seconds)
    start = time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        session.run(["logits"], {"input": x})
        result.latencies.append(time.perf_counter() - now)
    result.seconds = time.perf_counter() - start
    result.sent = len(result.latencies)
    out = result.summary()
    out["rps"] = round(len(result.latencies) * level / result.seconds, 1)
    return out


def floor_level(url: str, level: int, seconds: float, warmup: float) -> dict[str, Any]:
    """``GET /healthz`` through the load generator: the HTTP round trip under every predict figure."""
    import asyncio

    from service.cli.loadgen import drive

    host, _, port = url.split("://", 1)[1].rstrip("/").partition(":")
    request = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode("latin-1")
    return asyncio.run(drive(host, int(port), [request], level, seconds, warmup, False)).summary()


def whole_bundle(folder: Path, data_dir: Path, out: Path) -> Path:
    """A bundle folder with the version's whole graph in ``model.onnx``: ``folder`` itself, or, for a head on a
    shared backbone (docs/guides/shared-backbone.md), a copy of its files with the backbone and the head joined,
    for the peers and the in-process limit, which run one graph."""
    import shutil

    import onnx

    from model_core.graphs import compose
    from service.inference.sessions import HEAD_FILE, MODEL_FILE, read_references

    refs = read_references(folder)
    if "backbone" not in refs:
        return folder
    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != HEAD_FILE:
            shutil.copy(f, out / f.name)
    backbone = onnx.load(str(data_dir / "artifacts" / "content" / "sha256" / refs["backbone"]["sha256"]))
    (out / MODEL_FILE).write_bytes(compose(backbone, onnx.load(str(folder / HEAD_FILE))))
    return out


def limit_sessions(folder: Path) -> dict[str, ort.InferenceSession]:
    """The whole graph with Engram's session options, and with ONNX Runtime's default options."""
    from service.inference.sessions import ServingOptions, session_options
    from service.settings import Settings

    onnx_file = str(folder / "model.onnx")  # ENGRAM_ORT_THREADS applies here as in the server
    options = ServingOptions.from_settings(Settings())
    return {"limit": ort.InferenceSession(onnx_file, session_options(options), providers=["CPUExecutionProvider"]),
            "limit-ort-defaults": ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])}  # fmt: skip


def row(label: str, r: dict[str, Any]) -> str:
    return (f"{label:<20}{r['rps']:>10.1f}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['errors']:>8d}")  # fmt: skip


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, key: str = "rps") -> float | None:
    return round(a[key] / b[key], 3) if a and b and b[key] else None


def bench_model(
    case: ModelCase,
    levels: list[int],
    seconds: float,
    warmup: float,
    workdir: Path,
    systems: set[str],
    engram_workers: int = 1,
    strategy: str = "naive",
    rounds: int = 1,
) -> dict[str, Any]:
    digits = load_digits()
    x, y = digits.images, digits.target
    data_dir = workdir / case.name
    port = free_port()
    env = {**os.environ, "ENGRAM_API_KEYS": f"admin:{ADMIN}"}
    log = open(workdir / f"engram-{case.name}.log", "wb")  # noqa: SIM115
    engram = subprocess.Popen(
        [sys.executable, "-m", "service.cli.main", "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--workers", str(engram_workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    naive: subprocess.Popen[bytes] | None = None
    peers: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}  # name -> (process, url, path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, engram, "/readyz")
        version = train(url, case, x, y, strategy)
        folder = whole_bundle(artifact_dir(data_dir, case.name, version), data_dir, workdir / f"{case.name}-whole")
        network = json.loads((folder / "manifest.json").read_text())["network"]
        nurl = ""
        if "naive" in systems:
            nport = free_port()
            naive = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.naive_server", str(folder), "--port", str(nport)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            nurl = f"http://127.0.0.1:{nport}"
            wait_ready(nurl, naive, "/schema")
        for peer in (p for p in PEERS if p in systems):
            peers[peer] = start_peer(peer, folder, workdir / case.name, log)
        pngs = [digit_png(img, case.input) for img in x[-256:]]
        bodies = [json.dumps({"inputs": [{"image_b64": p}]}).encode() for p in pngs]
        from service.inference.inputs import InputFormat, parse_items

        decoded = parse_items([{"image_b64": p} for p in pngs], InputFormat.from_network(network), "inputs", 10**8)
        sessions = limit_sessions(folder) if "limit" in systems else {}
        auth = {"Authorization": f"Bearer {ADMIN}"}
        levels_out = []
        print(f"\n{case.name}: {case.backbone} on {case.input['height']}x{case.input['width']}x"
              f"{case.input['channels']}, {seconds:g} s per level (+{warmup:g} s warm-up)")  # fmt: skip
        print(f"{'':<20}{'req/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}")
        for level in [lv for _ in range(rounds) for lv in levels]:  # rounds alternate every system and level
            out: dict[str, Any] = {"concurrency": level}
            if "engram" in systems:
                path = f"/v1/classifiers/{case.name}/predict"
                before = batch_rows(httpx.get(url + "/metrics").text, case.name)
                out["engram"] = run_load(url, path, bodies, level, seconds, warmup, auth).summary()
                after = batch_rows(httpx.get(url + "/metrics").text, case.name)
                # mean rows in the model run that served each request at this level (warm-up included)
                served = after[0] - before[0]
                out["engram"]["mean_batch_rows"] = round((after[1] - before[1]) / served, 1) if served else None
            if "naive" in systems:
                out["naive"] = run_load(nurl, "/predict", bodies, level, seconds, warmup).summary()
            for peer, (_, purl, ppath) in peers.items():
                out[peer] = run_load(purl, ppath, bodies, level, seconds, warmup).summary()
            if "floor" in systems:
                out["floor"] = floor_level(url, level, seconds, warmup)
            for name, session in sessions.items():  # rows/s; latency of one batched run
                out[name] = limit_level(session, decoded, level, seconds, warmup)
            e = out.get("engram")
            out |= {"engram_over_naive": ratio(e, out.get("naive")), "engram_over_limit": ratio(e, out.get("limit")),
                    **{f"engram_over_{p}": ratio(e, out.get(p)) for p in peers},
                    "engram_p99_over_p50": round(e["p99_ms"] / e["p50_ms"], 2) if e and e["p50_ms"] else None}  # fmt: skip
            print(f"c={level}")
            for name in ("engram", "floor", "naive", *peers, *sessions):
                if name in out:
                    print(row(name, out[name]))
            shown = {k: "-" if out[k] is None else out[k] for k in ("engram_over_naive", "engram_over_limit")}
            print(f"{'':<20}engram/naive {shown['engram_over_naive']}x   engram/limit {shown['engram_over_limit']}x   "
                  f"engram p99/p50 {out['engram_p99_over_p50']}   engram mean batch rows "
                  f"{(e or {}).get('mean_batch_rows')}"
                  + "".join(f"   engram/{p} {out[f'engram_over_{p}']}x" for p in peers))  # fmt: skip
            levels_out.append(out)
        if rounds > 1:
            print_medians(levels_out, levels, rounds)
        return {"model": case.name, "backbone": case.backbone, "input": case.input, "version": version,
                "levels": levels_out}  # fmt: skip
    finally:
        if naive is not None:
            stop(naive)
        for peer, (proc, _, _) in peers.items():
            stop_torchserve(proc) if peer == "torchserve" else stop(proc)
        stop(engram)
        log.close()


def print_medians(levels_out: list[dict[str, Any]], levels: list[int], rounds: int) -> None:
    """Each system's median p50 and req/s over the rounds at each level, and Engram's p50 over the in-process one's."""
    print(f"medians over {rounds} rounds (p50 ms, req/s):")
    for level in levels:
        runs = [o for o in levels_out if o["concurrency"] == level]
        med: dict[str, tuple[float, float]] = {}
        for name in sorted({k for o in runs for k, v in o.items() if isinstance(v, dict) and "p50_ms" in v}):
            got = [o[name] for o in runs if isinstance(o.get(name), dict)]
            med[name] = (float(np.median([g["p50_ms"] for g in got])), float(np.median([g["rps"] for g in got])))
        shown = "   ".join(f"{n} {p:.2f} / {r:.1f}" for n, (p, r) in med.items())
        print(f"c={level}: {shown}")
        for ref in ("limit", "limit-ort-defaults"):
            if "engram" in med and ref in med:
                print(f"c={level}: engram p50 / {ref} p50 {med['engram'][0] / med[ref][0]:.2f}")


def start_peer(name: str, folder: Path, workdir: Path, log: Any) -> tuple[subprocess.Popen[bytes], str, str]:
    """A peer server on the version's bundle: (process, url, predict path)."""
    port = free_port()
    started = time.perf_counter()
    if name == "bentoml":
        proc, path = start_bentoml(folder, port, workdir, log)
    else:
        proc, path = start_torchserve(folder, port, workdir, log, threads=len(os.sched_getaffinity(0)))
    print(f"  started {name} in {time.perf_counter() - started:.1f} s")
    return proc, f"http://127.0.0.1:{port}", path


def batch_rows(metrics: str, name: str) -> tuple[float, float]:
    """(requests, sum of rows in the model run that served each) from Engram's ``engram_model_batch_rows``."""
    for family in text_string_to_metric_families(metrics):
        if family.name == "engram_model_batch_rows":
            got = {s.name: s.value for s in family.samples if s.labels.get("classifier") == name}
            return got.get("engram_model_batch_rows_count", 0.0), got.get("engram_model_batch_rows_sum", 0.0)
    return 0.0, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description="Engram serving benchmark (see module docstring)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per level and system")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured time before each level")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every level this many times, alternating the systems, and print the medians")
    parser.add_argument("--levels", default="1,8,32,64")
    parser.add_argument("--models", default="small,resnet18")
    parser.add_argument(
        "--systems",
        default="engram,naive,limit",
        help="any of engram, naive, limit, floor, bentoml, torchserve (the last two need the bench extra)",
    )
    parser.add_argument("--engram-workers", type=int, default=1, help="engram serve --workers N")
    parser.add_argument("--strategy", default="naive", help="the learn job's strategy; one with class models "
                        "(class_models, generative_replay, analytic) serves a novelty score too, unless "
                        "ENGRAM_NOVELTY=false")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    systems = set(args.systems.split(","))
    levels = [int(v) for v in args.levels.split(",")]
    import torch

    env = {"python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__,
           "onnxruntime": ort.__version__, "torch_threads": torch.get_num_threads(),
           "batch_max_size": os.environ.get("ENGRAM_BATCH_MAX_SIZE", "64 (default)"),
           "batch_max_wait_ms": os.environ.get("ENGRAM_BATCH_MAX_WAIT_MS", "0 (default)"),
           "ort_threads": os.environ.get("ENGRAM_ORT_THREADS", "0 = one per CPU (default)"),
           "engram_workers": args.engram_workers, "strategy": args.strategy,
           "novelty": os.environ.get("ENGRAM_NOVELTY", "true (default)")}  # fmt: skip
    print("serve_bench:", json.dumps(env))
    results = []
    with tempfile.TemporaryDirectory(prefix="engram-bench-") as tmp:
        for name in args.models.split(","):
            results.append(bench_model(MODELS[name], levels, args.seconds, args.warmup, Path(tmp), systems,
                                       args.engram_workers, args.strategy, args.rounds))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
